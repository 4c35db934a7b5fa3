// The REST calls of the contract (docs/api.md, sections 1–3), as small functions returning parsed JSON.
// A refusal becomes an ApiError carrying the status, the body's error code and the wait the
// server asked for (Retry-After, in seconds), if any.

export class ApiError extends Error {
  constructor(status, body, retryAfterS = null) {
    super(body?.error_description ?? body?.message ?? body?.error ?? `HTTP ${status}`);
    this.status = status;
    this.code = body?.error ?? null;
    this.body = body;
    this.retryAfterS = retryAfterS;
  }
}

async function call(path, init = {}) {
  const response = await fetch(path, { cache: "no-store", ...init });
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, body, retryAfterS(response));
  return body;
}

function retryAfterS(response) {
  const header = response.headers.get("Retry-After");
  const seconds = header === null ? NaN : Number(header);
  return Number.isFinite(seconds) && seconds >= 0 ? seconds : null;
}

/** True if the same request may succeed later: a rate limit, an outage, no answer at all. */
export const retriable = (error) =>
  !(error instanceof ApiError) || error.status === 429 || error.status >= 500;

/** The wait before trying again: what the server asked for (with a little jitter, so that
 * pages told the same do not come back at the same instant), else the backoff's next delay. */
export function retryDelayMs(error, backoff) {
  const asked = error instanceof ApiError ? error.retryAfterS : null;
  return asked === null ? backoff.next() : asked * 1000 + Math.random() * 1000;
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const bearer = (token) => ({ Authorization: `Bearer ${token}` });

export const getLeaderboard = () => call("/api/v1/leaderboard");

export const getMe = (token) => call("/api/v1/leaderboard/me", { headers: bearer(token) });

export const getActionTypes = () => call("/api/v1/actions/types");

export const register = (fields) =>
  call("/api/v1/users", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(fields),
  });

/** RFC 6749 token endpoint, form-encoded as the RFC says. */
export const tokenRequest = (params) =>
  call("/api/v1/oauth/token", { method: "POST", body: new URLSearchParams(params) });

/** RFC 7009 revocation; `keepalive`, so that one sent as the tab closes still arrives. */
export const revoke = (params) =>
  call("/api/v1/oauth/revoke", {
    method: "POST",
    body: new URLSearchParams(params),
    keepalive: true,
  });
