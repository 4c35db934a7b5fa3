from __future__ import annotations

import dataclasses
import logging

import argon2
import pytest

from scoreboard.adapters.interfaces import BackendUnavailable, EmailTaken, UsernameTaken
from scoreboard.auth.passwords import Passwords
from scoreboard.auth.users import (
    RegistrationError,
    authenticate_user,
    register_user,
    validate_registration,
)
from tests.auth.conftest import FAST_HASHER, CountingHasher, MemoryStore

GOOD_PASSWORD = "correct horse"


def _email_of_length(length: int) -> str:
    """A syntactically valid address of exactly `length` characters (64-character local part,
    labels of at most 63)."""
    local = "l" * 64
    remaining = length - len(local) - 1 - len(".com")
    labels = []
    while remaining > 0:
        label = "d" * min(63, remaining)
        labels.append(label)
        remaining -= len(label) + 1
    domain = ".".join(labels) + ".com"
    address = f"{local}@{domain}"
    assert len(address) == length, len(address)
    return address


@pytest.mark.parametrize(
    "username",
    ["abc", "a" * 32, "Alice_B.c-9", "..."],
)
def test_valid_usernames(username: str) -> None:
    assert validate_registration(username, "a@example.com", GOOD_PASSWORD).username == username


@pytest.mark.parametrize(
    "username",
    ["ab", "a" * 33, "", "has space", "émile", "semi;colon", "abc\n", "at@sign", 42, None],
)
def test_invalid_usernames(username: object) -> None:
    with pytest.raises(RegistrationError) as caught:
        validate_registration(username, "a@example.com", GOOD_PASSWORD)
    assert caught.value.field == "username"
    assert caught.value.description


@pytest.mark.parametrize(
    ("email", "stored"),
    [
        ("a@example.com", "a@example.com"),
        ("First.Last+tag@Mail.Example.COM", "First.Last+tag@mail.example.com"),
        ("o'neil@sub-domain.example.org", "o'neil@sub-domain.example.org"),
        (f"{'l' * 64}@example.com", f"{'l' * 64}@example.com"),
        (_email_of_length(254), _email_of_length(254)),
    ],
)
def test_valid_emails_have_their_domain_lower_cased(email: str, stored: str) -> None:
    assert validate_registration("alice", email, GOOD_PASSWORD).email == stored


@pytest.mark.parametrize(
    "email",
    [
        "",
        "plain",
        "@example.com",
        "a@",
        "a@localhost",
        "a@@example.com",
        "a@b@example.com",
        "a..b@example.com",
        ".a@example.com",
        "a.@example.com",
        "a b@example.com",
        '"quoted"@example.com',
        "a@-example.com",
        "a@example-.com",
        "a@example..com",
        "a@example.com.",
        "a@[127.0.0.1]",
        "a@example.123",
        "ü@example.com",
        "a@exämple.com",
        "a@example.com\n",
        f"{'l' * 65}@example.com",
        f"a@{'d' * 64}.com",
        _email_of_length(255),
        7,
    ],
)
def test_invalid_emails(email: object) -> None:
    with pytest.raises(RegistrationError) as caught:
        validate_registration("alice", email, GOOD_PASSWORD)
    assert caught.value.field == "email"


@pytest.mark.parametrize("password", ["x" * 10, "x" * 128, "pässwörd ✓ ok"])
def test_valid_passwords(password: str) -> None:
    assert validate_registration("alice", "a@example.com", password).password == password


@pytest.mark.parametrize("password", ["", "x" * 9, "x" * 129, None, b"bytes pass"])
def test_invalid_passwords(password: object) -> None:
    with pytest.raises(RegistrationError) as caught:
        validate_registration("alice", "a@example.com", password)
    assert caught.value.field == "password"


async def test_register_stores_a_hash_not_the_password(
    memory_store: MemoryStore, fast_passwords: Passwords
) -> None:
    user_id = await register_user(
        memory_store, fast_passwords, "alice", "Alice@Example.com", GOOD_PASSWORD
    )
    user = await memory_store.get_user(user_id)
    assert user is not None
    assert (user.username, user.email) == ("alice", "Alice@example.com")
    assert GOOD_PASSWORD not in user.password_hash
    assert await fast_passwords.verify(user.password_hash, GOOD_PASSWORD)


async def test_register_rejects_a_bad_field_before_touching_the_store(
    memory_store: MemoryStore, fast_passwords: Passwords
) -> None:
    with pytest.raises(RegistrationError):
        await register_user(memory_store, fast_passwords, "alice", "a@example.com", "short")
    assert memory_store.users == {}


async def test_register_duplicates(memory_store: MemoryStore, fast_passwords: Passwords) -> None:
    await register_user(memory_store, fast_passwords, "alice", "a@example.com", GOOD_PASSWORD)
    with pytest.raises(UsernameTaken):
        await register_user(memory_store, fast_passwords, "alice", "b@example.com", GOOD_PASSWORD)
    with pytest.raises(EmailTaken):
        await register_user(memory_store, fast_passwords, "bob", "a@example.com", GOOD_PASSWORD)


async def test_authenticate(memory_store: MemoryStore, fast_passwords: Passwords) -> None:
    user_id = await register_user(
        memory_store, fast_passwords, "alice", "a@example.com", GOOD_PASSWORD
    )
    user = await authenticate_user(memory_store, fast_passwords, "alice", GOOD_PASSWORD)
    assert user is not None
    assert user.user_id == user_id
    assert await authenticate_user(memory_store, fast_passwords, "alice", "wrong password") is None
    assert await authenticate_user(memory_store, fast_passwords, "nobody", GOOD_PASSWORD) is None


async def test_disabled_account_cannot_log_in(
    memory_store: MemoryStore, fast_passwords: Passwords
) -> None:
    user_id = await register_user(
        memory_store, fast_passwords, "alice", "a@example.com", GOOD_PASSWORD
    )
    memory_store.disable(user_id)
    assert await authenticate_user(memory_store, fast_passwords, "alice", GOOD_PASSWORD) is None


# A stronger hasher than FAST_HASHER (one more pass), still fast: what a raised cost looks like.
def _stronger() -> CountingHasher:
    return CountingHasher(time_cost=2)


async def _user_with_weak_hash(store: MemoryStore) -> int:
    return await store.create_user("alice", "a@example.com", FAST_HASHER.hash(GOOD_PASSWORD))


async def test_a_sign_in_upgrades_a_hash_made_with_weaker_parameters(
    memory_store: MemoryStore,
) -> None:
    user_id = await _user_with_weak_hash(memory_store)
    hasher = _stronger()
    passwords = Passwords(hasher)

    assert await authenticate_user(memory_store, passwords, "alice", GOOD_PASSWORD) is not None
    upgraded = memory_store.users[user_id].password_hash
    assert argon2.extract_parameters(upgraded).time_cost == 2
    assert not passwords.needs_rehash(upgraded)
    assert hasher.calls == ["verify", "hash"]  # one verify: the new hash reuses its answer

    user = await authenticate_user(memory_store, passwords, "alice", GOOD_PASSWORD)
    assert user is not None
    assert user.password_hash == upgraded
    assert memory_store.users[user_id].password_hash == upgraded
    assert hasher.calls == ["verify", "hash", "verify"]


async def test_a_wrong_password_never_rehashes(memory_store: MemoryStore) -> None:
    user_id = await _user_with_weak_hash(memory_store)
    weak = memory_store.users[user_id].password_hash
    hasher = _stronger()
    passwords = Passwords(hasher)

    assert await authenticate_user(memory_store, passwords, "alice", "wrong password") is None
    assert memory_store.users[user_id].password_hash == weak
    assert hasher.calls == ["verify"]


class RefusingStore(MemoryStore):
    async def replace_password_hash(self, user_id: int, old_hash: str, new_hash: str) -> bool:
        raise BackendUnavailable("PostgreSQL: connection refused")


async def test_a_sign_in_succeeds_when_the_store_refuses_the_upgrade(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = RefusingStore()
    user_id = await _user_with_weak_hash(store)
    weak = store.users[user_id].password_hash

    with caplog.at_level(logging.WARNING, logger="scoreboard.auth.users"):
        user = await authenticate_user(store, Passwords(_stronger()), "alice", GOOD_PASSWORD)
    assert user is not None
    assert user.user_id == user_id
    assert store.users[user_id].password_hash == weak
    assert [r.getMessage() for r in caplog.records] == [
        f"could not upgrade the password hash of user {user_id}"
    ]


async def test_a_sign_in_succeeds_and_skips_the_upgrade_when_hashing_is_busy(
    memory_store: MemoryStore,
) -> None:
    user_id = await _user_with_weak_hash(memory_store)
    weak = memory_store.users[user_id].password_hash
    hasher = _stronger()
    # No room in the new-hash queue at all: every new hash is refused with `HashingBusy`.
    passwords = Passwords(hasher, max_waiting_new_hashes=0)

    assert await authenticate_user(memory_store, passwords, "alice", GOOD_PASSWORD) is not None
    assert memory_store.users[user_id].password_hash == weak
    assert hasher.calls == ["verify"]


class ChangedMeanwhileStore(MemoryStore):
    """The password changes (elsewhere) between the sign-in's read and its upgrade."""

    async def replace_password_hash(self, user_id: int, old_hash: str, new_hash: str) -> bool:
        self.users[user_id] = dataclasses.replace(self.users[user_id], password_hash="changed")
        return await super().replace_password_hash(user_id, old_hash, new_hash)


async def test_the_upgrade_never_overwrites_a_password_changed_meanwhile() -> None:
    store = ChangedMeanwhileStore()
    user_id = await _user_with_weak_hash(store)

    assert await authenticate_user(store, Passwords(_stronger()), "alice", GOOD_PASSWORD)
    assert store.users[user_id].password_hash == "changed"
