"""The verified-token cache: a repeat costs a lookup, and it accepts exactly what the verifier
accepts: nothing after `exp` + leeway, nothing signed by a key that left the ring, no refused
token remembered as valid; it stays within its bound. Revocation is checked outside it (see
`tests/http/test_actions_api.py`: a revoked token is refused at its next request)."""

from __future__ import annotations

import dataclasses

import pytest

from scoreboard.auth import token_cache
from scoreboard.auth.keys import KeyRing, generate_signing_key
from scoreboard.auth.token_cache import VerifiedTokens
from scoreboard.auth.tokens import InvalidToken, issue_access_token, verify_access_token
from scoreboard.config import Config
from scoreboard.records import SigningKeyRecord
from tests.auth.conftest import MemoryStore

NOW = 1_700_000_000
TTL_S = 900
LEEWAY_S = 30


class Clock:
    def __init__(self) -> None:
        self.now = float(NOW)

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def record() -> SigningKeyRecord:
    return generate_signing_key("key-1")


@pytest.fixture
def config() -> Config:
    return Config().replace(auth={"access_token_ttl_s": TTL_S, "leeway_s": LEEWAY_S})


def token_for(ring: KeyRing, config: Config, user_id: int = 7, now: int = NOW) -> str:
    token, _claims = issue_access_token(
        ring, config=config, user_id=user_id, client_id="c", scope="read write", now=now
    )
    return token


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every token the cache hands to the real verifier."""
    verified: list[str] = []

    def counting(ring: KeyRing, token: str, **kwargs: object) -> object:
        verified.append(token)
        return verify_access_token(ring, token, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(token_cache, "verify_access_token", counting)
    return verified


def test_a_repeat_is_not_verified_again(
    record: SigningKeyRecord, config: Config, counted: list[str]
) -> None:
    ring = KeyRing([record])
    clock = Clock()
    cache = VerifiedTokens(ring, config, clock=clock)
    token = token_for(ring, config)
    first = cache.verify(token)
    clock.now += 60
    assert cache.verify(token) == first
    assert cache.verify(token) == verify_access_token(ring, token, config=config, now=NOW + 60)
    assert counted == [token]


def test_valid_until_exp_plus_leeway_and_not_a_second_longer(
    record: SigningKeyRecord, config: Config
) -> None:
    ring = KeyRing([record])
    clock = Clock()
    cache = VerifiedTokens(ring, config, clock=clock)
    token = token_for(ring, config)
    cache.verify(token)
    clock.now = NOW + TTL_S + LEEWAY_S - 0.001
    cache.verify(token)
    clock.now = NOW + TTL_S + LEEWAY_S
    with pytest.raises(InvalidToken, match="exp"):
        cache.verify(token)
    # The verifier itself draws the line at the same instant.
    verify_access_token(ring, token, config=config, now=NOW + TTL_S + LEEWAY_S - 1)
    with pytest.raises(InvalidToken):
        verify_access_token(ring, token, config=config, now=NOW + TTL_S + LEEWAY_S)


def test_refused_tokens_are_not_remembered(
    record: SigningKeyRecord, config: Config, counted: list[str]
) -> None:
    ring = KeyRing([record])
    cache = VerifiedTokens(ring, config, clock=Clock())
    head, payload, signature = token_for(ring, config).split(".")
    forged = f"{head}.{payload}.{signature[:-4]}AAAA"
    for _ in range(2):
        with pytest.raises(InvalidToken):
            cache.verify(forged)
    assert counted == [forged, forged]
    assert len(cache) == 0


async def test_a_token_whose_key_left_the_ring_is_refused(
    record: SigningKeyRecord, config: Config, memory_store: MemoryStore
) -> None:
    await memory_store.add_signing_key(record)
    ring = KeyRing([record])
    cache = VerifiedTokens(ring, config, clock=Clock())
    old = token_for(ring, config)
    cache.verify(old)
    # Another process rotates: a new key, the old one retired.
    await memory_store.add_signing_key(generate_signing_key("key-2"))
    await memory_store.retire_signing_key("key-1", NOW * 1000)
    await ring.refresh(memory_store)
    with pytest.raises(InvalidToken, match="unknown kid"):
        cache.verify(old)
    cache.verify(token_for(ring, config))


async def test_a_refresh_that_changes_nothing_keeps_the_cache(
    record: SigningKeyRecord, config: Config, memory_store: MemoryStore, counted: list[str]
) -> None:
    await memory_store.add_signing_key(record)
    ring = KeyRing([record])
    cache = VerifiedTokens(ring, config, clock=Clock())
    token = token_for(ring, config)
    cache.verify(token)
    await ring.refresh(memory_store)
    cache.verify(token)
    assert ring.generation == 0
    assert counted == [token]


def test_the_least_recently_used_token_leaves_first(
    record: SigningKeyRecord, config: Config, counted: list[str]
) -> None:
    ring = KeyRing([record])
    cache = VerifiedTokens(ring, config, max_entries=2, clock=Clock())
    a, b, c = (token_for(ring, config, user_id=user_id) for user_id in (1, 2, 3))
    cache.verify(a)
    cache.verify(b)
    cache.verify(a)  # b is now the least recently used
    cache.verify(c)
    assert len(cache) == 2
    counted.clear()
    cache.verify(a)
    cache.verify(c)
    assert counted == []
    cache.verify(b)
    assert counted == [b]


def test_claims_are_those_of_the_verifier(record: SigningKeyRecord, config: Config) -> None:
    ring = KeyRing([record])
    cache = VerifiedTokens(ring, config, clock=Clock())
    token = token_for(ring, config, user_id=42)
    claims = cache.verify(token)
    assert claims.user_id == 42
    assert dataclasses.asdict(claims) == dataclasses.asdict(
        verify_access_token(ring, token, config=config, now=NOW)
    )
