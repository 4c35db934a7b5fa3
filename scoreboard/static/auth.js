// Login as the public client `scoreboard-web`: the authorization code flow with PKCE
// (docs/api.md, section 1). The tokens live in sessionStorage only: per tab, gone with
// the tab, never in a URL or a cookie. Each tab has its own refresh token family, so two tabs
// never race each other's rotation.

import { ApiError, retriable, retryDelayMs, revoke, sleep, tokenRequest } from "./api.js";
import { Backoff } from "./backoff.js";
import { challengeFor, randomToken } from "./pkce.js";

const CLIENT_ID = "scoreboard-web";
const SCOPE = "read write";
const TOKENS_KEY = "scoreboard.tokens";
const LOGIN_KEY = "scoreboard.login"; // state and verifier of a login under way
const SIGN_IN_CANCELLED = "Sign-in cancelled: you are still watching read-only.";
// Refresh a quarter of the lifetime before expiry, at most a minute before: a 900 s token is
// renewed at 840 s, a 5 s test token at 3.75 s. The WebSocket closes at `exp` exactly, so the
// new token must reach it before then.
const MAX_REFRESH_MARGIN_MS = 60_000;
// The server's word that the refresh token is dead (RFC 6749 §5.2): only these end a session.
// A rate limit, an outage or a lost connection leaves the token good: try again.
const SESSION_ENDING_ERRORS = new Set(["invalid_grant", "invalid_client"]);
// A code lives 60 s: trying to redeem it a few times within that is worth it, more is not.
const CODE_EXCHANGE_ATTEMPTS = 3;
const MAX_CODE_EXCHANGE_WAIT_MS = 20_000;
// A logout tells the server a few times, as long as it asks to be asked again.
const REVOKE_ATTEMPTS = 5;

export class LoginError extends Error {}

const redirectUri = () => `${location.origin}/callback`;

/** Leaves the page for the authorization server's login form. */
export async function beginLogin() {
  const state = randomToken();
  const verifier = randomToken();
  sessionStorage.setItem(LOGIN_KEY, JSON.stringify({ state, verifier }));
  const params = new URLSearchParams({
    response_type: "code",
    client_id: CLIENT_ID,
    redirect_uri: redirectUri(),
    scope: SCOPE,
    state,
    code_challenge: await challengeFor(verifier),
    code_challenge_method: "S256",
  });
  location.assign(`/api/v1/oauth/authorize?${params}`);
}

/** Back on /callback: checks `state`, trades the code for tokens. */
export async function completeLogin(url) {
  const params = url.searchParams;
  const pending = JSON.parse(sessionStorage.getItem(LOGIN_KEY) ?? "null");
  sessionStorage.removeItem(LOGIN_KEY); // one use, whatever happens next
  // A callback this tab did not start (or a replayed one) is refused: CSRF protection.
  const ours = pending !== null && params.get("state") === pending.state;
  if (ours && params.get("error") === "access_denied") {
    throw new LoginError(SIGN_IN_CANCELLED); // the Deny button on the login form
  }
  if (params.has("error")) {
    throw new LoginError(params.get("error_description") ?? `Login failed: ${params.get("error")}.`);
  }
  if (!ours || !params.get("code")) {
    throw new LoginError("That login did not start in this tab. Please log in again.");
  }
  const exchange = {
    grant_type: "authorization_code",
    code: params.get("code"),
    redirect_uri: redirectUri(),
    client_id: CLIENT_ID,
    code_verifier: pending.verifier,
  };
  for (let attempt = 1; ; attempt += 1) {
    try {
      return Session.create(await tokenRequest(exchange));
    } catch (error) {
      // Only a refusal the server gave before looking at the code (a rate limit or outage,
      // with the wait it asks for) leaves it unspent: anything else, tried again, would be a
      // code reused.
      const unspent =
        error instanceof ApiError && [429, 503].includes(error.status) && error.retryAfterS !== null;
      if (
        !unspent ||
        attempt === CODE_EXCHANGE_ATTEMPTS ||
        error.retryAfterS * 1000 > MAX_CODE_EXCHANGE_WAIT_MS
      ) {
        throw new LoginError(`Login failed: ${error.message}. Please try again.`);
      }
      await sleep(error.retryAfterS * 1000);
    }
  }
}

function tokensFrom(body, previousRefreshToken = null) {
  const lifetimeMs = body.expires_in * 1000;
  return {
    access_token: body.access_token,
    refresh_token: body.refresh_token ?? previousRefreshToken,
    expires_at: Date.now() + lifetimeMs,
    lifetime_ms: lifetimeMs,
  };
}

/**
 * The signed-in tab's tokens. Events: `refreshed` (a new access token: re-authenticate the
 * socket) and `ended` (detail: a message for the user, or null after a logout).
 */
export class Session extends EventTarget {
  static load() {
    const raw = sessionStorage.getItem(TOKENS_KEY);
    return raw ? new Session(JSON.parse(raw)) : null;
  }

  static create(body) {
    const session = new Session(tokensFrom(body));
    session.save();
    return session;
  }

  constructor(tokens) {
    super();
    this.tokens = tokens;
    this.timer = null;
    this.inflight = null;
    this.ended = false;
    this.backoff = new Backoff({ baseMs: 1000, capMs: 15_000 });
    // Background tabs' timers may fire late: catch up when the tab is seen again.
    this.onVisible = () => {
      if (!document.hidden && Date.now() >= this.refreshDue()) this.refresh();
    };
  }

  get accessToken() {
    return this.tokens.access_token;
  }

  save() {
    sessionStorage.setItem(TOKENS_KEY, JSON.stringify(this.tokens));
  }

  refreshDue() {
    const margin = Math.min(MAX_REFRESH_MARGIN_MS, this.tokens.lifetime_ms / 4);
    return this.tokens.expires_at - margin;
  }

  start() {
    document.addEventListener("visibilitychange", this.onVisible);
    this.schedule();
  }

  schedule() {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.refresh(), Math.max(0, this.refreshDue() - Date.now()));
  }

  /** A new access token; one request at a time, whoever asks. Resolves false if the session ended. */
  refresh() {
    this.inflight ??= this.rotate().finally(() => {
      this.inflight = null;
    });
    return this.inflight;
  }

  async rotate() {
    while (!this.ended) {
      try {
        const body = await tokenRequest({
          grant_type: "refresh_token",
          refresh_token: this.tokens.refresh_token,
          client_id: CLIENT_ID,
        });
        if (this.ended) return false; // logged out while the request was out
        this.tokens = tokensFrom(body, this.tokens.refresh_token);
        this.save();
        this.backoff.reset();
        this.schedule();
        this.dispatchEvent(new Event("refreshed"));
        return true;
      } catch (error) {
        // The refresh token is dead (revoked, rotated elsewhere, expired): only a new login helps.
        if (error instanceof ApiError && SESSION_ENDING_ERRORS.has(error.code)) {
          this.end("Your session has ended. Please log in again.");
          return false;
        }
        // Rate-limited, unreachable or failing: the refresh token is still good, try again
        // when the server says (Retry-After), or after a backoff.
        await sleep(retryDelayMs(error, this.backoff));
      }
    }
    return false;
  }

  /**
   * Ends the session here at once, then revokes the refresh token (and with it the grant's
   * access tokens and sockets), again while the server is rate-limiting or unreachable.
   * Resolves true once the server has revoked it, false if it could not be told.
   */
  async logout() {
    const refreshToken = this.tokens.refresh_token;
    this.end(null);
    if (!refreshToken) return true;
    const backoff = new Backoff({ baseMs: 1000, capMs: 15_000 });
    for (let attempt = 1; ; attempt += 1) {
      try {
        await revoke({ token: refreshToken, token_type_hint: "refresh_token", client_id: CLIENT_ID });
        return true;
      } catch (error) {
        // Past that, nothing more a page can do: the token expires on its own.
        if (!retriable(error) || attempt === REVOKE_ATTEMPTS) return false;
        await sleep(retryDelayMs(error, backoff));
      }
    }
  }

  end(reason) {
    if (this.ended) return;
    this.ended = true;
    clearTimeout(this.timer);
    document.removeEventListener("visibilitychange", this.onVisible);
    sessionStorage.removeItem(TOKENS_KEY);
    this.dispatchEvent(new CustomEvent("ended", { detail: reason }));
  }
}
