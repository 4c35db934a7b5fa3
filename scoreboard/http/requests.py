"""Reading what a request carries: client IP, bearer token, JSON body — strictly."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from quart import Request
from werkzeug.datastructures import Headers
from werkzeug.exceptions import RequestEntityTooLarge

from scoreboard.auth.tokens import AccessClaims, InvalidToken, verify_access_token
from scoreboard.http.errors import (
    RequestRejected,
    insufficient_scope,
    invalid_request,
    invalid_token,
)
from scoreboard.http.services import Services

MAX_BODY_BYTES = 4096
AUDITED_HEADERS = ("user-agent", "origin", "referer", "accept-language", "x-forwarded-for")


def client_ip(remote_addr: str | None, headers: Headers, trusted_proxies: tuple[str, ...]) -> str:
    """The peer's address; behind a trusted proxy, the last untrusted hop of X-Forwarded-For."""
    peer = remote_addr or ""
    if not trusted_proxies or not _is_trusted(peer, trusted_proxies):
        return peer
    forwarded: str = headers.get("X-Forwarded-For", "")
    hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _is_trusted(hop, trusted_proxies):
            return hop
    return hops[0] if hops else peer


def address_key(address: str) -> str:
    """What a client address counts as for per-address caps: an IPv4 address itself (also when
    it arrives IPv4-mapped on a dual-stack socket), an IPv6 address its /64, the smallest
    allocation a subscriber gets, so that its 2^64 addresses do not each get a cap of their own.
    Anything else (not an IP address) counts as itself."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


def _is_trusted(address: str, trusted: tuple[str, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(net, strict=False) for net in trusted)


def audited_headers(headers: Headers) -> dict[str, str]:
    return {name: headers[name][:512] for name in AUDITED_HEADERS if name in headers}


def bearer_token(request: Request) -> str:
    if "access_token" in request.args:
        raise invalid_token("tokens are not accepted in the URL")
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise invalid_token("a bearer access token is required")
    return token.strip()


def authenticate(services: Services, token: str, scope: str | None) -> AccessClaims:
    try:
        claims = verify_access_token(services.keyring, token, config=services.config)
    except InvalidToken as exc:
        raise invalid_token(str(exc)) from None
    if services.revocations.is_revoked(claims):
        raise invalid_token("the token has been revoked")
    if scope is not None and scope not in claims.scope:
        raise insufficient_scope(scope)
    return claims


async def json_body(request: Request) -> Any:
    """The request's JSON body: 415 unless JSON, 413 over 4 KiB, 400 if it does not parse."""
    mimetype = request.mimetype
    if mimetype != "application/json":
        raise RequestRejected(415, "invalid_request", "the body must be application/json")
    length = request.content_length
    if length is not None and length > MAX_BODY_BYTES:
        raise RequestRejected(413, "invalid_request", f"the body exceeds {MAX_BODY_BYTES} bytes")
    try:
        raw = await request.get_data(cache=False)
    except RequestEntityTooLarge:
        raise RequestRejected(
            413, "invalid_request", f"the body exceeds {MAX_BODY_BYTES} bytes"
        ) from None
    if len(raw) > MAX_BODY_BYTES:
        raise RequestRejected(413, "invalid_request", f"the body exceeds {MAX_BODY_BYTES} bytes")
    try:
        # UTF-8 only (contract preamble; `json.loads` would guess UTF-16 or UTF-32 from bytes),
        # and no NaN or Infinity, which are not JSON (RFC 8259).
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        return json.loads(text, parse_constant=_not_json)
    except (ValueError, UnicodeDecodeError):
        raise invalid_request("the body is not valid JSON") from None


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")
