"""RFC 9068 access tokens: JWTs signed RS256 by the key ring, verified on every request.

Verification is pure (no I/O) and strict. Our issuer writes exactly three header parameters
(`alg`, `typ`, `kid`), so a token with any other one is refused: that covers `jwk`, `jku`,
`x5u` and `x5c` (keys are never taken from a token), `crit` and RFC 7797's `b64`. Only RS256 is
accepted, so `none` in any spelling and HS256 keyed with our public key fail before any key is
looked at, and the key comes from the ring by `kid`, never from the token.

Revocation (the jti / grant deny-list) is the caller's step after `verify_access_token`:
`AccessClaims` carries `jti` and `grant_id` for it.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from joserfc import jws, jwt
from joserfc.errors import JoseError

from scoreboard import clock
from scoreboard.auth.keys import SIGNING_ALGORITHM, KeyRing
from scoreboard.config import Config

TOKEN_TYPE = "at+jwt"
ACCEPTED_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt"})
ALLOWED_HEADER_PARAMETERS = frozenset({"alg", "typ", "kid"})
REQUIRED_CLAIMS = ("iss", "sub", "aud", "exp", "iat", "jti", "client_id", "scope")
# Ours are under 1 KiB; the cap keeps a hostile header from costing base64 and JSON work.
MAX_TOKEN_BYTES = 8 * 1024
# Clock skew allowance is at most 30 s whatever the configuration says: a longer one would
# keep an expired (possibly stolen) token alive longer than any honest clock drift needs.
MAX_LEEWAY_S = 30
USER_ID_PATTERN = re.compile(r"[1-9][0-9]{0,18}")
MAX_USER_ID = 2**63 - 1  # Postgres bigint

_RS256_ONLY = jws.JWSRegistry(algorithms=[SIGNING_ALGORITHM])


class InvalidToken(ValueError):
    """The token must not be accepted; `reason` is for logs, not for the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UnknownKey(InvalidToken):
    """The `kid` is not in this process's ring: forged, retired, or added by another process
    since the last `KeyRing.refresh` (the caller may refresh, rate-limited, and verify again)."""


@dataclass(frozen=True, slots=True)
class AccessClaims:
    user_id: int
    scope: frozenset[str]
    jti: str
    client_id: str
    grant_id: str | None
    expires_at: int
    issued_at: int


def issue_access_token(
    ring: KeyRing,
    *,
    config: Config,
    user_id: int,
    client_id: str,
    scope: str,
    grant_id: str | None = None,
    now: int | None = None,
) -> tuple[str, dict[str, Any]]:
    """A signed access token and its claims. `scope` is space-separated; `grant_id` names the
    authorization (code and refresh-token family) the token came from, for revocation."""
    issued_at = int(clock.now_s()) if now is None else now
    claims: dict[str, Any] = {
        "iss": config.issuer,
        "sub": str(user_id),
        "aud": config.auth.audience,
        "exp": issued_at + config.auth.access_token_ttl_s,
        "iat": issued_at,
        "nbf": issued_at,
        "jti": str(uuid.uuid4()),
        "client_id": client_id,
        "scope": scope,
    }
    if grant_id is not None:
        claims["grant_id"] = grant_id
    kid, key = ring.signer()
    header = {"alg": SIGNING_ALGORITHM, "typ": TOKEN_TYPE, "kid": kid}
    token = jwt.encode(header, claims, key, registry=_RS256_ONLY, default_type=None)
    return token, claims


def verify_access_token(
    ring: KeyRing, token: str, *, config: Config, now: int | None = None
) -> AccessClaims:
    """The claims of a valid access token, or `InvalidToken`. Does not consult the deny-list."""
    if len(token) > MAX_TOKEN_BYTES:
        raise InvalidToken("token too large")
    try:
        signed = jws.extract_compact(token.encode("ascii"), registry=_RS256_ONLY)
    except (JoseError, UnicodeEncodeError) as exc:
        raise InvalidToken(f"malformed token: {exc}") from None
    header = signed.headers()
    _check_header(header)
    key = ring.verifying_key(header["kid"])
    if key is None:
        raise UnknownKey("unknown kid")
    try:
        valid = jws.validate_compact(signed, key, registry=_RS256_ONLY)
    except JoseError as exc:
        raise InvalidToken(f"rejected: {exc}") from None
    if not valid:
        raise InvalidToken("bad signature")
    try:
        claims = json.loads(signed.payload)
    except ValueError:
        raise InvalidToken("payload is not JSON") from None
    if not isinstance(claims, dict):
        raise InvalidToken("payload is not a JSON object")
    return _check_claims(claims, config, int(clock.now_s()) if now is None else now)


def _check_header(header: object) -> None:
    if not isinstance(header, dict):
        raise InvalidToken("header is not a JSON object")
    unexpected = header.keys() - ALLOWED_HEADER_PARAMETERS
    if unexpected:
        raise InvalidToken(f"header parameter not allowed: {', '.join(sorted(unexpected))}")
    if header.get("alg") != SIGNING_ALGORITHM:
        raise InvalidToken(f"algorithm not allowed: {header.get('alg')!r}")
    typ = header.get("typ")
    if not isinstance(typ, str) or typ.lower() not in ACCEPTED_TOKEN_TYPES:
        raise InvalidToken(f"not an access token: typ {typ!r}")
    if not isinstance(header.get("kid"), str):
        raise InvalidToken("kid missing")


def _check_claims(claims: dict[str, Any], config: Config, now: int) -> AccessClaims:
    missing = [name for name in REQUIRED_CLAIMS if claims.get(name) is None]
    if missing:
        raise InvalidToken(f"claims missing: {', '.join(missing)}")
    registry = jwt.JWTClaimsRegistry(
        now=now,
        leeway=max(0, min(config.auth.leeway_s, MAX_LEEWAY_S)),
        iss={"essential": True, "value": config.issuer},
        aud={"essential": True, "value": config.auth.audience},
    )
    try:
        # Checks the types of iss, sub, aud, jti and the times, and exp, nbf, iat against now.
        registry.validate(claims)
    except JoseError as exc:
        raise InvalidToken(f"claim rejected: {exc}") from None
    sub, jti, client_id, scope = claims["sub"], claims["jti"], claims["client_id"], claims["scope"]
    if not USER_ID_PATTERN.fullmatch(sub) or int(sub) > MAX_USER_ID:
        raise InvalidToken("sub is not a user id")
    if not jti:
        raise InvalidToken("jti empty")
    if not isinstance(client_id, str) or not client_id:
        raise InvalidToken("client_id is not a non-empty string")
    if not isinstance(scope, str) or not scope.split():
        raise InvalidToken("scope is not a non-empty string")
    grant_id = claims.get("grant_id")
    if grant_id is not None and not isinstance(grant_id, str):
        raise InvalidToken("grant_id is not a string")
    return AccessClaims(
        user_id=int(sub),
        scope=frozenset(scope.split()),
        jti=jti,
        client_id=client_id,
        grant_id=grant_id,
        expires_at=int(claims["exp"]),
        issued_at=int(claims["iat"]),
    )
