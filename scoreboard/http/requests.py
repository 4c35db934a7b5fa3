"""Reading what a request carries: client IP, bearer token, JSON body — strictly."""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from quart import Request
from werkzeug.datastructures import Headers, MultiDict
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.http import parse_options_header

from scoreboard import json_codec
from scoreboard.auth.tokens import AccessClaims, InvalidToken
from scoreboard.http.errors import (
    RequestRejected,
    insufficient_scope,
    invalid_request,
    invalid_token,
)
from scoreboard.http.services import Services

MAX_BODY_BYTES = 4096
# No request of the contract nests deeper than 3; the parser's recursion (and whatever walks
# the result) must never see the 1,000-odd levels that fit in 4 KiB.
MAX_JSON_DEPTH = 32
# Escapes that may decode to NUL or half a surrogate pair: then the parsed strings are checked.
_SUSPECT_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")
# A JSON string (an unterminated one runs to the end), or a bracket: scanned in one linear pass.
_JSON_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"?|[\[\]{}]', re.DOTALL)
JSON_MEDIA_TYPE = "application/json"
AUDITED_HEADERS = ("user-agent", "origin", "referer", "accept-language", "x-forwarded-for")

RequestHeaders = Headers | Mapping[str, str]
"""A request's headers as the helpers here read them, always by lowercase name: werkzeug's
`Headers` (Quart's requests, the WebSocket handshake), or the lean perform routes' plain dict
(`first_values`), which costs a fraction of building `Headers` for every request."""


def first_values(fields: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Each header's first value by its lowercase name: what `Headers.get` answers, without
    `Headers` (whose every lookup lowercases each stored name in turn, and raises to answer
    `in` for a header that is absent)."""
    values: dict[str, str] = {}
    for name, value in fields:
        values.setdefault(name.lower(), value)
    return values


def scope_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """`first_values` of an ASGI scope's raw headers."""
    return first_values((name.decode("latin-1"), value.decode("latin-1")) for name, value in raw)


def client_ip(
    remote_addr: str | None, headers: RequestHeaders, trusted_proxies: tuple[str, ...]
) -> str:
    """The peer's address; behind a trusted proxy, the last untrusted hop of X-Forwarded-For."""
    peer = remote_addr or ""
    if not trusted_proxies or not _is_trusted(peer, trusted_proxies):
        return peer
    forwarded: str = headers.get("x-forwarded-for", "")
    hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _is_trusted(hop, trusted_proxies):
            return hop
    return hops[0] if hops else peer


def _is_trusted(address: str, trusted: tuple[str, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(net, strict=False) for net in trusted)


def audited_headers(headers: RequestHeaders) -> dict[str, str]:
    audited = {}
    for name in AUDITED_HEADERS:
        value = headers.get(name)
        if value is not None:
            audited[name] = value[:512]
    return audited


def bearer_token(request: Request) -> str:
    return bearer_from(
        request.headers.get("Authorization", ""), token_in_url="access_token" in request.args
    )


def bearer_from(authorization: str, *, token_in_url: bool) -> str:
    """The token of an `Authorization: Bearer` header; tokens in the URL are refused."""
    if token_in_url:
        raise invalid_token("tokens are not accepted in the URL")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise invalid_token("a bearer access token is required")
    return token.strip()


def authenticate(services: Services, token: str, scope: str | None) -> AccessClaims:
    try:
        claims = services.verified_tokens.verify(token)
    except InvalidToken as exc:
        raise invalid_token(str(exc)) from None
    # Never cached: a revocation holds from the moment this process hears of it.
    if services.deny_list.is_revoked(claims):
        raise invalid_token("the token has been revoked")
    if scope is not None and scope not in claims.scope:
        raise insufficient_scope(scope)
    return claims


async def json_body(request: Request) -> Any:
    """The request's JSON body: 415 unless JSON, 413 over 4 KiB, 400 if it does not parse."""
    return await read_json(
        request.headers.get("Content-Type"), request.content_length, lambda: request_data(request)
    )


async def request_data(request: Request) -> bytes:
    """A Quart request's body, within the cap (413 past it)."""
    try:
        raw = await request.get_data(cache=False)
    except RequestEntityTooLarge:
        raise body_too_large() from None
    return raw.encode() if isinstance(raw, str) else raw


async def read_json(
    content_type: str | None,
    content_length: int | None,
    read_body: Callable[[], Awaitable[bytes]],
) -> Any:
    """A JSON request body, checked the same way whichever server layer received it: 415
    unless the media type is JSON and 413 when the declared length is over 4 KiB, both from
    the head before any of the body is read; then 413 if the body itself is over 4 KiB and
    400 unless it is strict JSON (UTF-8, no NaN or Infinity: `scoreboard.json_codec`).
    `read_body` reads the whole body, raising `body_too_large()` once it passes the cap."""
    # Nearly every client sends exactly this: then there are no parameters to parse.
    if content_type != JSON_MEDIA_TYPE and (
        parse_options_header(content_type or "")[0].lower() != JSON_MEDIA_TYPE
    ):
        raise RequestRejected(415, "invalid_request", "the body must be application/json")
    if content_length is not None and content_length > MAX_BODY_BYTES:
        raise body_too_large()
    raw = await read_body()
    if len(raw) > MAX_BODY_BYTES:
        raise body_too_large()
    return decode_body(raw)


def decode_body(raw: bytes) -> Any:
    """A JSON request body (at most 4 KiB, already read) as parsed by `parse_json`, or 400; its
    strings, which may end up in the store, are text that PostgreSQL keeps."""
    try:
        value = parse_json(raw)
    except ValueError as exc:
        raise invalid_request(f"the body is not valid JSON: {exc}") from None
    if _SUSPECT_ESCAPE.search(raw) and not _storable(value):
        raise invalid_request("a string of the body holds NUL or an unpaired surrogate")
    return value


def parse_json(raw: bytes) -> Any:
    """A JSON document from a request body or a WebSocket frame; `ValueError` saying why not.

    Strict JSON as `scoreboard.json_codec` reads it (UTF-8 only, no NaN or Infinity, which are
    not JSON: RFC 8259), and at most `MAX_JSON_DEPTH` levels of arrays and objects."""
    # Fewer opening brackets than the limit cannot nest past it: the scan is for the rare rest.
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and json_depth(raw) > MAX_JSON_DEPTH:
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json_codec.loads(raw)
    except json_codec.JSONDecodeError:
        if not _SUSPECT_ESCAPE.search(raw):
            raise ValueError("malformed or not UTF-8") from None
    # orjson refuses a lone surrogate escape outright; read so, the document would be malformed,
    # not an action with a bad field. The standard library reads it, and the caller refuses the
    # string by name (`decode_body`, the catalogue's checks of action data).
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_not_json)
    except ValueError:
        raise ValueError("malformed or not UTF-8") from None


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def json_depth(raw: bytes) -> int:
    """How deep arrays and objects nest in `raw`, brackets inside strings aside (for any input:
    it does not check that `raw` is JSON)."""
    depth = deepest = 0
    for token in _JSON_TOKEN.finditer(raw):
        bracket = token.group()
        if bracket in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        elif bracket in (b"]", b"}"):
            depth -= 1
    return deepest


def _storable(value: Any) -> bool:
    """Every string in `value` (keys too) is UTF-8 text without NUL (RFC 8259 §8.2 leaves an
    unpaired surrogate's meaning open; PostgreSQL stores neither)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return "\x00" not in value
    if isinstance(value, dict):
        return all(_storable(key) and _storable(item) for key, item in value.items())
    if isinstance(value, list):
        return all(_storable(item) for item in value)
    return True


def query_args(args: MultiDict[str, str], allowed: frozenset[str]) -> MultiDict[str, str]:
    """`args` if it holds only `allowed` parameters, each at most once; else a 400."""
    if unknown := sorted(set(args) - allowed):
        raise invalid_request(f"unknown parameter(s): {', '.join(unknown)[:200]}")
    if any(len(args.getlist(name)) > 1 for name in args):
        raise invalid_request("each parameter may be given once")
    return args


def body_too_large() -> RequestRejected:
    return RequestRejected(413, "invalid_request", f"the body exceeds {MAX_BODY_BYTES} bytes")
