from __future__ import annotations

import pytest

from scoreboard.adapters.interfaces import EmailTaken, UsernameTaken
from scoreboard.auth.passwords import Passwords
from scoreboard.auth.users import (
    RegistrationError,
    authenticate_user,
    register_user,
    validate_registration,
)
from tests.auth.conftest import MemoryStore

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
