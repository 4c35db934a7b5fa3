"""Scaffolding for the pure parts of auth: the few `Store` methods they call, kept in memory.

`MemoryStore` is not a stand-in for PostgreSQL's behaviour in general; it implements exactly the
contract auth relies on (username and email unique in any case, a password hash replaced only
if it is still the one read, signing keys inserted with ON CONFLICT (kid) DO NOTHING) and yields
to the scheduler in each call so that concurrent callers interleave.
The same tests run against the real store in `test_postgres_store.py`.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Literal

import argon2
import pytest
import trio

from scoreboard.adapters.interfaces import EmailTaken, UsernameTaken
from scoreboard.auth.passwords import Passwords
from scoreboard.config import Config
from scoreboard.records import SigningKeyRecord, UserRecord, normalized_identity

# The smallest argon2id cost, so tests that only need *a* hash stay fast.
FAST_HASHER = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


class CountingHasher(argon2.PasswordHasher):
    """Records which argon2 operations ran: that the unknown-user path does real work, that a
    sign-in verifies once."""

    def __init__(self, time_cost: int = 1) -> None:
        super().__init__(time_cost=time_cost, memory_cost=8, parallelism=1)
        self.calls: list[str] = []

    def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
        self.calls.append("hash")
        return super().hash(password, salt=salt)

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        self.calls.append("verify")
        return super().verify(hash, password)


class MemoryStore:
    def __init__(self) -> None:
        self.users: dict[int, UserRecord] = {}
        self.keys: dict[str, SigningKeyRecord] = {}
        self._ids = itertools.count(1)

    async def create_user(self, username: str, email: str, password_hash: str) -> int:
        await trio.lowlevel.checkpoint()
        name = normalized_identity(username)
        if any(normalized_identity(u.username) == name for u in self.users.values()):
            raise UsernameTaken(username)
        address = normalized_identity(email)
        if any(normalized_identity(u.email) == address for u in self.users.values()):
            raise EmailTaken(email)
        user_id = next(self._ids)
        self.users[user_id] = UserRecord(user_id, username, email, password_hash, 0, False, 0)
        return user_id

    async def get_user(self, user_id: int) -> UserRecord | None:
        await trio.lowlevel.checkpoint()
        return self.users.get(user_id)

    async def get_user_by_username(self, username: str) -> UserRecord | None:
        await trio.lowlevel.checkpoint()
        name = normalized_identity(username)
        return next(
            (u for u in self.users.values() if normalized_identity(u.username) == name), None
        )

    async def replace_password_hash(self, user_id: int, old_hash: str, new_hash: str) -> bool:
        await trio.lowlevel.checkpoint()
        user = self.users.get(user_id)
        if user is None or user.password_hash != old_hash:
            return False
        self.users[user_id] = dataclasses.replace(user, password_hash=new_hash)
        return True

    async def signing_keys(self) -> list[SigningKeyRecord]:
        await trio.lowlevel.checkpoint()
        return list(self.keys.values())

    async def add_signing_key(self, key: SigningKeyRecord) -> None:
        await trio.lowlevel.checkpoint()
        self.keys.setdefault(key.kid, key)

    async def retire_signing_key(self, kid: str, retired_at_ms: int) -> None:
        await trio.lowlevel.checkpoint()
        if self.keys[kid].retired_at_ms is None:
            self.retire(kid, retired_at_ms)

    def retire(self, kid: str, at_ms: int) -> None:
        self.keys[kid] = dataclasses.replace(self.keys[kid], retired_at_ms=at_ms)

    def disable(self, user_id: int) -> None:
        self.users[user_id] = dataclasses.replace(self.users[user_id], disabled=True)


@pytest.fixture
def memory_store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def fast_passwords() -> Passwords:
    return Passwords(FAST_HASHER)


@pytest.fixture
def auth_config() -> Config:
    return Config().replace(auth={"issuer": "https://scoreboard.test", "leeway_s": 30})
