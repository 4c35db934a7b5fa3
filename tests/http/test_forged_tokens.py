"""The forged-token battery at the API (401) and on the WebSocket (4401): what the verifier
refuses (tests/auth/test_tokens.py) is refused where the tokens are used, too."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
import trio
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket_url

from scoreboard.auth.tokens import REQUIRED_CLAIMS, issue_access_token
from scoreboard.server import ServerHandle
from tests.auth.test_tokens import _b64, _hmac_signer, forge
from tests.http.conftest import new_player

ATTACKER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _attacker_sign(data: bytes) -> bytes:
    return ATTACKER_KEY.sign(data, padding.PKCS1v15(), hashes.SHA256())


def forgeries(server: ServerHandle, user_id: int) -> dict[str, str]:
    """Every forged token of the acceptance list, by name."""
    assert server.services is not None
    ring, config = server.services.keyring, server.services.config
    kid, key = ring.signer()
    private = key.private_key
    assert private is not None, "the signing key is ours: it has its private half"

    def ours(data: bytes) -> bytes:
        return private.sign(data, padding.PKCS1v15(), hashes.SHA256())

    _token, claims = issue_access_token(
        ring, config=config, user_id=user_id, client_id="scoreboard-web", scope="read write"
    )
    now = int(time.time())
    header: dict[str, Any] = {"alg": "RS256", "typ": "at+jwt", "kid": kid}
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    attacker_numbers = ATTACKER_KEY.public_key().public_numbers()
    attacker_jwk = {
        "kty": "RSA",
        "n": _b64(attacker_numbers.n.to_bytes(256, "big")),
        "e": _b64(attacker_numbers.e.to_bytes(3, "big")),
    }
    tokens = {
        f"alg={alg}": forge({**header, "alg": alg}, claims, None)
        for alg in ("none", "None", "NONE")
    }
    tokens |= {
        "HS256 keyed with our RSA public key": forge(
            {**header, "alg": "HS256"}, claims, _hmac_signer(public_pem)
        ),
        "a foreign key": forge(header, claims, _attacker_sign),
        "expired": forge(
            header, {**claims, "iat": now - 2000, "nbf": now - 2000, "exp": now - 1000}, ours
        ),
        "nbf in the future": forge(header, {**claims, "nbf": now + 600}, ours),
        "wrong iss": forge(header, {**claims, "iss": "https://evil.example"}, ours),
        "wrong aud": forge(header, {**claims, "aud": "another-api"}, ours),
    }
    tokens |= {
        f"{claim} missing": forge(
            header, {name: value for name, value in claims.items() if name != claim}, ours
        )
        for claim in REQUIRED_CLAIMS
    }
    tokens |= {
        "typ missing": forge({"alg": "RS256", "kid": kid}, claims, ours),
        "typ wrong": forge({**header, "typ": "JWT"}, claims, ours),
        "unknown kid": forge({**header, "kid": "key-999"}, claims, _attacker_sign),
        "jwk header with the attacker's key": forge(
            {**header, "jwk": attacker_jwk}, claims, _attacker_sign
        ),
        "jku header at the attacker's site": forge(
            {**header, "jku": "https://evil.example/jwks.json"}, claims, _attacker_sign
        ),
    }
    return tokens


async def test_every_forged_token_is_401_at_the_api_and_4401_on_the_websocket(
    client: httpx.AsyncClient, server: ServerHandle
) -> None:
    assert server.services is not None
    assert server.url is not None
    player = await new_player(client, server)
    tokens = forgeries(server, player.user_id)
    assert len(tokens) == 3 + 6 + len(REQUIRED_CLAIMS) + 5 == 22
    ws_url = server.url.replace("http://", "ws://") + "/api/v1/ws"
    origin = [(b"Origin", server.services.public_origin.encode())]

    # The honest token works in both places, so each refusal below is the forgery's doing.
    assert (await client.get("/api/v1/oauth/userinfo", headers=player.auth)).status_code == 200

    api_refusals, ws_refusals = {}, {}
    for name, token in tokens.items():
        response = await client.get(
            "/api/v1/leaderboard/me", headers={"Authorization": f"Bearer {token}"}
        )
        assert response.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')
        api_refusals[name] = response.status_code
        async with open_websocket_url(ws_url, extra_headers=origin) as ws:
            await ws.send_message(json.dumps({"type": "auth", "token": token}))
            with trio.fail_after(5):
                assert json.loads(await ws.get_message()) == {
                    "type": "error",
                    "error": "invalid_token",
                }
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.get_message()
            assert closed.value.reason is not None
            ws_refusals[name] = closed.value.reason.code
    assert api_refusals == dict.fromkeys(tokens, 401)
    assert ws_refusals == dict.fromkeys(tokens, 4401)


async def test_a_token_in_the_query_string_is_refused_at_the_api_and_the_websocket(
    client: httpx.AsyncClient, server: ServerHandle
) -> None:
    assert server.services is not None
    assert server.url is not None
    player = await new_player(client, server)
    response = await client.get("/api/v1/leaderboard/me", params={"access_token": player.token})
    assert response.status_code == 401
    ws_url = server.url.replace("http://", "ws://") + f"/api/v1/ws?access_token={player.token}"
    with pytest.raises(ConnectionRejected) as rejected:
        async with open_websocket_url(
            ws_url, extra_headers=[(b"Origin", server.services.public_origin.encode())]
        ):
            pass
    assert rejected.value.status_code == 401
