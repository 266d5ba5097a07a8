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
};

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
  const key = sessionStorage.getItem(KEY_STORE);
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

function hasKey() {
  return Boolean(sessionStorage.getItem(KEY_STORE));
}

function askForKey() {
  els.settings.hidden = false;
  els.toggleSettings.setAttribute("aria-expanded", "true");
  showNotice("Enter your API key under Settings to start (`make up` prints a development key).");
  els.apiKey.focus();
}

// Start a new conversation: a new session id, an empty page.
function startNewChat() {
  localStorage.setItem(SESSION_STORE, newSessionId());
  els.messages.replaceChildren();
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
  els.send.hidden = busy;
  els.stop.hidden = !busy;
  els.send.disabled = busy;
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
  let resp;
  try {
    resp = await fetch("/v1/models", { headers: headers() });
  } catch (_) {
    showError("Cannot reach the server; is `make up` running?");
    return;
  }
  if (!resp.ok) {
    showError(await describeFailure(resp));
    return;
  }
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
    if (m.role === "user" || m.role === "assistant") addMessage(m.role, contentText(m.content));
  }
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
  const maxTokens = Math.max(1, parseInt(els.maxTokens.value, 10) || 256);
  controller = new AbortController();
  setBusy(true);
  const post = () => fetch("/v1/chat/completions", {
    method: "POST",
    headers: headers({ "Content-Type": "application/json", Accept: "text/event-stream" }),
    body: JSON.stringify({
      ...extra, model, stream: true, max_tokens: maxTokens, messages: [{ role: "user", content: text }],
    }),
    signal: controller.signal,
  });
  try {
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
      if (data === "[DONE]") break;
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
      const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
      if (delta && delta.content) {
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
    controller = null;
    setBusy(false);
    els.input.focus();
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
  els.input.focus();
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
});

els.model.addEventListener("change", () => localStorage.setItem(MODEL_STORE, els.model.value));
els.maxTokens.addEventListener("change", () => localStorage.setItem(MAX_TOKENS_STORE, els.maxTokens.value));
els.extraBody.addEventListener("change", () => localStorage.setItem(EXTRA_STORE, els.extraBody.value));

async function init() {
  els.apiKey.value = sessionStorage.getItem(KEY_STORE) || "";
  els.maxTokens.value = localStorage.getItem(MAX_TOKENS_STORE) || els.maxTokens.value;
  els.extraBody.value = localStorage.getItem(EXTRA_STORE) || "";
  await loadModels(); // without a key: asks for one (no request, no red 401)
  await reloadHistory();
  document.body.dataset.ready = "true";
}

init();
