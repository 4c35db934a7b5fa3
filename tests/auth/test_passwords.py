from __future__ import annotations

import threading
import time
from typing import Literal

import argon2
import pytest
import trio
import trio.testing

from scoreboard.auth.passwords import DEFAULT_HASHER, HashingBusy, Passwords
from tests.auth.conftest import FAST_HASHER, CountingHasher


async def test_hash_is_argon2id_and_verifies(fast_passwords: Passwords) -> None:
    password_hash = await fast_passwords.hash("correct horse battery")
    assert password_hash.startswith("$argon2id$")
    assert await fast_passwords.verify(password_hash, "correct horse battery")
    assert not await fast_passwords.verify(password_hash, "correct horse batterY")


async def test_each_hash_is_salted(fast_passwords: Passwords) -> None:
    assert await fast_passwords.hash("same password") != await fast_passwords.hash("same password")


async def test_default_parameters_are_argon2id_with_real_cost() -> None:
    password_hash = await Passwords().hash("correct horse battery")
    parameters = argon2.extract_parameters(password_hash)
    assert parameters.type is argon2.Type.ID
    assert parameters.memory_cost >= 19 * 1024
    assert parameters.time_cost >= 2


async def test_corrupt_stored_hash_is_a_mismatch_not_an_error(fast_passwords: Passwords) -> None:
    assert not await fast_passwords.verify("not-a-hash", "correct horse battery")
    assert not await fast_passwords.verify("$argon2id$v=19$m=8,t=1,p=1$garbage", "x" * 12)


async def test_needs_rehash_when_parameters_change() -> None:
    weak_hash = await Passwords(FAST_HASHER).hash("correct horse battery")
    current = Passwords(DEFAULT_HASHER)
    assert current.needs_rehash(weak_hash)
    assert not current.needs_rehash(await current.hash("correct horse battery"))
    assert current.needs_rehash("not-a-hash")


async def test_unknown_user_runs_argon2_and_fails() -> None:
    hasher = CountingHasher()
    passwords = Passwords(hasher)
    assert not await passwords.verify(None, "correct horse battery")
    assert not await passwords.verify(None, "correct horse battery")
    # The first call makes the dummy hash (as costly as a verify); later ones verify against it.
    assert hasher.calls == ["hash", "verify"]


class OverlapHasher(argon2.PasswordHasher):
    """Slow verifies that record how many ran at once in worker threads."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8, parallelism=1)
        self._lock = threading.Lock()
        self._running = 0
        self.most_at_once = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        with self._lock:
            self._running += 1
            self.most_at_once = max(self.most_at_once, self._running)
        try:
            time.sleep(0.02)
            return super().verify(hash, password)
        finally:
            with self._lock:
                self._running -= 1


async def test_concurrent_verifies_are_capped_by_the_limiter() -> None:
    hasher = OverlapHasher()
    passwords = Passwords(hasher, concurrent_verifies=2)
    password_hash = await passwords.hash("correct horse battery")
    results: list[bool] = []

    async def log_in() -> None:
        results.append(await passwords.verify(password_hash, "correct horse battery"))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(log_in)
    assert results == [True] * 8
    assert hasher.most_at_once == 2


class BlockedHasher(argon2.PasswordHasher):
    """New hashes wait in their worker threads until released; verifies run at once."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8, parallelism=1)
        self.release = threading.Event()
        self.started = threading.Semaphore(0)

    def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
        self.started.release()
        self.release.wait()
        return super().hash(password, salt=salt)


async def test_sign_ins_are_checked_while_registrations_hold_the_hashing_threads() -> None:
    hasher = BlockedHasher()
    password_hash = FAST_HASHER.hash("correct horse battery")
    passwords = Passwords(hasher, concurrent_verifies=2, concurrent_new_hashes=1)
    async with trio.open_nursery() as nursery:
        try:
            for n in range(5):
                nursery.start_soon(passwords.hash, f"registration {n}")
            await trio.to_thread.run_sync(hasher.started.acquire)
            # Registrations hold the new-hash thread and queue behind it; sign-ins go past.
            with trio.fail_after(30):
                for _ in range(4):
                    assert await passwords.verify(password_hash, "correct horse battery")
            assert not hasher.started.acquire(blocking=False), "one new hash at a time"
        finally:
            hasher.release.set()  # the threads are not cancellable: let them finish


async def test_registrations_past_the_bounded_queue_are_refused() -> None:
    hasher = BlockedHasher()
    passwords = Passwords(hasher, concurrent_new_hashes=1, max_waiting_new_hashes=2)
    async with trio.open_nursery() as nursery:
        try:
            for n in range(3):  # one hashing, two waiting
                nursery.start_soon(passwords.hash, f"registration {n}")
            await trio.to_thread.run_sync(hasher.started.acquire)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(HashingBusy):
                await passwords.hash("one too many")
        finally:
            hasher.release.set()
