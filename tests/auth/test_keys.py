from __future__ import annotations

import base64
import dataclasses

import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from scoreboard.auth.keys import (
    KeyRing,
    NoSigningKey,
    generate_signing_key,
    load_or_create_keyring,
    next_kid,
)
from tests.auth.conftest import MemoryStore


def _b64_int(value: str) -> int:
    return int.from_bytes(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)), "big")


async def test_first_start_creates_a_key(memory_store: MemoryStore) -> None:
    ring = await load_or_create_keyring(memory_store)
    assert list(memory_store.keys) == ["key-1"]
    kid, key = ring.signer()
    assert kid == "key-1"
    assert key.is_private
    assert ring.verifying_key("key-1") is not None


async def test_second_start_loads_the_same_key(memory_store: MemoryStore) -> None:
    first = await load_or_create_keyring(memory_store)
    second = await load_or_create_keyring(memory_store)
    assert len(memory_store.keys) == 1
    assert first.jwks() == second.jwks()
    assert first.signer()[1].as_dict(private=True) == second.signer()[1].as_dict(private=True)


async def test_concurrent_first_starts_agree_on_one_key(memory_store: MemoryStore) -> None:
    rings: list[KeyRing] = []

    async def start() -> None:
        rings.append(await load_or_create_keyring(memory_store))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(start)
    assert list(memory_store.keys) == ["key-1"]
    signers = {ring.signer()[1].as_pem(private=True) for ring in rings}
    assert len(signers) == 1


def test_jwks_shape_has_public_members_only() -> None:
    ring = KeyRing([generate_signing_key("key-1")])
    jwks = ring.jwks()
    assert list(jwks) == ["keys"]
    [jwk] = jwks["keys"]
    assert jwk.keys() == {"kty", "n", "e", "kid", "alg", "use"}
    assert (jwk["kty"], jwk["kid"], jwk["alg"], jwk["use"]) == ("RSA", "key-1", "RS256", "sig")
    public = ring.signer()[1].public_key.public_numbers()
    assert (_b64_int(jwk["n"]), _b64_int(jwk["e"])) == (public.n, public.e)
    assert public.n.bit_length() >= 2048


def test_jwks_is_a_copy() -> None:
    ring = KeyRing([generate_signing_key("key-1")])
    ring.jwks()["keys"][0]["kid"] = "tampered"
    assert ring.jwks()["keys"][0]["kid"] == "key-1"


def test_stored_private_key_is_pem() -> None:
    record = generate_signing_key("key-1")
    private = serialization.load_pem_private_key(record.private_pem.encode(), password=None)
    assert isinstance(private, rsa.RSAPrivateKey)
    assert record.public_jwk["kid"] == "key-1"
    assert "d" not in record.public_jwk


def test_newest_active_key_signs_and_all_active_keys_verify() -> None:
    older = generate_signing_key("key-1")
    newer = generate_signing_key("key-2")
    newer = dataclasses.replace(newer, created_at_ms=older.created_at_ms + 1000)
    ring = KeyRing([newer, older])
    assert ring.signer()[0] == "key-2"
    assert ring.verifying_key("key-1") is not None
    assert ring.verifying_key("key-2") is not None
    assert [jwk["kid"] for jwk in ring.jwks()["keys"]] == ["key-1", "key-2"]


def test_retired_keys_neither_sign_nor_verify() -> None:
    older = generate_signing_key("key-1")
    retired = generate_signing_key("key-2")
    retired = dataclasses.replace(
        retired, created_at_ms=older.created_at_ms + 1000, retired_at_ms=1
    )
    ring = KeyRing([older, retired])
    assert ring.signer()[0] == "key-1"
    assert ring.verifying_key("key-2") is None
    assert [jwk["kid"] for jwk in ring.jwks()["keys"]] == ["key-1"]


def test_a_ring_needs_an_active_key() -> None:
    retired = generate_signing_key("key-1")
    with pytest.raises(NoSigningKey):
        KeyRing([dataclasses.replace(retired, retired_at_ms=1)])


async def test_all_keys_retired_creates_the_next_generation(memory_store: MemoryStore) -> None:
    await load_or_create_keyring(memory_store)
    memory_store.retire("key-1", at_ms=1)
    ring = await load_or_create_keyring(memory_store)
    assert ring.signer()[0] == "key-2"


async def test_refresh_picks_up_other_processes_keys(memory_store: MemoryStore) -> None:
    ring = await load_or_create_keyring(memory_store)
    other = generate_signing_key(next_kid(list(memory_store.keys.values())))
    await memory_store.add_signing_key(other)
    assert ring.verifying_key("key-2") is None
    await ring.refresh(memory_store)
    assert ring.signer()[0] == "key-2"
    assert ring.verifying_key("key-1") is not None
    memory_store.retire("key-1", at_ms=other.created_at_ms)
    await ring.refresh(memory_store)
    assert ring.verifying_key("key-1") is None


async def test_refresh_to_an_empty_store_keeps_the_current_keys(memory_store: MemoryStore) -> None:
    ring = await load_or_create_keyring(memory_store)
    memory_store.retire("key-1", at_ms=1)
    with pytest.raises(NoSigningKey):
        await ring.refresh(memory_store)
    assert ring.signer()[0] == "key-1"


def test_next_kid_counts_every_generation_and_ignores_foreign_kids() -> None:
    records = [generate_signing_key(kid) for kid in ("key-1", "key-7", "imported-by-hand")]
    assert next_kid(records) == "key-8"
    assert next_kid([]) == "key-1"
