// The chat page: OpenAI-style streaming through the gateway, sessions kept server side (X-Session-Id).
// What the user types goes into the page through textContent only. The model's answers are Markdown, rendered
// by web/markdown.js (marked + DOMPurify, DOM nodes, never an innerHTML of the text): raw HTML in them stays
// text and no script can run; the edge's Content-Security-Policy forbids inline script besides.
"use strict";

const KEY_STORE = "qs.apiKey";        // sessionStorage: this tab only
const SESSION_STORE = "qs.sessionId"; // localStorage: survives reloads
const MODEL_STORE = "qs.model";
const MAX_TOKENS_STORE = "qs.maxTokens";
const EXTRA_STORE = "qs.extraBody";

const $ = (id) => document.getElementById(id);
const els = {
  model: $("model"), newChat: $("new-chat"), toggleSettings: $("toggle-settings"), settings: $("settings"),
  apiKey: $("api-key"), maxTokens: $("max-tokens"), extraBody: $("extra-body"), error: $("error"), messages: $("messages"),
  composer: $("composer"), input: $("input"), send: $("send"), stop: $("stop"),
  toggleSessions: $("toggle-sessions"), sessions: $("sessions"), sessionList: $("session-list"),
  signIn: $("sign-in"), signOut: $("sign-out"), account: $("account"),
  sessionsEmpty: $("sessions-empty"), moreSessions: $("more-sessions"), closeSessions: $("close-sessions"),
};
const SESSIONS_PAGE = 20;

let controller = null; // AbortController of the request in flight

// --- small helpers ---------------------------------------------------------------------------------
function newSessionId() {
  if (window.crypto && crypto.randomUUID) return "web-" + crypto.randomUUID();
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return "web-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function sessionId() {
  let id = localStorage.getItem(SESSION_STORE);
  if (!id) {
    id = newSessionId();
    localStorage.setItem(SESSION_STORE, id);
  }
  return id;
}

function headers(extra) {
  const h = { "X-Session-Id": sessionId(), ...extra };
  const key = bearer();
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

function showError(text) {
  els.error.classList.remove("notice");
  els.error.textContent = text;
  els.error.hidden = !text;
}

// A request for the user (not a failure): shown in the same place, without the alarm colours.
function showNotice(text) {
  showError(text);
  els.error.classList.add("notice");
}

// The signed-in user's token (single sign-on, web/sso.js) first, else the API key typed under Settings.
function bearer() {
  return Sso.bearer() || sessionStorage.getItem(KEY_STORE);
}

function hasKey() {
  return Boolean(bearer());
}

function askForKey() {
  if (Sso.enabled()) {
    showNotice("Sign in to start (or enter an API key under Settings).");
    els.signIn.focus();
    return;
  }
  els.settings.hidden = false;
  els.toggleSettings.setAttribute("aria-expanded", "true");
  showNotice("Enter your API key under Settings to start (`make up` prints a development key).");
  els.apiKey.focus();
}

// Start a new conversation: a new session id, an empty page.
function startNewChat() {
  localStorage.setItem(SESSION_STORE, newSessionId());
  els.messages.replaceChildren();
  markCurrentSession();
}

// The gateway's error code in an OpenAI-shaped error body, without consuming the response.
async function errorCode(resp) {
  try {
    const data = await resp.clone().json();
    return (data && data.error && data.error.code) || "";
  } catch (_) {
    return "";
  }
}

function setBusy(busy) {
  document.body.dataset.state = busy ? "streaming" : "idle";
  els.messages.setAttribute("aria-busy", String(busy));
  els.send.hidden = busy;
  els.stop.hidden = !busy;
  els.send.disabled = busy;
  if (busy && document.activeElement === els.send) els.stop.focus(); // Send became Stop: keep the focus on it
  updateRegenerate();
}

// A message on the page. A user's is plain text; an assistant's is Markdown, shown through a view that
// renders it as it grows (answer.set) and at once (answer.done). The body keeps the Markdown it shows in
// data-source.
function addMessage(role, text) {
  const row = document.createElement("div");
  row.className = "msg " + role;
  row.dataset.role = role;
  const who = document.createElement("div");
  who.className = "who";
  who.textContent = role === "user" ? "You" : role === "assistant" ? "Assistant" : role;
  const body = document.createElement("div");
  body.className = "body";
  row.append(who, body);
  els.messages.append(row);
  const answer = { row, body, view: null };
  if (role === "assistant") {
    body.classList.add("markdown");
    answer.view = QsMarkdown.createView(body);
    answer.set = (value) => answer.view.set(value);
    answer.done = () => {
      answer.view.flush();
      body.dataset.source = answer.view.text;
    };
    answer.set(text);
    answer.done();
  } else {
    body.textContent = text;
  }
  scrollDown();
  return answer;
}

// Under an answer: how fast it came (time to first token, tokens/s, tokens) and, under the last stored answer
// while nothing streams, Regenerate.
function answerMeta(row) {
  let meta = row.querySelector(".meta");
  if (!meta) {
    meta = document.createElement("div");
    meta.className = "meta";
    row.append(meta);
  }
  return meta;
}

// The rate is over the stream after its first token (the first token's wait is the other figure).
function showTiming(row, firstTokenMs, endMs, tokens) {
  const timing = document.createElement("span");
  timing.className = "timing";
  timing.dataset.testid = "timing";
  const parts = ["first token " + (firstTokenMs / 1000).toFixed(2) + " s"];
  const streaming = (endMs - firstTokenMs) / 1000;
  if (tokens > 1 && streaming > 0) parts.push(((tokens - 1) / streaming).toFixed(1) + " tokens/s");
  if (tokens) parts.push(tokens + " tokens");
  timing.textContent = parts.join(" · ");
  answerMeta(row).prepend(timing);
}

function updateRegenerate() {
  for (const old of els.messages.querySelectorAll(".regenerate")) old.remove();
  const last = els.messages.lastElementChild;
  if (!last || document.body.dataset.state !== "idle" || last.dataset.role !== "assistant" ||
      last.dataset.stored !== "true") return;
  const button = document.createElement("button");
  button.type = "button";
  button.className = "regenerate";
  button.dataset.testid = "regenerate";
  button.textContent = "Regenerate";
  button.setAttribute("aria-label", "Regenerate the last answer");
  button.addEventListener("click", () => regenerate());
  answerMeta(last).append(button);
}

function scrollDown() {
  els.messages.scrollTop = els.messages.scrollHeight;
}

// A readable message for a failed HTTP response (OpenAI error JSON when the gateway sent one).
async function describeFailure(resp) {
  let detail = "";
  try {
    const data = await resp.json();
    detail = (data && data.error && data.error.message) || "";
  } catch (_) { /* not JSON (e.g. an Nginx error page) */ }
  if ((resp.status === 401 || resp.status === 403) && Sso.enabled()) {
    return "Not authorised (" + resp.status + "): sign in again." + (detail ? " (" + detail + ")" : "");
  }
  if (resp.status === 401 || resp.status === 403) {
    return "Not authorised (" + resp.status + "): enter a valid API key under Settings. " +
      "`make up` prints a development key." + (detail ? " (" + detail + ")" : "");
  }
  if (resp.status === 429) {
    const retry = resp.headers.get("Retry-After");
    return "Too many requests (429): rate limit reached" + (retry ? "; try again in " + retry + " s." : ".");
  }
  if (resp.status === 502 || resp.status === 503 || resp.status === 504) {
    return "The model backend is unavailable (" + resp.status + "); try again in a moment." +
      (detail ? " (" + detail + ")" : "");
  }
  return "Request failed (" + resp.status + ")" + (detail ? ": " + detail : ".");
}

// A call to the gateway: the response, or null with the reason shown. `allow`: failure statuses that are fine.
async function callApi(path, options = {}, allow = []) {
  let resp;
  try {
    resp = await fetch(path, { ...options, headers: headers(options.headers) });
  } catch (_) {
    showError("Cannot reach the server; is `make up` running?");
    return null;
  }
  if (!resp.ok && !allow.includes(resp.status)) {
    showError(await describeFailure(resp));
    return null;
  }
  return resp;
}

// Optional extra OpenAI/vLLM request fields from Settings (e.g. temperature); null if not valid JSON.
function extraFields() {
  const text = els.extraBody.value.trim();
  if (!text) return {};
  try {
    const value = JSON.parse(text);
    if (value && typeof value === "object" && !Array.isArray(value)) return value;
  } catch (_) { /* reported below */ }
  return null;
}

// --- models and history ----------------------------------------------------------------------------
async function loadModels() {
  if (!hasKey()) {
    askForKey();
    return;
  }
  const resp = await callApi("/v1/models");
  if (!resp) return;
  const data = await resp.json();
  const wanted = localStorage.getItem(MODEL_STORE);
  els.model.replaceChildren();
  for (const m of data.data || []) {
    const opt = document.createElement("option");
    opt.value = m.id;
    opt.textContent = m.id;
    if (m.id === wanted) opt.selected = true;
    els.model.append(opt);
  }
  document.body.dataset.models = String(els.model.options.length);
}

// History reads run one after another, and a turn waits for those under way: a read landing later (a 404
// starts a new chat, a found session replaces the page) would wipe the turn from the page while it streams.
let historyLoad = Promise.resolve();

function reloadHistory() {
  historyLoad = historyLoad.then(() => loadHistory()).catch(() => {});
  return historyLoad;
}

async function loadHistory() {
  els.messages.replaceChildren();
  if (!sessionStorage.getItem(KEY_STORE)) return;
  let resp;
  try {
    resp = await fetch("/v1/sessions/" + encodeURIComponent(sessionId()), { headers: headers() });
  } catch (_) {
    return;
  }
  if (resp.status === 404) {
    // Nothing stored under this id for this key: a new session, or one another key owns (a key changed in
    // this browser). Either way, start clean with an id of our own.
    startNewChat();
    return;
  }
  if (!resp.ok) {
    showError(await describeFailure(resp));
    return;
  }
  const data = await resp.json();
  for (const m of data.messages || []) {
    if (m.role === "user" || m.role === "assistant" || m.role === "tool") {
      const shown = addMessage(m.role, storedText(m));
      shown.row.dataset.stored = "true";
    }
  }
  updateRegenerate();
}

// A stored turn as plain text: an API client's tool calls as `name(arguments)` lines, a tool result as its content.
function storedText(m) {
  const calls = (m.tool_calls || []).map((c) => `${(c.function || {}).name}(${(c.function || {}).arguments})`);
  return [contentText(m.content), ...calls].filter(Boolean).join("\n");
}

function contentText(content) {
  if (typeof content === "string") return content;
  if (Array.isArray(content)) return content.map((p) => (p && p.text) || "").join("");
  return "";
}

// --- streaming ------------------------------------------------------------------------------------
// Parse an SSE byte stream: events are separated by a blank line; we only need their `data:` lines.
async function* sseEvents(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart());
      if (data.length) yield data.join("\n");
    }
  }
}

async function send(text) {
  if (!hasKey()) {
    els.input.value = text; // kept for when the key is in
    askForKey();
    return;
  }
  showError("");
  const model = els.model.value;
  if (!model) {
    showError("No model available yet: check the API key under Settings, then reload.");
    return;
  }
  const extra = extraFields();
  if (extra === null) {
    showError('Extra request fields must be a JSON object, e.g. {"temperature": 0.2}; fix it under Settings.');
    return;
  }
  addMessage("user", text);
  const out = addMessage("assistant", "");
  out.row.classList.add("pending");
  let answer = "";
  let usage = null;
  let stored = true; // unless the gateway says it could not save the turn
  let finished = false;
  let started = 0;
  let firstToken = 0;
  let lastToken = 0;
  const maxTokens = Math.max(1, parseInt(els.maxTokens.value, 10) || 256);
  controller = new AbortController();
  setBusy(true);
  const post = () => fetch("/v1/chat/completions", {
    method: "POST",
    headers: headers({ "Content-Type": "application/json", Accept: "text/event-stream" }),
    body: JSON.stringify({
      ...extra, model, stream: true, max_tokens: maxTokens, messages: [{ role: "user", content: text }],
      // The usage chunk at the end: the token count behind the tokens/s under the answer.
      stream_options: { ...(extra.stream_options || {}), include_usage: true },
    }),
    signal: controller.signal,
  });
  try {
    started = performance.now();
    let resp = await post();
    if (resp.status === 404 && (await errorCode(resp)) === "session_not_found") {
      // The stored session id belongs to another key: this key starts a new chat (keeping this turn).
      const kept = Array.from(els.messages.children).slice(-2);
      startNewChat();
      els.messages.append(...kept);
      resp = await post();
    }
    if (!resp.ok) {
      out.row.remove();
      showError(await describeFailure(resp));
      return;
    }
    for await (const data of sseEvents(resp.body)) {
      if (data === "[DONE]") {
        finished = true;
        break;
      }
      let chunk;
      try {
        chunk = JSON.parse(data);
      } catch (_) {
        continue;
      }
      if (chunk.error) {
        showError("The answer was cut off: " + (chunk.error.message || "backend error"));
        break;
      }
      if (chunk.usage) usage = chunk.usage;
      if (chunk.session && chunk.session.stored === false) stored = false;
      const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
      if (delta && delta.content) {
        lastToken = performance.now();
        if (!firstToken) firstToken = lastToken;
        answer += delta.content;
        out.set(answer);
        scrollDown();
      }
    }
  } catch (err) {
    if (err && err.name === "AbortError") {
      out.row.classList.add("stopped");
    } else {
      showError("Lost the connection to the server (" + (err && err.message ? err.message : err) +
        "); is the backend running?");
    }
  } finally {
    out.done();
    out.row.classList.remove("pending");
    if (finished && firstToken) {
      showTiming(out.row, firstToken - started, lastToken - started, usage ? usage.completion_tokens : 0);
    }
    if (finished && stored) out.row.dataset.stored = "true";
    controller = null;
    setBusy(false);
    els.input.focus();
    if (finished) loadSessions(); // a new conversation appears, an old one moves to the top
  }
}

// Regenerate: take the last turn back from the session (the gateway returns what it removed), then ask the
// same message again. Offered only under an answer the gateway stored, so the turn taken back is that one.
async function regenerate() {
  if (turnUnderWay) return;
  turnUnderWay = true;
  setBusy(true);
  try {
    await historyLoad;
    const resp = await callApi("/v1/sessions/" + encodeURIComponent(sessionId()) + "/turns/last",
      { method: "DELETE" });
    if (!resp) return;
    const removed = (await resp.json()).messages || [];
    const asked = removed.filter((m) => m.role === "user").map((m) => contentText(m.content)).join("\n\n");
    if (!asked) { // nothing of the user's to ask again (a turn another client stored): show what is left
      await reloadHistory();
      return;
    }
    // Off the page too: the answer and the message(s) it answered (everything after the previous answer).
    const rows = Array.from(els.messages.children);
    let cut = rows.length - 1;
    while (cut > 0 && rows[cut - 1].dataset.role !== "assistant") cut--;
    for (const row of rows.slice(cut)) row.remove();
    await send(asked);
  } finally {
    turnUnderWay = false;
    setBusy(false);
  }
}

// --- conversations (the caller's own sessions, GET /v1/sessions) -------------------------------------
let sessionsAfter = null; // the last id shown: where "Show older" continues
let sessionsLoad = Promise.resolve();

function loadSessions(more = false) {
  sessionsLoad = sessionsLoad.then(() => fetchSessions(more)).catch(() => {});
  return sessionsLoad;
}

async function fetchSessions(more) {
  if (!hasKey()) return;
  const params = new URLSearchParams({ limit: String(SESSIONS_PAGE) });
  if (more && sessionsAfter) params.set("after", sessionsAfter);
  let resp;
  try {
    resp = await fetch("/v1/sessions?" + params, { headers: headers() });
  } catch (_) {
    return;
  }
  if (!resp.ok) {
    if (more) { // the cursor expired meanwhile: start over
      sessionsAfter = null;
      await fetchSessions(false);
    }
    return;
  }
  const page = await resp.json();
  if (!more) els.sessionList.replaceChildren();
  // A session whose first turn never got an answer stored holds nothing to come back to: not shown.
  for (const item of page.data || []) if (item.message_count > 0) els.sessionList.append(sessionItem(item));
  sessionsAfter = page.last_id || sessionsAfter;
  els.moreSessions.hidden = !page.has_more;
  els.sessionsEmpty.hidden = els.sessionList.children.length > 0;
  markCurrentSession();
  document.body.dataset.sessions = String(els.sessionList.children.length);
}

function sessionItem(item) {
  const li = document.createElement("li");
  li.className = "session";
  li.dataset.id = item.id;
  const title = item.title || "(no message yet)";
  const open = document.createElement("button");
  open.type = "button";
  open.className = "open";
  open.textContent = title;
  open.title = title;
  open.addEventListener("click", () => openSession(item.id));
  const remove = document.createElement("button");
  remove.type = "button";
  remove.className = "delete";
  remove.textContent = "×";
  remove.setAttribute("aria-label", "Delete conversation: " + title);
  // Two steps, so one stray click or key press deletes nothing: the first arms it, the second deletes.
  remove.addEventListener("click", () => {
    if (remove.dataset.armed === "true") {
      deleteSession(item.id, li);
      return;
    }
    remove.dataset.armed = "true";
    remove.textContent = "Delete?";
    remove.setAttribute("aria-label", "Confirm: delete conversation " + title);
  });
  remove.addEventListener("blur", () => {
    remove.dataset.armed = "false";
    remove.textContent = "×";
    remove.setAttribute("aria-label", "Delete conversation: " + title);
  });
  li.append(open, remove);
  return li;
}

function markCurrentSession() {
  const current = localStorage.getItem(SESSION_STORE);
  for (const li of els.sessionList.children) {
    const open = li.querySelector(".open");
    if (li.dataset.id === current) open.setAttribute("aria-current", "true");
    else open.removeAttribute("aria-current");
  }
}

function openSession(id) {
  if (controller) controller.abort();
  localStorage.setItem(SESSION_STORE, id);
  markCurrentSession();
  showError("");
  setSessionsOpen(false);
  reloadHistory().then(() => els.input.focus());
}

async function deleteSession(id, li) {
  // 404: gone already (expired): off the list all the same.
  if (!(await callApi("/v1/sessions/" + encodeURIComponent(id), { method: "DELETE" }, [404]))) return;
  const next = li.nextElementSibling || li.previousElementSibling;
  li.remove();
  els.sessionsEmpty.hidden = els.sessionList.children.length > 0;
  document.body.dataset.sessions = String(els.sessionList.children.length);
  if (id === localStorage.getItem(SESSION_STORE)) {
    if (controller) controller.abort();
    startNewChat();
  }
  (next ? next.querySelector(".open") : els.input).focus();
}

// On a narrow screen the list is a panel over the chat, opened from the header.
function setSessionsOpen(open) {
  document.body.classList.toggle("sessions-open", open);
  els.toggleSessions.setAttribute("aria-expanded", String(open));
  if (open) {
    const first = els.sessionList.querySelector(".open[aria-current]") || els.sessionList.querySelector(".open");
    (first || els.toggleSessions).focus();
  }
}

// --- wiring ---------------------------------------------------------------------------------------
let turnUnderWay = false; // from submit to the turn's end, including the wait for a history read

els.composer.addEventListener("submit", async (e) => {
  e.preventDefault();
  const text = els.input.value.trim();
  if (!text || turnUnderWay) return;
  els.input.value = "";
  turnUnderWay = true;
  // Busy from the moment the turn is submitted, not from when its request starts: a turn waiting for a
  // history read is already under way (the page must not look idle, nor accept a second turn).
  setBusy(true);
  try {
    await historyLoad;
    await send(text);
  } finally {
    turnUnderWay = false;
    setBusy(false);
  }
});

els.input.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    els.composer.requestSubmit();
  }
});

els.stop.addEventListener("click", () => {
  if (controller) controller.abort();
});

els.newChat.addEventListener("click", () => {
  if (controller) controller.abort();
  startNewChat();
  showError("");
  setSessionsOpen(false);
  els.input.focus();
});

els.toggleSessions.addEventListener("click", () => {
  setSessionsOpen(!document.body.classList.contains("sessions-open"));
});
els.moreSessions.addEventListener("click", () => loadSessions(true));
els.closeSessions.addEventListener("click", () => {
  setSessionsOpen(false);
  els.toggleSessions.focus();
});

document.addEventListener("keydown", (e) => {
  if (e.key !== "Escape") return;
  if (document.body.classList.contains("sessions-open")) {
    setSessionsOpen(false);
    els.toggleSessions.focus();
  } else if (controller) {
    controller.abort(); // Escape stops an answer, like the Stop button
  }
});

els.toggleSettings.addEventListener("click", () => {
  const open = els.settings.hidden;
  els.settings.hidden = !open;
  els.toggleSettings.setAttribute("aria-expanded", String(open));
});

els.apiKey.addEventListener("change", async () => {
  const key = els.apiKey.value.trim();
  // The same key again (a field can report one edit twice): nothing to reload, and a second history read
  // would rebuild the page under the user's hands.
  if (key === (sessionStorage.getItem(KEY_STORE) || "")) return;
  if (key) sessionStorage.setItem(KEY_STORE, key);
  else sessionStorage.removeItem(KEY_STORE);
  showError("");
  await loadModels();
  await reloadHistory();
  await loadSessions();
});

els.model.addEventListener("change", () => localStorage.setItem(MODEL_STORE, els.model.value));
els.maxTokens.addEventListener("change", () => localStorage.setItem(MAX_TOKENS_STORE, els.maxTokens.value));
els.extraBody.addEventListener("change", () => localStorage.setItem(EXTRA_STORE, els.extraBody.value));

els.signIn.addEventListener("click", () => Sso.signIn().catch((err) => showError("Sign-in failed: " + err.message)));
els.signOut.addEventListener("click", () => Sso.signOut());

// Single sign-on when the site has it (/config.json): finish a sign-in coming back from the provider, then
// show who is signed in, or the button to sign in.
async function startSso() {
  try {
    if (!(await Sso.start(() => document.body.dataset.state !== "idle"))) return;
  } catch (err) {
    showError("Single sign-on failed: " + err.message);
  }
  const signedIn = Boolean(Sso.bearer());
  els.signIn.hidden = signedIn;
  els.signOut.hidden = !signedIn;
  els.account.textContent = signedIn ? Sso.subject() : "";
}

async function init() {
  await startSso();
  els.apiKey.value = sessionStorage.getItem(KEY_STORE) || "";
  els.maxTokens.value = localStorage.getItem(MAX_TOKENS_STORE) || els.maxTokens.value;
  els.extraBody.value = localStorage.getItem(EXTRA_STORE) || "";
  await loadModels(); // without a key: asks for one (no request, no red 401)
  await reloadHistory();
  await loadSessions();
  document.body.dataset.ready = "true";
}

init();
