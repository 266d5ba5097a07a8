// Single sign-on for the chat page: OpenID Connect, authorization code flow with PKCE, as a public client.
// The site's settings come from /config.json (rendered from the stack: stackspec/render/page_config.py); with
// `sso: null` this file does nothing and the page uses API keys. No client secret exists in the browser: PKCE
// binds the code to this tab (the verifier never leaves it until the token request). Tokens live in this tab's
// sessionStorage only, and the page signs in again shortly before the token expires (with the provider's own
// session that round trip is silent).
"use strict";

const Sso = (() => {
  const TOKEN_STORE = "qs.sso.token";     // {bearer, idToken, expiresAt (ms)}
  const PENDING_STORE = "qs.sso.pending"; // {state, nonce, verifier} while at the provider
  let config = null;    // {issuer, clientId, scopes} or null: API keys only
  let discovery = null; // the provider's openid-configuration
  let timer = null;

  const b64url = (bytes) => btoa(String.fromCharCode(...new Uint8Array(bytes)))
    .replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  const random = () => b64url(crypto.getRandomValues(new Uint8Array(32)));
  const redirectUri = () => location.origin + "/";

  function claims(jwt) {
    try {
      const part = jwt.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      return JSON.parse(atob(part + "=".repeat((4 - (part.length % 4)) % 4)));
    } catch (_) {
      return null;
    }
  }

  const isJwt = (token) => typeof token === "string" && token.split(".").length === 3 && claims(token) !== null;

  function stored() {
    try {
      const token = JSON.parse(sessionStorage.getItem(TOKEN_STORE) || "null");
      return token && token.expiresAt > Date.now() ? token : null;
    } catch (_) {
      return null;
    }
  }

  async function provider() {
    if (!discovery) {
      const resp = await fetch(config.issuer.replace(/\/$/, "") + "/.well-known/openid-configuration");
      if (!resp.ok) throw new Error("the identity provider's discovery document: HTTP " + resp.status);
      discovery = await resp.json();
      if (discovery.issuer !== config.issuer) throw new Error("the identity provider names another issuer");
    }
    return discovery;
  }

  // To the provider's sign-in page; it comes back to this page with ?code=…&state=….
  async function signIn() {
    const idp = await provider();
    const pending = { state: random(), nonce: random(), verifier: random() };
    sessionStorage.setItem(PENDING_STORE, JSON.stringify(pending));
    const challenge = b64url(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(pending.verifier)));
    const params = new URLSearchParams({
      response_type: "code", client_id: config.clientId, redirect_uri: redirectUri(),
      scope: config.scopes.join(" "), state: pending.state, nonce: pending.nonce,
      code_challenge: challenge, code_challenge_method: "S256",
    });
    location.assign(idp.authorization_endpoint + "?" + params);
  }

  // Back from the provider: the code for tokens (the verifier proves this tab asked for it).
  async function finishSignIn(query) {
    history.replaceState(null, "", location.pathname); // the code is single-use: keep it out of the address
    const pending = JSON.parse(sessionStorage.getItem(PENDING_STORE) || "null");
    sessionStorage.removeItem(PENDING_STORE);
    if (query.get("error")) throw new Error("sign-in refused: " + query.get("error"));
    if (!pending || query.get("state") !== pending.state) throw new Error("sign-in answer does not match this tab");
    const idp = await provider();
    const resp = await fetch(idp.token_endpoint, {
      method: "POST",
      body: new URLSearchParams({
        grant_type: "authorization_code", code: query.get("code"), redirect_uri: redirectUri(),
        client_id: config.clientId, code_verifier: pending.verifier,
      }),
    });
    if (!resp.ok) throw new Error("the identity provider refused the sign-in code: HTTP " + resp.status);
    const tokens = await resp.json();
    const id = claims(tokens.id_token || "");
    if (!id || id.nonce !== pending.nonce) throw new Error("the ID token does not match this sign-in");
    // The gateway verifies JWTs: a provider's JWT access token (its audience the API), else the ID token
    // (its audience the client id: then gateway.oidcAudience is the client id; README: single sign-on).
    const bearer = isJwt(tokens.access_token) ? tokens.access_token : tokens.id_token;
    const exp = (claims(bearer) || {}).exp;
    const expiresAt = exp ? exp * 1000 : Date.now() + (Number(tokens.expires_in) || 300) * 1000;
    sessionStorage.setItem(TOKEN_STORE, JSON.stringify({ bearer, idToken: tokens.id_token, expiresAt }));
  }

  // Sign in again before the token expires: at two thirds of its life, at most a minute early. Never in the
  // middle of a streamed answer: then once it has ended.
  function schedule(token, isBusy) {
    clearTimeout(timer);
    const life = token.expiresAt - Date.now();
    const margin = Math.min(60000, life / 3);
    const renew = () => (isBusy() ? (timer = setTimeout(renew, 500)) : signIn());
    timer = setTimeout(renew, Math.max(0, life - margin));
  }

  async function signOut() {
    const token = stored();
    sessionStorage.removeItem(TOKEN_STORE);
    clearTimeout(timer);
    const idp = await provider().catch(() => null);
    if (idp && idp.end_session_endpoint) {
      const params = new URLSearchParams({ client_id: config.clientId, post_logout_redirect_uri: redirectUri() });
      if (token && token.idToken) params.set("id_token_hint", token.idToken);
      location.assign(idp.end_session_endpoint + "?" + params);
    } else {
      location.reload();
    }
  }

  // Reads /config.json; finishes a sign-in coming back from the provider. Returns whether SSO is on.
  async function start(isBusy) {
    const resp = await fetch("/config.json", { cache: "no-store" });
    config = resp.ok ? (await resp.json()).sso : null;
    if (!config) return false;
    const query = new URLSearchParams(location.search);
    if (query.has("code") || query.has("error")) await finishSignIn(query);
    const token = stored();
    if (token) schedule(token, isBusy);
    return true;
  }

  return {
    start, signIn, signOut,
    enabled: () => config !== null,
    bearer: () => (stored() || {}).bearer || null,
    subject: () => (claims((stored() || {}).idToken || "") || {}).email || (claims((stored() || {}).bearer || "") || {}).sub || "",
  };
})();
