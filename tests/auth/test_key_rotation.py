"""`scoreboard keys rotate`: a new key verifies at once and signs after the activation delay; old
keys verify until their tokens have expired, then retire; `kid` picks the key, and an unknown
one is refused."""

from __future__ import annotations

import dataclasses

import pytest

from scoreboard.auth.keys import KeyRing, load_or_create_keyring, rotate_keys
from scoreboard.auth.tokens import UnknownKey, issue_access_token, verify_access_token
from scoreboard.config import Config
from tests.auth.conftest import MemoryStore

HOUR_MS = 3_600_000
LIFETIME_MS = 1000 * (900 + 30 + 30 + 10)


def token(ring: KeyRing, config: Config) -> str:
    issued, _claims = issue_access_token(
        ring, config=config, user_id=1, client_id="scoreboard-web", scope="read"
    )
    return issued


async def test_a_rotated_in_key_verifies_at_once_and_signs_after_the_delay(
    memory_store: MemoryStore, auth_config: Config
) -> None:
    ring = await load_or_create_keyring(memory_store, activation_delay_ms=30_000)
    before = token(ring, auth_config)
    new_kid, retired = await rotate_keys(memory_store, token_lifetime_ms=LIFETIME_MS)
    assert (new_kid, retired) == ("key-2", [])
    await ring.refresh(memory_store)
    assert [jwk["kid"] for jwk in ring.jwks()["keys"]] == ["key-1", "key-2"]
    assert ring.signer()[0] == "key-1"
    assert verify_access_token(ring, before, config=auth_config).user_id == 1

    # Once key-2 is older than the delay, it signs; key-1's tokens still verify.
    key_2 = memory_store.keys["key-2"]
    memory_store.keys["key-2"] = dataclasses.replace(
        key_2, created_at_ms=key_2.created_at_ms - 31_000
    )
    await ring.refresh(memory_store)
    assert ring.signer()[0] == "key-2"
    after = token(ring, auth_config)
    assert verify_access_token(ring, before, config=auth_config).user_id == 1
    assert verify_access_token(ring, after, config=auth_config).user_id == 1


async def test_rotation_retires_keys_whose_tokens_have_all_expired(
    memory_store: MemoryStore, auth_config: Config
) -> None:
    ring = await load_or_create_keyring(memory_store)
    old = token(ring, auth_config)
    await rotate_keys(memory_store, token_lifetime_ms=LIFETIME_MS)
    key_2 = memory_store.keys["key-2"]
    now = key_2.created_at_ms + LIFETIME_MS + 1
    new_kid, retired = await rotate_keys(memory_store, token_lifetime_ms=LIFETIME_MS, now_ms=now)
    assert (new_kid, retired) == ("key-3", ["key-1"])
    await ring.refresh(memory_store)
    assert [jwk["kid"] for jwk in ring.jwks()["keys"]] == ["key-2", "key-3"]
    with pytest.raises(UnknownKey):
        verify_access_token(ring, old, config=auth_config)


async def test_a_key_still_signing_recently_is_kept(
    memory_store: MemoryStore, auth_config: Config
) -> None:
    await load_or_create_keyring(memory_store)
    await rotate_keys(memory_store, token_lifetime_ms=LIFETIME_MS)
    _kid, retired = await rotate_keys(memory_store, token_lifetime_ms=LIFETIME_MS)
    assert retired == []
    assert all(key.retired_at_ms is None for key in memory_store.keys.values())
