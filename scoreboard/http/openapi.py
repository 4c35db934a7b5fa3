"""`GET /openapi.json`: the REST API as an OpenAPI 3.1 document, written by hand.

It describes what the server answers, every status included, so that a client generator or a
fuzzer (the suite runs schemathesis against it) can rely on it; a test checks that every route
is documented and every documented path routed. The action request is described per catalogue
entry, so the document follows the configured catalogue. The WebSocket and the wire contract's
prose live in the README.
"""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response, jsonify

from scoreboard.catalogue import MAX_INTEGER_FIELD, MAX_STRING_FIELD, ActionType, Catalogue
from scoreboard.http.ip_limit import LIMITED_PREFIX
from scoreboard.http.services import current_services

blueprint = Blueprint("openapi", __name__)

JSON = "application/json"
HTML = "text/html"
FORM = "application/x-www-form-urlencoded"
OPENAPI_VERSION = "3.1.0"
NONCE = {"type": "string", "pattern": "^[A-Za-z0-9_-]{8,64}$"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str, **headers: bool) -> dict[str, Any]:
    """A JSON response; `headers` names response headers, True when always present."""
    response: dict[str, Any] = {"description": description, "content": {JSON: {"schema": schema}}}
    if headers:
        response["headers"] = {
            name.replace("_", "-"): {"required": required, "schema": {"type": "string"}}
            for name, required in headers.items()
        }
    return response


def _html(description: str, **headers: bool) -> dict[str, Any]:
    response = _json({"type": "string"}, description, **headers)
    response["content"] = {HTML: {"schema": {"type": "string"}}}
    return response


def _errors(*statuses: int, schema: str = "Error") -> dict[str, Any]:
    descriptions = {
        400: "invalid_request: the request is malformed",
        401: "invalid_token: no usable bearer token",
        403: "insufficient_scope",
        404: "not_found",
        405: "method_not_allowed",
        408: "the body did not arrive in time (the connection is closed)",
        409: "conflict",
        413: "the body exceeds 4 KiB",
        415: "the body is not application/json",
        422: "the action was refused where it is scored",
        429: "rate_limit_exceeded",
        503: "unavailable: a backend did not answer in time",
    }
    headers: dict[int, dict[str, bool]] = {
        401: {"WWW_Authenticate": True},
        429: {"Retry_After": True},
        503: {"Retry_After": True},
    }
    return {
        str(status): _json(_ref(schema), descriptions[status], **headers.get(status, {}))
        for status in statuses
    }


# Every route answers these when its framing is wrong (the body guard and the router).
COMMON_ERRORS = (405, 408, 413)


def _operation(
    summary: str,
    responses: dict[str, Any],
    *,
    secured: bool = False,
    parameters: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
    errors: tuple[int, ...] = (),
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "responses": {**responses, **_errors(*COMMON_ERRORS, *errors)},
    }
    if secured:
        operation["security"] = [{"bearer": []}]
        operation["responses"].update(_errors(401))
    if parameters:
        operation["parameters"] = parameters
    if body:
        operation["requestBody"] = {"required": True, "content": body}
    return operation


def _query(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    return {"name": name, "in": "query", "schema": schema, "description": description}


def _bounds(entry: ActionType, name: str) -> dict[str, int]:
    """The catalogue's `ranges` rule for one field, as JSON Schema."""
    for field_name, bounds in entry.ranges:
        if field_name == name:
            return {"minimum": bounds.minimum, "maximum": bounds.maximum}
    return {}


def _path_id(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "integer", "minimum": 0},
    }


def _admin_paths() -> dict[str, Any]:
    """The moderation endpoints (`http/moderation.py`): scope admin."""
    flag = {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "kind": {"enum": ["burst", "regular_intervals", "score_growth", "shared_address"]},
            "subject": {"type": "string"},
            "user_id": {"type": ["integer", "null"]},
            "address": {"type": "string"},
            "window_start_ms": {"type": "integer"},
            "window_end_ms": {"type": "integer"},
            "raised_at_ms": {"type": "integer"},
            "evidence": {"type": "object"},
            "cleared_at_ms": {"type": ["integer", "null"]},
            "cleared_by": {"type": ["string", "null"]},
        },
        "required": ["id", "kind", "subject", "user_id", "address", "evidence", "cleared_at_ms"],
    }
    suspension = _json(
        {
            "type": "object",
            "properties": {
                "user_id": {"type": "integer"},
                "suspended": {"type": "boolean"},
                "changed": {"type": "boolean"},
            },
            "required": ["user_id", "suspended", "changed"],
        },
        "the user's suspension now, and whether this request changed it",
    )
    admin_errors = (400, 403, 404, 503)
    return {
        "/api/v1/admin/flags": {
            "get": _operation(
                "Behavioural flags, newest first (scope admin)",
                {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "flags": {"type": "array", "items": flag},
                                "next_before": {"type": ["integer", "null"]},
                            },
                            "required": ["flags", "next_before"],
                        },
                        "a page of flags",
                    )
                },
                secured=True,
                parameters=[
                    _query("user", {"type": "integer", "minimum": 1}, "only this user's"),
                    _query(
                        "since",
                        {"type": "string"},
                        "raised since: RFC 3339, epoch ms, or a span back (2h, 7d)",
                    ),
                    _query(
                        "kind",
                        {"enum": ["burst", "regular_intervals", "score_growth", "shared_address"]},
                    ),
                    _query("standing", {"enum": ["true", "false"]}, "only flags not cleared"),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 500}, "1-500"),
                    _query("before", {"type": "integer", "minimum": 1}, "the next_before seen"),
                ],
                errors=(400, 403, 503),
            )
        },
        "/api/v1/admin/flags/{flag_id}/clear": {
            "post": _operation(
                "Clear a flag (scope admin); clearing it again changes nothing",
                {
                    "200": _json(
                        {"type": "object", "properties": {"flag": flag}, "required": ["flag"]},
                        "the flag, cleared",
                    )
                },
                secured=True,
                parameters=[_path_id("flag_id")],
                errors=admin_errors,
            )
        },
        "/api/v1/admin/users/{user_id}/suspend": {
            "post": _operation(
                "Suspend a user: actions refused account_suspended, off the board (scope admin)",
                {"200": suspension},
                secured=True,
                parameters=[_path_id("user_id")],
                errors=admin_errors,
            )
        },
        "/api/v1/admin/users/{user_id}/unsuspend": {
            "post": _operation(
                "Unsuspend a user: actions counted again, back on the board (scope admin)",
                {"200": suspension},
                secured=True,
                parameters=[_path_id("user_id")],
                errors=admin_errors,
            )
        },
    }


def _action_request(catalogue: Catalogue) -> dict[str, Any]:
    kinds = {
        "string": {"type": "string", "minLength": 1, "maxLength": MAX_STRING_FIELD},
        "integer": {"type": "integer", "minimum": 0, "maximum": MAX_INTEGER_FIELD},
        "unix_seconds": {"type": "integer", "minimum": 0, "maximum": MAX_INTEGER_FIELD},
    }
    return {
        "oneOf": [
            {
                "type": "object",
                "properties": {
                    "action_type": {"const": entry.name},
                    "action_data": {
                        "type": "object",
                        "properties": {
                            name: {**kinds[kind], **_bounds(entry, name)}
                            for name, kind in entry.fields
                        },
                        "required": [name for name, _kind in entry.fields],
                        "additionalProperties": False,
                    },
                    "nonce": NONCE,
                },
                "required": ["action_type", "action_data", "nonce"],
                "additionalProperties": False,
            }
            for entry in catalogue.types.values()
        ],
        "description": "Strings refuse control, format and surrogate characters (400).",
    }


AUTHORIZE_PARAMETERS = [
    _query("response_type", {"type": "string", "enum": ["code"]}),
    _query("client_id", {"type": "string"}),
    _query("redirect_uri", {"type": "string"}),
    _query("scope", {"type": "string"}),
    _query("state", {"type": "string"}),
    _query("code_challenge", {"type": "string"}),
    _query("code_challenge_method", {"type": "string", "enum": ["S256"]}),
]

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "properties": {
            "success": {"const": False},
            "error": {"type": "string"},
            "message": {"type": "string"},
            "error_description": {"type": "string"},
            "retry_after": {"type": "integer", "minimum": 0},
        },
        "required": ["success", "error"],
    },
    "OAuthError": {
        "type": "object",
        "properties": {"error": {"type": "string"}, "error_description": {"type": "string"}},
        "required": ["error"],
    },
    "Accepted": {
        "type": "object",
        "properties": {
            "success": {"const": True},
            "action_id": {"type": "string", "format": "uuid"},
            "status": {"enum": ["accepted", "completed", "rejected", "failed"]},
        },
        "required": ["success", "action_id", "status"],
    },
    "Outcome": {
        "type": "object",
        "properties": {
            "success": {"type": "boolean"},
            "action_id": {"type": "string", "format": "uuid"},
            "score_delta": {"type": "integer"},
            "new_score": {"type": ["integer", "null"]},
            "message": {"type": "string"},
            "error": {"type": "string"},
            "retry_after": {"type": "integer"},
        },
        "required": ["success", "action_id"],
    },
    "Action": {
        "type": "object",
        "properties": {
            "action_id": {"type": "string", "format": "uuid"},
            "action_type": {"type": "string"},
            "status": {"enum": ["accepted", "completed", "rejected", "failed"]},
            "score_delta": {"type": ["integer", "null"]},
            "new_score": {"type": ["integer", "null"]},
            "error": {"type": ["string", "null"]},
            "message": {"type": ["string", "null"]},
            "created_at": {"type": "string"},
            "processed_at": {"type": ["string", "null"]},
        },
        "required": ["action_id", "action_type", "status", "created_at"],
    },
    "RankedEntry": {
        "type": "object",
        "properties": {
            "rank": {"type": "integer", "minimum": 1},
            "user_id": {"type": "integer"},
            "username": {"type": ["string", "null"]},
            "score": {"type": "integer"},
        },
        "required": ["rank", "user_id", "username", "score"],
    },
    "Tokens": {
        "type": "object",
        "properties": {
            "access_token": {"type": "string"},
            "token_type": {"const": "Bearer"},
            "expires_in": {"type": "integer"},
            "refresh_token": {"type": "string"},
            "scope": {"type": "string"},
        },
        "required": ["access_token", "token_type", "expires_in"],
    },
    "TokenRequest": {
        "type": "object",
        "properties": {
            "grant_type": {"enum": ["authorization_code", "refresh_token"]},
            "code": {"type": "string"},
            "redirect_uri": {"type": "string"},
            "code_verifier": {"type": "string"},
            "refresh_token": {"type": "string"},
            "client_id": {"type": "string"},
            "client_secret": {"type": "string"},
            "scope": {"type": "string"},
        },
        "required": ["grant_type"],
    },
    "RevokeRequest": {
        "type": "object",
        "properties": {
            "token": {"type": "string"},
            "token_type_hint": {
                "type": "string",
                "description": "access_token or refresh_token; another value is ignored "
                "(RFC 7009 §2.1)",
            },
            "client_id": {"type": "string"},
            "client_secret": {"type": "string"},
        },
        "required": ["token"],
    },
    "AuditEntry": {
        "type": "object",
        "description": "one attempt: settled by the worker (completed, rejected), refused by "
        "the store (failed) or refused by the API before it was queued (refused)",
        "properties": {
            "at": {"type": "string"},
            "outcome": {"enum": ["completed", "rejected", "failed", "refused"]},
            "action_id": {"type": ["string", "null"]},
            "action_type": {"type": ["string", "null"]},
            "nonce": {"type": ["string", "null"]},
            "score_delta": {"type": "integer"},
            "status_code": {"type": ["integer", "null"]},
            "error": {"type": ["string", "null"]},
            "message": {"type": ["string", "null"]},
            "channel": {"enum": ["http", "websocket", None]},
            "ip": {"type": ["string", "null"]},
            "user_agent": {"type": ["string", "null"]},
            "headers": {"type": "object", "additionalProperties": {"type": "string"}},
        },
        "required": ["at", "outcome", "score_delta", "headers"],
    },
    "LoginForm": {
        "type": "object",
        "properties": {
            **{parameter["name"]: parameter["schema"] for parameter in AUTHORIZE_PARAMETERS},
            "form_token": {"type": "string"},
            "username": {"type": "string"},
            "password": {"type": "string"},
            "decision": {
                "type": "string",
                "description": "`deny` (the Deny button): the client gets error=access_denied "
                "and the state, whatever the username and password; otherwise a sign-in",
            },
        },
        "required": ["username", "password", "form_token"],
    },
}


def openapi_document(catalogue: Catalogue) -> dict[str, Any]:
    bearer = {"WWW_Authenticate": True}
    oauth_errors = {
        str(status): _json(_ref("OAuthError"), description, **headers)
        for status, description, headers in (
            (400, "RFC 6749 §5.2 error", {}),
            (401, "invalid_client (the client authenticated with Basic)", bearer),
            (429, "rate_limit_exceeded", {"Retry_After": True}),
            (503, "temporarily_unavailable", {"Retry_After": True}),
        )
    }
    login_page = {
        "200": _html("the login form"),
        "302": {
            "description": "to the client's redirect URI, with a code or an error "
            "(access_denied after Deny)",
            "headers": {"Location": {"required": True, "schema": {"type": "string"}}},
        },
        "400": {
            "description": "the request is not valid, or the form expired: an error page; "
            "a parameter outside RFC 6749's grammar, or plain http: an OAuth error",
            "content": {HTML: {"schema": {"type": "string"}}, JSON: {"schema": _ref("OAuthError")}},
        },
        "401": _html("wrong username or password: the form again"),
        "429": _html("too many sign-in attempts", Retry_After=True),
        "503": _html("sign-in is unavailable for a moment", Retry_After=True),
    }
    page = {
        "200": _html("the web page"),
        "304": {"description": "not modified (If-None-Match)"},
    }
    paths: dict[str, Any] = {
        "/api/v1/users": {
            "post": _operation(
                "Register an account",
                {
                    "201": _json(
                        {
                            "type": "object",
                            "properties": {
                                "user_id": {"type": "integer"},
                                "username": {"type": "string"},
                            },
                            "required": ["user_id", "username"],
                        },
                        "registered",
                    )
                },
                body={
                    JSON: {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "username": {
                                    "type": "string",
                                    "pattern": "^[A-Za-z0-9_.-]{3,32}$",
                                },
                                "email": {"type": "string", "format": "email", "maxLength": 254},
                                "password": {"type": "string", "minLength": 10, "maxLength": 128},
                            },
                            "required": ["username", "email", "password"],
                            "additionalProperties": False,
                        }
                    }
                },
                errors=(400, 409, 415, 429, 503),
            )
        },
        "/api/v1/oauth/authorize": {
            "get": _operation(
                "The authorization endpoint (code flow with PKCE S256): the login form",
                login_page,
                parameters=AUTHORIZE_PARAMETERS,
            ),
            "post": _operation(
                "The login form's post",
                login_page,
                body={FORM: {"schema": _ref("LoginForm")}},
            ),
        },
        "/api/v1/oauth/token": {
            "post": _operation(
                "The token endpoint: authorization_code and refresh_token grants",
                {"200": _json(_ref("Tokens"), "the tokens"), **oauth_errors},
                body={
                    FORM: {"schema": _ref("TokenRequest")},
                    JSON: {"schema": _ref("TokenRequest")},
                },
            )
        },
        "/api/v1/oauth/revoke": {
            "post": _operation(
                "RFC 7009 revocation (also 200 for unknown tokens)",
                {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {"revoked": {"const": True}},
                            "required": ["revoked"],
                        },
                        "revoked",
                    ),
                    **oauth_errors,
                },
                body={
                    FORM: {"schema": _ref("RevokeRequest")},
                    JSON: {"schema": _ref("RevokeRequest")},
                },
            )
        },
        "/api/v1/oauth/userinfo": {
            "get": _operation(
                "The signed-in user",
                {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "sub": {"type": "string"},
                                "username": {"type": "string"},
                                "email": {"type": "string"},
                                "email_verified": {"type": "boolean"},
                            },
                            "required": ["sub", "username", "email", "email_verified"],
                        },
                        "the user",
                    )
                },
                secured=True,
                errors=(400, 503),
            )
        },
        "/.well-known/oauth-authorization-server": {
            "get": _operation(
                "RFC 8414 metadata",
                {"200": _json({"type": "object", "required": ["issuer"]}, "the metadata")},
            )
        },
        "/.well-known/jwks.json": {
            "get": _operation(
                "The public signing keys",
                {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {"keys": {"type": "array"}},
                            "required": ["keys"],
                        },
                        "a JWK set",
                    )
                },
            )
        },
        "/api/v1/actions/perform": {
            "post": _operation(
                "Perform an action (scope write). Idempotent per nonce.",
                {
                    "200": _json(_ref("Outcome"), "completed (with Prefer: wait=N)"),
                    "202": _json(_ref("Accepted"), "durably queued", Location=True),
                    "422": _json(_ref("Outcome"), "refused where it is scored"),
                },
                secured=True,
                parameters=[
                    {
                        "name": "Prefer",
                        "in": "header",
                        "schema": {"type": "string"},
                        "description": "RFC 7240: wait=N (at most 10 s) waits for the outcome; "
                        "other preferences are ignored",
                    }
                ],
                body={JSON: {"schema": _action_request(catalogue)}},
                errors=(400, 403, 415, 429, 503),
            )
        },
        "/api/v1/actions/types": {
            "get": _operation(
                "The action catalogue",
                {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "action_types": {"type": "array"},
                            },
                            "description": "each type's points, cooldown_s, fields and rules"
                            " (unique, ranges, max_age_s: docs/actions.md)",
                            "required": ["action_types"],
                        },
                        "the catalogue",
                    )
                },
            )
        },
        "/api/v1/actions/{action_id}": {
            "get": _operation(
                "One of the caller's actions (scope read)",
                {"200": _json(_ref("Action"), "the action")},
                secured=True,
                parameters=[
                    {
                        "name": "action_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "format": "uuid"},
                    }
                ],
                errors=(400, 403, 404, 503),
            )
        },
        "/api/v1/leaderboard": {
            "get": _operation(
                "The top of the board",
                {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "leaderboard": {"type": "array", "items": _ref("RankedEntry")},
                                "updated_at": {"type": "string"},
                            },
                            "required": ["leaderboard", "updated_at"],
                        },
                        "the top entries",
                    )
                },
                parameters=[
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 100}, "1-100")
                ],
                errors=(400, 503),
            )
        },
        "/api/v1/leaderboard/me": {
            "get": _operation(
                "The caller's rank and neighbours (scope read)",
                {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "rank": {"type": ["integer", "null"]},
                                "user_id": {"type": "integer"},
                                "username": {"type": ["string", "null"]},
                                "score": {"type": "integer"},
                                "above": {"type": "array", "items": _ref("RankedEntry")},
                                "below": {"type": "array", "items": _ref("RankedEntry")},
                            },
                            "required": ["rank", "user_id", "score", "above", "below"],
                        },
                        "the caller's place",
                    )
                },
                secured=True,
                errors=(403, 503),
            )
        },
        "/api/v1/admin/me": {
            "get": _operation(
                "Who the admin is (scope admin, on an account marked admin)",
                {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "user_id": {"type": "integer"},
                                "scope": {"type": "array", "items": {"type": "string"}},
                            },
                            "required": ["user_id", "scope"],
                        },
                        "the admin's id and scopes",
                    )
                },
                secured=True,
                errors=(403, 503),
            )
        },
        "/api/v1/admin/audit": {
            "get": _operation(
                "A user's audit trail, newest first, a page at a time (scope admin)",
                {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "user": {
                                    "type": "object",
                                    "properties": {
                                        "user_id": {"type": "integer"},
                                        "username": {"type": "string"},
                                    },
                                },
                                "entries": {"type": "array", "items": _ref("AuditEntry")},
                                "next_cursor": {"type": ["string", "null"]},
                            },
                            "required": ["user", "entries", "next_cursor"],
                        },
                        "a page of the user's attempts; next_cursor fetches the next",
                    )
                },
                parameters=[
                    {
                        **_query(
                            "user",
                            {"type": "string", "minLength": 1, "maxLength": 64},
                            "the username",
                        ),
                        "required": True,
                    },
                    _query(
                        "since",
                        {"type": "string", "maxLength": 40},
                        "unix seconds or an RFC 3339 time; default: the beginning",
                    ),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 500}, "1-500"),
                    _query(
                        "cursor",
                        {"type": "string", "pattern": r"^[0-9]{1,19}\.[0-2]\.[0-9]{1,19}$"},
                        "the previous page's next_cursor",
                    ),
                ],
                secured=True,
                errors=(400, 403, 404, 503),
            )
        },
        "/api/v1/ws": {
            "get": _operation(
                "The live feed: a WebSocket (see the README); a plain request is refused",
                {
                    "400": _json(_ref("Error"), "not a WebSocket handshake"),
                    "426": _json(_ref("Error"), "not a WebSocket handshake: upgrade required"),
                    "403": {"description": "Origin not allowed"},
                },
                errors=(401, 429),
            )
        },
        "/healthz": {
            "get": _operation(
                "Liveness",
                {
                    "200": _json(
                        {"type": "object", "properties": {"status": {"const": "ok"}}}, "alive"
                    )
                },
            )
        },
        "/readyz": {
            "get": _operation(
                "Readiness: every actor runs and every backend answers",
                {
                    "200": _json(_ref("Readiness"), "ready"),
                    "503": _json(_ref("Readiness"), "not ready"),
                },
            )
        },
        **_admin_paths(),
        "/api/v1/supervisor": {
            "get": _operation(
                "Each supervised actor: state, restarts, last error (its type alone without the "
                "ops token), inbox depth. Served on the operations listener; here only with "
                "ops.expose_on_public_port (else 404), then with the ops token if one is set",
                {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {"actors": {"type": "array"}},
                            "required": ["actors"],
                        },
                        "the actors",
                    )
                },
                errors=(401, 404),
            )
        },
        "/metrics": {
            "get": _operation(
                "Prometheus text format. Served on the operations listener; here only with "
                "ops.expose_on_public_port (else 404), then with the ops token if one is set",
                {
                    "200": {
                        "description": "the metrics",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
                errors=(401, 404),
            )
        },
        "/openapi.json": {
            "get": _operation("This document", {"200": _json({"type": "object"}, "OpenAPI 3.1")})
        },
        "/": {"get": _operation("The web page", page)},
        "/callback": {"get": _operation("The web page (the OAuth redirect URI)", page)},
        "/static/{version}/{name}": {
            "get": _operation(
                "The page's assets, cached a year under the current version",
                {"200": {"description": "the asset"}},
                parameters=[
                    {
                        "name": "version",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                    {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
                ],
                errors=(404,),
            )
        },
    }
    # Every request under /api/ counts against its address's limit (`http/ip_limit.py`).
    for path, operations in paths.items():
        if path.startswith(LIMITED_PREFIX):
            for operation in operations.values():
                operation["responses"].update(_errors(429))
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "Scoreboard",
            "version": "1",
            "description": "A real-time leaderboard server's REST API.",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": {
                **SCHEMAS,
                "Readiness": {
                    "type": "object",
                    "properties": {
                        "ready": {"type": "boolean"},
                        "actors_running": {"type": "boolean"},
                        "backends": {"type": "object"},
                        "limits_enabled": {"type": "boolean"},
                        "role": {"type": "string"},
                        "backend_mode": {"enum": ["real", "embedded"]},
                    },
                    "required": ["ready", "actors_running", "backends"],
                },
            },
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }


@blueprint.get("/openapi.json")
async def openapi() -> Response:
    svc = current_services()
    response = jsonify(openapi_document(svc.catalogue))
    response.headers["Cache-Control"] = "public, max-age=300"
    return response
