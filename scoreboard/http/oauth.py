"""The OAuth endpoints (docs/api.md): authorize (with its login form), token, revoke, userinfo,
and the metadata (RFC 8414) and JWKS documents.

The HTML pages are plain server-rendered forms: every value is escaped, there is no script, and
they may not be framed. An unknown client or redirect URI gets an error page, never a redirect;
other authorization errors go back to the client's (verified) redirect URI, RFC 6749 §4.1.2.1.
"""

from __future__ import annotations

import functools
import html
import re
from typing import Any

import trio
from authlib.oauth2.rfc6749.errors import InsecureTransportError
from authlib.oauth2.rfc6749.util import extract_basic_authorization
from quart import Blueprint, Response, current_app, jsonify, request
from werkzeug.datastructures import MultiDict

from scoreboard import clock, metrics
from scoreboard.adapters.interfaces import BackendUnavailable, FailureDelay
from scoreboard.auth.clients import CLIENT_ID_PATTERN, DEFAULT_SCOPES, SCOPES, secret_matches
from scoreboard.auth.login_form import AUTHORIZE_PARAMETERS, form_token, form_token_valid
from scoreboard.auth.users import authenticate_user
from scoreboard.http import revocation
from scoreboard.http.errors import RequestRejected
from scoreboard.http.limits import over_limit
from scoreboard.http.oauth_server import (
    TOKEN_AUTH_METHODS,
    AuthorizationServer,
    OAuthRequest,
)
from scoreboard.http.oauth_server import Response as OAuthResponse
from scoreboard.http.requests import authenticate, bearer_token, client_ip, json_body
from scoreboard.http.services import Services, current_services
from scoreboard.records import normalized_identity

blueprint = Blueprint("oauth", __name__)

AUTHORIZE_PATH = "/api/v1/oauth/authorize"
TOKEN_PATH = "/api/v1/oauth/token"
REVOKE_PATH = "/api/v1/oauth/revoke"
USERINFO_PATH = "/api/v1/oauth/userinfo"
JWKS_PATH = "/.well-known/jwks.json"
# Longer ones cannot be an account (32 at most), so they are not worth a rate-limit key.
MAX_USERNAME_CHARS = 64
PAGE_HEADERS = {
    "Content-Type": "text/html; charset=utf-8",
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
ECHOED_PARAMETERS = frozenset({"response_type", "grant_type", "redirect_uri"})
# The Deny button's field: the client then gets `access_denied` (RFC 6749 §4.1.2.1).
DECISION_FIELD = "decision"
DENY = "deny"
_VSCHAR = re.compile(r"[\x20-\x7e]*")
_ECHOED_PARAMETER = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]*")


class OAuthRejected(Exception):
    """An RFC 6749 §5.2 error, rendered as `{"error", "error_description"}`."""

    def __init__(
        self, status: int, error: str, description: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description
        self.headers = headers or {}


@blueprint.errorhandler(OAuthRejected)
async def rejected(exc: OAuthRejected) -> Response:
    return _json(
        exc.status,
        {"error": exc.error, "error_description": exc.description},
        {**NO_STORE, **exc.headers},
    )


def _server() -> AuthorizationServer:
    found: AuthorizationServer = current_app.config["OAUTH_SERVER"]
    return found


def _json(status: int, body: Any, headers: dict[str, str]) -> Response:
    response = jsonify(body)
    response.status_code = status
    for name, value in headers.items():
        response.headers[name] = value
    return response


def _unusable_parameter(params: MultiDict[str, str]) -> str | None:
    """The first parameter outside RFC 6749's grammar that Authlib would choke on: every value
    is printable ASCII (Appendix A), and those Authlib repeats in an error description may not
    hold `"` or `\\` there (§5.2; it raises instead of answering)."""
    for name, value in params.items(multi=True):
        allowed = _ECHOED_PARAMETER if name in ECHOED_PARAMETERS else _VSCHAR
        if not allowed.fullmatch(value):
            return name
    return None


def _oauth_request(svc: Services, params: MultiDict[str, str]) -> OAuthRequest:
    unusable = _unusable_parameter(params)
    if unusable is not None:
        raise OAuthRejected(
            400, "invalid_request", f"{unusable[:64]} holds characters it may not (RFC 6749)"
        )
    # The public origin, not the address Hypercorn saw: behind a TLS proxy that is what the
    # client used. OAuth needs TLS (RFC 9700): Authlib refuses plain http except on loopback.
    try:
        return OAuthRequest(
            request.method, svc.public_origin + request.path, request.headers, params
        )
    except InsecureTransportError:
        raise OAuthRejected(
            400,
            "insecure_transport",
            "OAuth needs https: set SCOREBOARD_PUBLIC_ORIGIN to the https origin clients use",
        ) from None


def _ip(svc: Services) -> str:
    return client_ip(request.remote_addr, request.headers, svc.config.server.trusted_proxies)


def sign_in_failures_key(ip: str, username: str) -> str:
    """The key of a (username, IP) pair's failed sign-ins. The IP comes first and holds no
    `|`, so no crafted username can name another address's pair."""
    return f"login:{ip}|{normalized_identity(username)}"


async def _sign_in_delay(svc: Services, username: str) -> int:
    """The progressive delay of this (username, IP) pair: 0 if a password check may run now
    (it counts as a failure until `_signed_in` forgets them), else the seconds to wait."""
    if not svc.config.limits.enabled:
        return 0
    oauth = svc.config.oauth
    delay = FailureDelay(
        free_failures=oauth.login_failures_before_delay,
        max_delay_ms=oauth.login_failure_delay_max_s * 1000,
        forget_after_ms=oauth.login_failures_forgotten_after_s * 1000,
    )
    return await svc.guard.admit_after_failures(
        sign_in_failures_key(_ip(svc), username), now_ms=clock.now_ms(), delay=delay
    )


async def _signed_in(svc: Services, username: str) -> None:
    if svc.config.limits.enabled:
        await svc.guard.forget_failures(sign_in_failures_key(_ip(svc), username))


# -- the authorization endpoint and its login form

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:24rem;margin:3rem auto;padding:0 1rem}}
label,input,button{{display:block;width:100%;margin:.4rem 0;box-sizing:border-box}}
.error{{color:#b00020}}</style></head>
<body><h1>{title}</h1>
{content}
</body></html>
"""


def _page(title: str, content: str, status: int, headers: dict[str, str] | None = None) -> Response:
    body = _PAGE.format(title=html.escape(title), content=content)
    return Response(body, status=status, headers={**PAGE_HEADERS, **(headers or {})})


def _login_page(
    svc: Services,
    params: MultiDict[str, str],
    *,
    error: str | None = None,
    username: str = "",
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    first = params.to_dict()
    token = form_token(svc.keyring, first, svc.config.oauth.login_form_ttl_s)
    hidden = "".join(
        f'<input type="hidden" name="{name}" value="{html.escape(first[name])}">'
        for name in AUTHORIZE_PARAMETERS
        if name in first
    )
    scope = html.escape(first.get("scope") or " ".join(DEFAULT_SCOPES))
    content = (
        f"<p><strong>{html.escape(first.get('client_id', ''))}</strong> asks to use your "
        f"scoreboard account (scope: {scope}).</p>"
        + (f'<p class="error" role="alert">{html.escape(error)}</p>' if error else "")
        + f'<form method="post" action="{AUTHORIZE_PATH}">{hidden}'
        f'<input type="hidden" name="form_token" value="{html.escape(token)}">'
        '<label>Username <input name="username" autocomplete="username" required '
        f'value="{html.escape(username)}"></label>'
        '<label>Password <input name="password" type="password" '
        'autocomplete="current-password" required></label>'
        '<button type="submit">Sign in</button>'
        # No password needed to say no; `formnovalidate` lets the empty form through.
        f'<button type="submit" name="{DECISION_FIELD}" value="{DENY}" formnovalidate>'
        "Deny</button></form>"
    )
    return _page("Sign in", content, status, headers)


def _authorization_outcome(outcome: OAuthResponse) -> Response:
    """A redirect to the client (a code, or an error it may see), or an error page."""
    status, body, headers = outcome
    if status == 302:
        return Response("", status=302, headers={**dict(headers), **NO_STORE})
    error = body.get("error", "invalid_request") if isinstance(body, dict) else "invalid_request"
    description = body.get("error_description", "") if isinstance(body, dict) else ""
    content = (
        f'<p class="error" role="alert">The sign-in request is not valid: '
        f"<code>{html.escape(error)}</code>.</p><p>{html.escape(description)}</p>"
        "<p>Go back to the application you came from and try again.</p>"
    )
    return _page("Sign-in request refused", content, status if status >= 400 else 400)


@blueprint.get(AUTHORIZE_PATH)
async def authorize_form() -> Response:
    svc, server = current_services(), _server()
    params = MultiDict(list(request.args.items(multi=True)))
    outcome = await trio.to_thread.run_sync(server.authorize, _oauth_request(svc, params), None)
    if outcome is not None:
        return _authorization_outcome(outcome)
    return _login_page(svc, params)


@blueprint.post(AUTHORIZE_PATH)
async def authorize_login() -> Response:
    svc, server = current_services(), _server()
    form = await request.form
    params = MultiDict(
        [(name, value) for name, value in form.items(multi=True) if name in AUTHORIZE_PARAMETERS]
    )
    oauth_request = _oauth_request(svc, params)
    outcome = await trio.to_thread.run_sync(server.authorize, oauth_request, None)
    if outcome is not None:
        return _authorization_outcome(outcome)
    if not form_token_valid(svc.keyring, form.get("form_token", ""), params.to_dict()):
        return _login_page(
            svc, params, error="This sign-in form has expired. Please sign in again.", status=400
        )
    if form.get(DECISION_FIELD) == DENY:
        return _authorization_outcome(await trio.to_thread.run_sync(server.deny, oauth_request))
    username, password = form.get("username", ""), form.get("password", "")
    ip_limit = [(f"login:ip:{_ip(svc)}", svc.config.oauth.login_attempts_per_minute_per_ip)]
    try:
        # Every attempt counts against its address; only a password check that fails counts
        # against its (username, address) pair, so nobody can hold an account back elsewhere.
        wait_s = await over_limit(svc, ip_limit)
        user = None
        if not wait_s and len(username) <= MAX_USERNAME_CHARS:
            wait_s = await _sign_in_delay(svc, username)
            if not wait_s:
                user = await authenticate_user(svc.store, svc.passwords, username, password)
                if user is not None:
                    await _signed_in(svc, username)
    except BackendUnavailable:
        return _page(
            "Try again later",
            "<p>Sign-in is unavailable for a moment.</p>",
            503,
            {"Retry-After": "1"},
        )
    if wait_s:
        metrics.RATE_LIMITED.labels("sign_in").inc()
        return _login_page(
            svc,
            params,
            username=username,
            status=429,
            headers={"Retry-After": str(wait_s)},
            error=f"Too many sign-in attempts. Try again in {wait_s} s.",
        )
    if user is None:
        return _login_page(
            svc, params, username=username, status=401, error="Wrong username or password."
        )
    outcome = await trio.to_thread.run_sync(server.authorize, oauth_request, user)
    assert outcome is not None, "an authorization for a user always answers"
    return _authorization_outcome(outcome)


# -- token and revocation endpoints


async def _token_endpoint_params(svc: Services) -> MultiDict[str, str]:
    """The body, form-encoded (RFC 6749) or JSON (as docs/api.md allows), once the rate limit admits
    the request: per client IP, or per client for an authenticated confidential client."""
    if request.mimetype == "application/x-www-form-urlencoded":
        form = await request.form
        params: MultiDict[str, str] = MultiDict(list(form.items(multi=True)))
    elif request.mimetype == "application/json":
        try:
            body = await json_body(request)
        except RequestRejected as exc:
            raise OAuthRejected(400, "invalid_request", exc.message or exc.error) from None
        if not isinstance(body, dict) or not all(isinstance(v, str) for v in body.values()):
            raise OAuthRejected(400, "invalid_request", "the JSON body is an object of strings")
        params = MultiDict(body)
    else:
        raise OAuthRejected(
            400,
            "invalid_request",
            "the body must be application/x-www-form-urlencoded or application/json",
        )
    oauth = svc.config.oauth
    try:
        client_id = await _confidential_client(svc, params)
        if client_id is not None:
            limit = (f"token:client:{client_id}", oauth.token_requests_per_minute_per_client)
        else:
            limit = (f"token:ip:{_ip(svc)}", oauth.token_requests_per_minute_per_ip)
        wait_s = await over_limit(svc, [limit])
    except BackendUnavailable:
        raise OAuthRejected(
            503, "temporarily_unavailable", "try again", {"Retry-After": "1"}
        ) from None
    if wait_s:
        metrics.RATE_LIMITED.labels("token_requests").inc()
        raise OAuthRejected(
            429,
            "rate_limit_exceeded",
            f"too many requests; retry in {wait_s} s",
            {"Retry-After": str(wait_s)},
        )
    return params


async def _confidential_client(svc: Services, params: MultiDict[str, str]) -> str | None:
    """The id of the confidential client this request authenticates as (Basic or
    `client_secret_post`, checked as Authlib will check them), or None. A client id alone
    proves nothing, so only an authenticated client has a limit of its own: anyone else
    shares their address's, and a flood from one address never reaches other users. (A
    well-formed client id with a secret costs one look-up by primary key before the limit.)"""
    try:
        basic: tuple[str | None, str | None] = extract_basic_authorization(request.headers)
    except UnicodeDecodeError:
        raise OAuthRejected(
            401,
            "invalid_client",
            "the Basic credentials are not UTF-8",
            {"WWW-Authenticate": 'Basic realm="scoreboard"'},
        ) from None
    client_id, secret = basic
    if not (client_id and secret):
        client_id, secret = params.get("client_id"), params.get("client_secret")
    if not (client_id and secret) or not CLIENT_ID_PATTERN.fullmatch(client_id):
        return None
    record = await svc.store.get_client(client_id)
    if record is None or record.client_type != "confidential" or not secret_matches(record, secret):
        return None
    return client_id


def _token_endpoint_response(outcome: OAuthResponse) -> Response:
    status, body, header_list = outcome
    headers = {**dict(header_list), **NO_STORE}
    if isinstance(body, dict) and body.get("error") == "invalid_client":
        # RFC 6749 §5.2: 401 with a challenge when the client tried the Authorization header;
        # otherwise 400 (Authlib answers 401 whenever Basic was one of the methods allowed).
        if "Authorization" in request.headers:
            status = 401
            headers.setdefault("WWW-Authenticate", 'Basic realm="scoreboard"')
        else:
            status = 400
            headers.pop("WWW-Authenticate", None)
    return _json(status, body, headers)


@blueprint.post(TOKEN_PATH)
async def token() -> Response:
    svc, server = current_services(), _server()
    params = await _token_endpoint_params(svc)
    if not params.get("grant_type"):
        raise OAuthRejected(400, "invalid_request", "grant_type is required")
    outcome = await trio.to_thread.run_sync(server.token, _oauth_request(svc, params))
    return _token_endpoint_response(outcome)


@blueprint.post(REVOKE_PATH)
async def revoke() -> Response:
    svc, server = current_services(), _server()
    params = await _token_endpoint_params(svc)
    outcome = await trio.to_thread.run_sync(server.revocation, _oauth_request(svc, params))
    return _token_endpoint_response(outcome)


# -- userinfo and the published documents


@blueprint.get(USERINFO_PATH)
async def userinfo() -> Response:
    svc = current_services()
    claims = authenticate(svc, bearer_token(request), None)
    try:
        user = await svc.store.get_user(claims.user_id)
    except BackendUnavailable:
        raise OAuthRejected(
            503, "temporarily_unavailable", "try again", {"Retry-After": "1"}
        ) from None
    if user is None or user.disabled:
        raise OAuthRejected(
            401,
            "invalid_token",
            "the account no longer exists",
            {"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    # Email addresses are not verified by this server (there is no confirmation step).
    return _json(
        200,
        {
            "sub": str(user.user_id),
            "username": user.username,
            "email": user.email,
            "email_verified": False,
        },
        NO_STORE,
    )


@blueprint.get("/.well-known/oauth-authorization-server")
async def metadata() -> Response:
    svc = current_services()
    origin = svc.public_origin
    return _json(
        200,
        {
            "issuer": svc.config.issuer,
            "authorization_endpoint": origin + AUTHORIZE_PATH,
            "token_endpoint": origin + TOKEN_PATH,
            "revocation_endpoint": origin + REVOKE_PATH,
            "userinfo_endpoint": origin + USERINFO_PATH,
            "jwks_uri": origin + JWKS_PATH,
            "scopes_supported": list(SCOPES),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": TOKEN_AUTH_METHODS,
            "revocation_endpoint_auth_methods_supported": TOKEN_AUTH_METHODS,
            "authorization_response_iss_parameter_supported": False,
        },
        {"Cache-Control": "public, max-age=300"},
    )


@blueprint.get(JWKS_PATH)
async def jwks() -> Response:
    # Short caching: a rotated-in key must reach verifiers before it signs (key_activation_s).
    return _json(200, current_services().keyring.jwks(), {"Cache-Control": "public, max-age=10"})


def install(app: Any, services: Services) -> None:
    """Register the blueprint and the application's authorization server."""
    app.config["OAUTH_SERVER"] = AuthorizationServer(
        services,
        revoke=functools.partial(revocation.revoke, services),
        announce=functools.partial(revocation.announce, services),
    )
    app.register_blueprint(blueprint)
