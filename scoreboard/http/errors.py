"""JSON error bodies in the shapes of the wire contract (docs/api.md)."""

from __future__ import annotations

from typing import Any

from quart import Response, jsonify

from scoreboard.intake import Refused, Unavailable


class RequestRejected(Exception):
    """Raised by handlers and helpers; rendered as the contract's JSON error."""

    def __init__(
        self,
        status: int,
        error: str,
        message: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ):
        super().__init__(message or error)
        self.status = status
        self.error = error
        self.message = message
        self.headers = headers or {}
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"success": False, "error": self.error}
        if self.message is not None:
            body["message"] = self.message
        body.update(self.extra)
        return body


def invalid_request(message: str) -> RequestRejected:
    return RequestRejected(400, "invalid_request", message)


def _quotable(text: str) -> str:
    """`text` as RFC 6750 §3 allows inside error_description: no quote, backslash, control or
    non-ASCII character (the message may repeat parts of an attacker's token header)."""
    return "".join(c if " " <= c <= "~" and c not in '"\\' else "?" for c in text)


def invalid_token(message: str) -> RequestRejected:
    description = _quotable(message)
    return RequestRejected(
        401,
        "invalid_token",
        message,
        headers={
            "WWW-Authenticate": f'Bearer error="invalid_token", error_description="{description}"'
        },
    )


def insufficient_scope(scope: str) -> RequestRejected:
    return RequestRejected(
        403,
        "insufficient_scope",
        f"this needs the {scope!r} scope",
        headers={"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{scope}"'},
    )


def rate_limited(retry_after_s: int) -> RequestRejected:
    return RequestRejected(
        429,
        "rate_limit_exceeded",
        headers={"Retry-After": str(retry_after_s)},
        extra={"retry_after": retry_after_s},
    )


def unavailable(retry_after_s: int, message: str, *, outcome: str | None = None) -> RequestRejected:
    """503. `outcome` says what became of an action: `unknown` (it may have been queued: retry
    with the same nonce to learn its state) or `not_queued` (nothing happened)."""
    extra: dict[str, Any] = {"retry_after": retry_after_s}
    if outcome is not None:
        extra["outcome"] = outcome
    return RequestRejected(
        503,
        "unavailable",
        message,
        headers={"Retry-After": str(retry_after_s)},
        extra=extra,
    )


def rejection(refusal: Refused | Unavailable) -> RequestRejected:
    """How HTTP and the WebSocket tell an action's refusal by the intake."""
    if isinstance(refusal, Unavailable):
        return unavailable(refusal.retry_after_s, refusal.message, outcome=refusal.outcome)
    if refusal.retry_after_s is not None:
        return rate_limited(refusal.retry_after_s)
    return RequestRejected(400, refusal.error, refusal.message)


def render(rejection: RequestRejected) -> Response:
    response = jsonify(rejection.body())
    response.status_code = rejection.status
    for name, value in rejection.headers.items():
        response.headers[name] = value
    return response
