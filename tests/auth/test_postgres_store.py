"""Auth against the real PostgreSQL store: registration, login, and the key ring shared by
processes (each process is a store of its own, with its own pool)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from scoreboard.adapters.interfaces import EmailTaken, UsernameTaken
from scoreboard.adapters.postgres import PostgresStore, open_postgres_store
from scoreboard.auth.keys import KeyRing, generate_signing_key, load_or_create_keyring
from scoreboard.auth.passwords import Passwords
from scoreboard.auth.tokens import issue_access_token, verify_access_token
from scoreboard.auth.users import authenticate_user, register_user
from scoreboard.bridge import Bridge, open_bridge
from scoreboard.config import Config, DatabaseConfig
from tests.auth.conftest import CountingHasher

PASSWORD = "correct horse battery"


@pytest.fixture
async def bridge() -> AsyncIterator[Bridge]:
    async with open_bridge() as bridge:
        yield bridge


@pytest.fixture
async def store(bridge: Bridge, database_url: str) -> AsyncIterator[PostgresStore]:
    async with open_postgres_store(bridge, _pool_config(database_url)) as store:
        yield store


def _pool_config(database_url: str) -> DatabaseConfig:
    return DatabaseConfig(url=database_url, pool_min=1, pool_max=2)


async def test_register_and_log_in(store: PostgresStore, fast_passwords: Passwords) -> None:
    user_id = await register_user(store, fast_passwords, "alice", "Alice@Example.COM", PASSWORD)
    user = await authenticate_user(store, fast_passwords, "alice", PASSWORD)
    assert user is not None
    assert (user.user_id, user.email) == (user_id, "Alice@example.com")
    assert await authenticate_user(store, fast_passwords, "alice", "wrong password") is None
    assert await authenticate_user(store, fast_passwords, "nobody", PASSWORD) is None


async def test_duplicates_are_reported_by_field(
    store: PostgresStore, fast_passwords: Passwords
) -> None:
    await register_user(store, fast_passwords, "alice", "a@example.com", PASSWORD)
    with pytest.raises(UsernameTaken):
        await register_user(store, fast_passwords, "alice", "b@example.com", PASSWORD)
    with pytest.raises(EmailTaken):
        await register_user(store, fast_passwords, "bob", "a@example.com", PASSWORD)
    # The domain is lower-cased before the uniqueness check sees it.
    with pytest.raises(EmailTaken):
        await register_user(store, fast_passwords, "carol", "a@EXAMPLE.com", PASSWORD)


async def test_a_sign_in_upgrades_a_weaker_hash_in_the_store(
    store: PostgresStore, fast_passwords: Passwords
) -> None:
    user_id = await register_user(store, fast_passwords, "alice", "a@example.com", PASSWORD)
    stronger = Passwords(CountingHasher(time_cost=2))

    assert await authenticate_user(store, stronger, "alice", PASSWORD) is not None
    user = await store.get_user(user_id)
    assert user is not None
    assert not stronger.needs_rehash(user.password_hash)
    assert await authenticate_user(store, stronger, "alice", PASSWORD) == user


async def test_longest_valid_fields_fit_the_schema(
    store: PostgresStore, fast_passwords: Passwords
) -> None:
    email = f"{'l' * 64}@{'d' * 63}.{'d' * 63}.{'d' * 57}.com"
    assert len(email) == 254
    user_id = await register_user(store, fast_passwords, "u" * 32, email, "p" * 128)
    user = await store.get_user(user_id)
    assert user is not None
    assert user.email == email


async def test_keyring_is_created_once_and_reloaded(store: PostgresStore) -> None:
    first = await load_or_create_keyring(store)
    second = await load_or_create_keyring(store)
    assert [key.kid for key in await store.signing_keys()] == ["key-1"]
    assert first.jwks() == second.jwks()


async def test_concurrent_first_starts_share_one_key(
    bridge: Bridge, database_url: str, auth_config: Config
) -> None:
    rings: list[KeyRing] = []

    async def start_process() -> None:
        async with open_postgres_store(bridge, _pool_config(database_url)) as own_store:
            rings.append(await load_or_create_keyring(own_store))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(start_process)
    assert {ring.signer()[0] for ring in rings} == {"key-1"}
    token, _claims = issue_access_token(
        rings[0], config=auth_config, user_id=1, client_id="c", scope="read"
    )
    for ring in rings:
        assert verify_access_token(ring, token, config=auth_config).user_id == 1


async def test_refresh_sees_a_key_another_process_added(
    store: PostgresStore, auth_config: Config
) -> None:
    ring = await load_or_create_keyring(store)
    old_token, _claims = issue_access_token(
        ring, config=auth_config, user_id=1, client_id="c", scope="read"
    )
    await store.add_signing_key(await trio.to_thread.run_sync(generate_signing_key, "key-2"))
    await ring.refresh(store)
    assert ring.signer()[0] == "key-2"
    assert verify_access_token(ring, old_token, config=auth_config).user_id == 1


async def test_adding_an_existing_kid_keeps_the_first(store: PostgresStore) -> None:
    first = await load_or_create_keyring(store)
    await store.add_signing_key(await trio.to_thread.run_sync(generate_signing_key, "key-1"))
    again = await load_or_create_keyring(store)
    assert again.jwks() == first.jwks()
