"""The login form's token: binds a posted form to the authorization request it was shown for.

The token is `<kid>.<expires>.<mac>`, the MAC an HMAC-SHA256 (keyed by the key ring's
`form_secret` of that kid, so every process can check it) over the expiry and the authorization
parameters. A post whose parameters were altered, or that comes after the form expired, or that
no server rendered, is shown a fresh form instead of being processed. The `state` parameter,
echoed to the client with the code, protects the client against forged redirects (RFC 6749
§10.12); the token protects this server's form.
"""

from __future__ import annotations

import base64
import hmac
import json
import re
from collections.abc import Mapping

from scoreboard import clock
from scoreboard.auth.keys import KeyRing

EXPIRES_PATTERN = re.compile(r"[0-9]{1,12}")
AUTHORIZE_PARAMETERS = (
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "code_challenge",
    "code_challenge_method",
)


def _mac(secret: bytes, expires: int, params: Mapping[str, str]) -> str:
    message = json.dumps(
        [expires, [params.get(name, "") for name in AUTHORIZE_PARAMETERS]], separators=(",", ":")
    ).encode("utf-8")
    digest = hmac.new(secret, message, "sha256").digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def form_token(ring: KeyRing, params: Mapping[str, str], ttl_s: int, now: int | None = None) -> str:
    kid, _key = ring.signer()
    secret = ring.form_secret(kid)
    assert secret is not None, "the signing key is active"
    expires = (int(clock.now_s()) if now is None else now) + ttl_s
    return f"{kid}.{expires}.{_mac(secret, expires, params)}"


def form_token_valid(
    ring: KeyRing, token: str, params: Mapping[str, str], now: int | None = None
) -> bool:
    kid, _, rest = token.partition(".")
    expires_text, _, mac = rest.partition(".")
    secret = ring.form_secret(kid)
    # ASCII digits only: `str.isdigit` also admits "²", which `int` refuses.
    if secret is None or not EXPIRES_PATTERN.fullmatch(expires_text):
        return False
    expires = int(expires_text)
    if expires < (int(clock.now_s()) if now is None else now):
        return False
    return hmac.compare_digest(
        mac.encode("ascii", "replace"), _mac(secret, expires, params).encode()
    )
