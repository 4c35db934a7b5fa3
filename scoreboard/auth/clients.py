"""OAuth clients: the built-in `scoreboard-web`, operator-registered ones, and their secrets.

`scoreboard-web` (the bundled web page) is built in rather than stored: its redirect URI is
`<public origin>/callback`, and the public origin is runtime configuration (and, on port 0, only
known once the server listens), so it is derived at request time and never goes stale in a
table. It exists from the first start (and after `migrate`), cannot be removed, and `clients
list` shows it.

A confidential client's secret is 32 random bytes, shown once when the client is added; the
store keeps its SHA-256 (a high-entropy secret needs no slow hash), compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from urllib.parse import urlsplit

from scoreboard import clock
from scoreboard.records import ClientType, OAuthClientRecord, UserRecord

WEB_CLIENT_ID = "scoreboard-web"
# Every scope there is. `admin` (the operators' endpoints) is granted only to users marked
# admin (`scoreboard users grant-admin`), and only when asked for: a client that asks for no
# scope gets its default scopes, and a user who is not an admin asking for `admin` gets a token
# without it (the token response's `scope` says so), or `invalid_scope` if nothing else was
# asked, as for any scope the client may not have.
SCOPES = ("read", "write", "admin")
DEFAULT_SCOPES = ("read", "write")
ADMIN_SCOPE = "admin"
CLIENT_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{2,63}")
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})


class InvalidClient(ValueError):
    """A client registration the operator must correct; the message says what."""


def web_client(public_origin: str) -> OAuthClientRecord:
    return OAuthClientRecord(
        client_id=WEB_CLIENT_ID,
        client_type="public",
        secret_hash=None,
        redirect_uris=(f"{public_origin.rstrip('/')}/callback",),
        scopes=SCOPES,
        name="Scoreboard web page (built in)",
        created_at_ms=0,
    )


def scope_for_user(scope: str, user: UserRecord) -> str:
    """The scopes of `scope` (space-separated) this user may be granted: `admin` only to an
    admin. Empty if none is left."""
    return " ".join(
        name for name in scope.split() if name != ADMIN_SCOPE or (user.admin and not user.disabled)
    )


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def secret_matches(client: OAuthClientRecord, secret: str) -> bool:
    if client.secret_hash is None:
        return False
    return hmac.compare_digest(client.secret_hash, hash_secret(secret))


def new_client(
    client_id: str,
    client_type: ClientType,
    redirect_uris: list[str],
    scopes: list[str] | None = None,
    name: str = "",
) -> tuple[OAuthClientRecord, str | None]:
    """A validated registration and, for a confidential client, its secret (shown once)."""
    if client_id == WEB_CLIENT_ID:
        raise InvalidClient(f"{WEB_CLIENT_ID} is built in")
    if not CLIENT_ID_PATTERN.fullmatch(client_id):
        raise InvalidClient(
            "a client id is 3 to 64 of A-Z, a-z, 0-9, _ . - (not starting with one of _ . -)"
        )
    if not redirect_uris:
        raise InvalidClient("a client needs at least one redirect URI")
    for uri in redirect_uris:
        check_redirect_uri(uri)
    chosen = list(scopes or DEFAULT_SCOPES)
    if unknown := set(chosen) - set(SCOPES):
        raise InvalidClient(f"unknown scope(s): {', '.join(sorted(unknown))}")
    secret = secrets.token_urlsafe(32) if client_type == "confidential" else None
    record = OAuthClientRecord(
        client_id=client_id,
        client_type=client_type,
        secret_hash=None if secret is None else hash_secret(secret),
        redirect_uris=tuple(redirect_uris),
        scopes=tuple(s for s in SCOPES if s in chosen),
        name=name,
        created_at_ms=clock.now_ms(),
    )
    return record, secret


def check_redirect_uri(uri: str) -> None:
    """RFC 9700 §2.1: an absolute https URI (http only on a loopback host), no fragment; it is
    then matched exactly, character for character."""
    parts = urlsplit(uri)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise InvalidClient(f"{uri!r}: a redirect URI is an absolute http(s) URI")
    if parts.scheme == "http" and (parts.hostname or "") not in {"localhost", "127.0.0.1", "::1"}:
        raise InvalidClient(f"{uri!r}: plain http only for a loopback host")
    if parts.fragment or "#" in uri:
        raise InvalidClient(f"{uri!r}: a redirect URI has no fragment")
    if parts.username is not None or parts.password is not None:
        raise InvalidClient(f"{uri!r}: a redirect URI has no user information")
