// The REST calls of the contract (spec/api.md §1–3), as small functions returning parsed JSON.
// A refusal becomes an ApiError carrying the status and the body's error code.

export class ApiError extends Error {
  constructor(status, body) {
    super(body?.error_description ?? body?.message ?? body?.error ?? `HTTP ${status}`);
    this.status = status;
    this.code = body?.error ?? null;
    this.body = body;
  }
}

async function call(path, init = {}) {
  const response = await fetch(path, { cache: "no-store", ...init });
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

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

/** RFC 7009 revocation. */
export const revoke = (params) =>
  call("/api/v1/oauth/revoke", { method: "POST", body: new URLSearchParams(params) });
