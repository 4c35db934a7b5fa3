"""Access tokens: a valid one round-trips; every forgery in the battery raises InvalidToken."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from scoreboard.auth.keys import KeyRing, generate_signing_key, load_or_create_keyring
from scoreboard.auth.tokens import (
    MAX_TOKEN_BYTES,
    AccessClaims,
    InvalidToken,
    UnknownKey,
    issue_access_token,
    verify_access_token,
)
from scoreboard.config import Config
from scoreboard.records import SigningKeyRecord
from tests.auth.conftest import MemoryStore

NOW = 1_700_000_000
KID = "key-1"
Signer = Callable[[bytes], bytes]


@pytest.fixture(scope="module")
def record() -> SigningKeyRecord:
    return generate_signing_key(KID)


@pytest.fixture(scope="module")
def attacker_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ring(record: SigningKeyRecord) -> KeyRing:
    return KeyRing([record])


@pytest.fixture(scope="module")
def our_signer(record: SigningKeyRecord) -> Signer:
    private = serialization.load_pem_private_key(record.private_pem.encode(), password=None)
    assert isinstance(private, rsa.RSAPrivateKey)
    return lambda data: private.sign(data, padding.PKCS1v15(), hashes.SHA256())


@pytest.fixture
def attacker_signer(attacker_key: rsa.RSAPrivateKey) -> Signer:
    return lambda data: attacker_key.sign(data, padding.PKCS1v15(), hashes.SHA256())


@pytest.fixture
def good_claims(ring: KeyRing, auth_config: Config) -> dict[str, Any]:
    _token, claims = issue_access_token(
        ring,
        config=auth_config,
        user_id=42,
        client_id="scoreboard-web",
        scope="read write",
        grant_id="grant-1",
        now=NOW,
    )
    return claims


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64_json(value: Any) -> str:
    return _b64(json.dumps(value).encode())


def forge(header: dict[str, Any], claims: dict[str, Any], sign: Signer | None) -> str:
    """A compact JWS built by hand, so that nothing refuses to write what an attacker would."""
    signing_input = f"{_b64_json(header)}.{_b64_json(claims)}"
    signature = _b64(sign(signing_input.encode())) if sign else ""
    return f"{signing_input}.{signature}"


def _hmac_signer(secret: bytes) -> Signer:
    return lambda data: hmac.new(secret, data, hashlib.sha256).digest()


def good_header(**changes: Any) -> dict[str, Any]:
    return {"alg": "RS256", "typ": "at+jwt", "kid": KID, **changes}


def verify(ring: KeyRing, token: str, config: Config, now: int = NOW) -> AccessClaims:
    return verify_access_token(ring, token, config=config, now=now)


# Valid tokens


def test_issued_token_round_trips(ring: KeyRing, auth_config: Config) -> None:
    token, claims = issue_access_token(
        ring,
        config=auth_config,
        user_id=42,
        client_id="scoreboard-web",
        scope="read write",
        grant_id="grant-1",
        now=NOW,
    )
    verified = verify(ring, token, auth_config)
    assert verified == AccessClaims(
        user_id=42,
        scope=frozenset({"read", "write"}),
        jti=claims["jti"],
        client_id="scoreboard-web",
        grant_id="grant-1",
        expires_at=NOW + 900,
        issued_at=NOW,
    )
    assert "write" in verified.scope
    assert "admin" not in verified.scope


def test_issued_token_follows_rfc_9068(ring: KeyRing, auth_config: Config) -> None:
    token, claims = issue_access_token(
        ring, config=auth_config, user_id=7, client_id="cli", scope="read", now=NOW
    )
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header == {"alg": "RS256", "typ": "at+jwt", "kid": KID}
    assert claims.keys() == {"iss", "sub", "aud", "exp", "iat", "nbf", "jti", "client_id", "scope"}
    assert claims["iss"] == "https://scoreboard.test"
    assert claims["sub"] == "7"
    assert claims["aud"] == "scoreboard-api"
    assert claims["exp"] - claims["iat"] == 900
    assert verify(ring, token, auth_config).grant_id is None


def test_every_token_has_its_own_jti(ring: KeyRing, auth_config: Config) -> None:
    jtis = {
        claims["jti"]
        for _token, claims in (
            issue_access_token(ring, config=auth_config, user_id=1, client_id="c", scope="read")
            for _ in range(5)
        )
    }
    assert len(jtis) == 5


def test_issuer_defaults_to_the_public_origin(ring: KeyRing) -> None:
    config = Config().replace(public={"origin": "https://board.example/"})
    token, claims = issue_access_token(ring, config=config, user_id=1, client_id="c", scope="read")
    assert claims["iss"] == "https://board.example"
    assert verify_access_token(ring, token, config=config).user_id == 1


@pytest.mark.parametrize("typ", ["at+jwt", "AT+JWT", "application/at+jwt", "Application/AT+JWT"])
def test_typ_is_case_insensitive_with_or_without_media_prefix(
    ring: KeyRing, auth_config: Config, our_signer: Signer, good_claims: dict[str, Any], typ: str
) -> None:
    token = forge(good_header(typ=typ), good_claims, our_signer)
    assert verify(ring, token, auth_config).user_id == 42


def test_audience_may_be_a_list(
    ring: KeyRing, auth_config: Config, our_signer: Signer, good_claims: dict[str, Any]
) -> None:
    claims = {**good_claims, "aud": ["other-api", "scoreboard-api"]}
    assert verify(ring, forge(good_header(), claims, our_signer), auth_config).user_id == 42


def test_leeway_honoured_up_to_30_seconds(
    ring: KeyRing, auth_config: Config, our_signer: Signer, good_claims: dict[str, Any]
) -> None:
    token = forge(good_header(), good_claims, our_signer)
    assert verify(ring, token, auth_config, now=good_claims["exp"] + 29)
    with pytest.raises(InvalidToken):
        verify(ring, token, auth_config, now=good_claims["exp"] + 31)
    early = {**good_claims, "nbf": NOW + 29, "iat": NOW + 29}
    assert verify(ring, forge(good_header(), early, our_signer), auth_config)


def test_configured_leeway_is_capped_at_30_seconds(
    ring: KeyRing, auth_config: Config, our_signer: Signer, good_claims: dict[str, Any]
) -> None:
    lax = auth_config.replace(auth={"leeway_s": 600})
    token = forge(good_header(), good_claims, our_signer)
    with pytest.raises(InvalidToken):
        verify(ring, token, lax, now=good_claims["exp"] + 31)


def test_smaller_configured_leeway_is_used(
    ring: KeyRing, auth_config: Config, our_signer: Signer, good_claims: dict[str, Any]
) -> None:
    strict = auth_config.replace(auth={"leeway_s": 0})
    token = forge(good_header(), good_claims, our_signer)
    with pytest.raises(InvalidToken):
        verify(ring, token, strict, now=good_claims["exp"])


# The forged-token battery


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_alg_none_is_refused(
    ring: KeyRing, auth_config: Config, good_claims: dict[str, Any], alg: str
) -> None:
    with pytest.raises(InvalidToken):
        verify(ring, forge(good_header(alg=alg), good_claims, None), auth_config)


def test_hs256_keyed_with_our_public_key_is_refused(
    ring: KeyRing, auth_config: Config, record: SigningKeyRecord, good_claims: dict[str, Any]
) -> None:
    private = serialization.load_pem_private_key(record.private_pem.encode(), password=None)
    for public_encoding in (
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.PKCS1
        ),
        json.dumps(dict(record.public_jwk)).encode(),
    ):
        token = forge(good_header(alg="HS256"), good_claims, _hmac_signer(public_encoding))
        with pytest.raises(InvalidToken):
            verify(ring, token, auth_config)


@pytest.mark.parametrize("alg", ["RS384", "RS512", "PS256", "ES256", "HS512", "rs256", "RS256 "])
def test_any_other_algorithm_is_refused(
    ring: KeyRing, auth_config: Config, our_signer: Signer, good_claims: dict[str, Any], alg: str
) -> None:
    with pytest.raises(InvalidToken):
        verify(ring, forge(good_header(alg=alg), good_claims, our_signer), auth_config)


def test_foreign_key_with_our_kid_is_refused(
    ring: KeyRing, auth_config: Config, attacker_signer: Signer, good_claims: dict[str, Any]
) -> None:
    with pytest.raises(InvalidToken, match="bad signature"):
        verify(ring, forge(good_header(), good_claims, attacker_signer), auth_config)


def test_tampered_payload_is_refused(
    ring: KeyRing, auth_config: Config, our_signer: Signer, good_claims: dict[str, Any]
) -> None:
    header, _payload, signature = forge(good_header(), good_claims, our_signer).split(".")
    elevated = _b64_json({**good_claims, "sub": "1", "scope": "read write admin"})
    with pytest.raises(InvalidToken):
        verify(ring, f"{header}.{elevated}.{signature}", auth_config)


def test_expired_beyond_leeway(
    ring: KeyRing, auth_config: Config, our_signer: Signer, good_claims: dict[str, Any]
) -> None:
    claims = {**good_claims, "exp": NOW - 31}
    with pytest.raises(InvalidToken):
        verify(ring, forge(good_header(), claims, our_signer), auth_config)


@pytest.mark.parametrize("claim", ["nbf", "iat"])
def test_not_yet_valid_beyond_leeway(
    ring: KeyRing, auth_config: Config, our_signer: Signer, good_claims: dict[str, Any], claim: str
) -> None:
    claims = {**good_claims, claim: NOW + 31}
    with pytest.raises(InvalidToken):
        verify(ring, forge(good_header(), claims, our_signer), auth_config)


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("iss", "https://evil.example"),
        ("iss", "https://scoreboard.test/"),
        ("iss", ["https://scoreboard.test"]),
        ("aud", "other-api"),
        ("aud", ["other-api"]),
        ("aud", ""),
        ("sub", "alice"),
        ("sub", "-1"),
        ("sub", "0"),
        ("sub", "042"),
        ("sub", "4 2"),
        ("sub", "٤٢"),
        ("sub", "9" * 20),
        ("sub", 42),
        ("exp", "2000000000"),
        ("exp", float("nan")),
        ("exp", True),
        ("iat", None),
        ("jti", ""),
        ("jti", 5),
        ("client_id", ""),
        ("client_id", ["scoreboard-web"]),
        ("scope", ""),
        ("scope", "   "),
        ("scope", ["read", "write"]),
        ("grant_id", 3),
    ],
)
def test_wrong_claim_values_are_refused(
    ring: KeyRing,
    auth_config: Config,
    our_signer: Signer,
    good_claims: dict[str, Any],
    claim: str,
    value: Any,
) -> None:
    claims = {**good_claims, claim: value}
    with pytest.raises(InvalidToken):
        verify(ring, forge(good_header(), claims, our_signer), auth_config)


@pytest.mark.parametrize("claim", ["iss", "sub", "aud", "exp", "iat", "jti", "client_id", "scope"])
def test_each_required_claim_missing_is_refused(
    ring: KeyRing, auth_config: Config, our_signer: Signer, good_claims: dict[str, Any], claim: str
) -> None:
    claims = {name: value for name, value in good_claims.items() if name != claim}
    with pytest.raises(InvalidToken):
        verify(ring, forge(good_header(), claims, our_signer), auth_config)


@pytest.mark.parametrize("typ", [None, "JWT", "jwt", "at+jwt ", "application/jwt", "at+jws", 1])
def test_typ_missing_or_wrong_is_refused(
    ring: KeyRing, auth_config: Config, our_signer: Signer, good_claims: dict[str, Any], typ: Any
) -> None:
    header = good_header(typ=typ)
    if typ is None:
        del header["typ"]
    with pytest.raises(InvalidToken):
        verify(ring, forge(header, good_claims, our_signer), auth_config)


def test_unknown_kid_is_refused(
    ring: KeyRing, auth_config: Config, our_signer: Signer, good_claims: dict[str, Any]
) -> None:
    with pytest.raises(UnknownKey):
        verify(ring, forge(good_header(kid="key-2"), good_claims, our_signer), auth_config)


@pytest.mark.parametrize("kid", [None, 1, ["key-1"]])
def test_missing_or_non_string_kid_is_refused(
    ring: KeyRing, auth_config: Config, our_signer: Signer, good_claims: dict[str, Any], kid: Any
) -> None:
    header = good_header(kid=kid)
    if kid is None:
        del header["kid"]
    with pytest.raises(InvalidToken):
        verify(ring, forge(header, good_claims, our_signer), auth_config)


def _attacker_jwk(key: rsa.RSAPrivateKey) -> dict[str, str]:
    numbers = key.public_key().public_numbers()
    return {
        "kty": "RSA",
        "n": _b64(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
        "e": _b64(numbers.e.to_bytes(3, "big")),
        "kid": KID,
    }


@pytest.mark.parametrize("kid", [KID, "attacker"])
def test_embedded_jwk_is_never_trusted(
    ring: KeyRing, auth_config: Config, good_claims: dict[str, Any], kid: str
) -> None:
    # A 1024-bit key keeps the header under joserfc's 512-byte cap, so our own check is tested.
    small_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    header = good_header(kid=kid, jwk=_attacker_jwk(small_key))
    token = forge(
        header, good_claims, lambda data: small_key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    )
    with pytest.raises(InvalidToken, match="header parameter not allowed: jwk"):
        verify(ring, token, auth_config)


def test_embedded_jwk_too_large_for_a_header_is_refused(
    ring: KeyRing,
    auth_config: Config,
    attacker_key: rsa.RSAPrivateKey,
    attacker_signer: Signer,
    good_claims: dict[str, Any],
) -> None:
    header = good_header(jwk=_attacker_jwk(attacker_key))
    with pytest.raises(InvalidToken):
        verify(ring, forge(header, good_claims, attacker_signer), auth_config)


@pytest.mark.parametrize(
    ("parameter", "value"),
    [
        ("jku", "https://attacker.example/jwks.json"),
        ("x5u", "https://attacker.example/cert.pem"),
        ("x5c", ["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"]),
    ],
)
def test_key_url_and_certificate_headers_are_refused(
    ring: KeyRing,
    auth_config: Config,
    attacker_signer: Signer,
    good_claims: dict[str, Any],
    parameter: str,
    value: Any,
) -> None:
    header = good_header(**{parameter: value})
    with pytest.raises(InvalidToken):
        verify(ring, forge(header, good_claims, attacker_signer), auth_config)


@pytest.mark.parametrize(
    ("parameter", "value"),
    [
        ("jku", "https://scoreboard.test/.well-known/jwks.json"),
        ("x5t", "AAAA"),
        ("crit", ["exp"]),
        ("cty", "JWT"),
        ("grant_id", "grant-1"),
    ],
)
def test_extra_header_parameters_are_refused_even_with_our_signature(
    ring: KeyRing,
    auth_config: Config,
    our_signer: Signer,
    good_claims: dict[str, Any],
    parameter: str,
    value: Any,
) -> None:
    header = good_header(**{parameter: value})
    with pytest.raises(InvalidToken, match="header parameter not allowed"):
        verify(ring, forge(header, good_claims, our_signer), auth_config)


def test_unencoded_payload_option_is_refused(
    ring: KeyRing, auth_config: Config, our_signer: Signer, good_claims: dict[str, Any]
) -> None:
    for header in (good_header(b64=False), good_header(b64=False, crit=["b64"])):
        with pytest.raises(InvalidToken):
            verify(ring, forge(header, good_claims, our_signer), auth_config)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "garbage",
        "a.b",
        "a.b.c",
        "a.b.c.d.e",
        "...",
        "eyJhbGciOiJSUzI1NiJ9..",
        f"{_b64_json('alg typ kid')}.{_b64_json({})}.AA",
        f"{_b64_json(['alg'])}.{_b64_json({})}.AA",
        f"{_b64(b'{not json')}.{_b64_json({})}.AA",
        "ünïcödé.tökén.sïg",
        "eyJhbGciOiJSUzI1NiJ9.eyJ9.!!!",
        "Bearer eyJhbGciOiJSUzI1NiJ9.e30.AA",
    ],
)
def test_garbage_is_refused(ring: KeyRing, auth_config: Config, token: str) -> None:
    with pytest.raises(InvalidToken):
        verify(ring, token, auth_config)


@pytest.mark.parametrize(
    "payload",
    [b"not json", b"[1, 2]", b'"a string"', b"null"],
)
def test_signed_payload_that_is_not_a_claims_object_is_refused(
    ring: KeyRing, auth_config: Config, our_signer: Signer, payload: bytes
) -> None:
    signing_input = f"{_b64_json(good_header())}.{_b64(payload)}"
    token = f"{signing_input}.{_b64(our_signer(signing_input.encode()))}"
    with pytest.raises(InvalidToken):
        verify(ring, token, auth_config)


def test_oversized_token_is_refused_before_parsing(
    ring: KeyRing, auth_config: Config, our_signer: Signer, good_claims: dict[str, Any]
) -> None:
    padded = {**good_claims, "padding": "x" * MAX_TOKEN_BYTES}
    with pytest.raises(InvalidToken, match="too large"):
        verify(ring, forge(good_header(), padded, our_signer), auth_config)
    with pytest.raises(InvalidToken, match="too large"):
        verify(ring, "x" * (MAX_TOKEN_BYTES + 1), auth_config)


async def test_token_of_another_processes_new_key_verifies_after_refresh(
    memory_store: MemoryStore, auth_config: Config
) -> None:
    ours = await load_or_create_keyring(memory_store)
    theirs = await load_or_create_keyring(memory_store)
    await memory_store.add_signing_key(generate_signing_key("key-2"))
    await theirs.refresh(memory_store)
    token, _claims = issue_access_token(
        theirs, config=auth_config, user_id=5, client_id="c", scope="read"
    )
    with pytest.raises(UnknownKey):
        verify_access_token(ours, token, config=auth_config)
    await ours.refresh(memory_store)
    assert verify_access_token(ours, token, config=auth_config).user_id == 5
