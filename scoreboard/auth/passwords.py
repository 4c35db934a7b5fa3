"""Password hashing with argon2id, off the trio loop.

Hashing costs tens of milliseconds of CPU and ~19 MiB of memory on purpose, so it runs in worker
threads behind `CapacityLimiter`s: a burst queues up instead of taking every thread (and every
core) the process has. Sign-in (`verify`) and new passwords (`hash`: registration) have limiters
of their own, so a flood of registrations never queues in front of a sign-in: it gets one
thread, and past a bounded queue it is refused (`HashingBusy`) rather than left to pile up. The
upgrade of an old hash at sign-in (`needs_rehash`) is a new hash too, and queues with them. A
sign-in for an unknown username verifies the password against a dummy hash anyway, so the
response time does not tell whether the username exists.
"""

from __future__ import annotations

import secrets

import argon2
import trio

# OWASP's argon2id recommendation (m = 19 MiB, t = 2, p = 1): ~30 ms per hash on one core. One
# lane, because the server runs on two cores and concurrency comes from the thread limiters.
DEFAULT_HASHER = argon2.PasswordHasher(
    time_cost=2, memory_cost=19 * 1024, parallelism=1, type=argon2.Type.ID
)
# Sign-ins checked at once: one per core of the two-core server; more would only queue in the OS.
DEFAULT_CONCURRENT_VERIFIES = 2
# New hashes at once: registration gets a bounded share (a core at most), beside the sign-ins.
DEFAULT_CONCURRENT_NEW_HASHES = 1
# Registrations that may wait for the new-hash thread; one more is refused (about 1 s of work).
DEFAULT_MAX_WAITING_NEW_HASHES = 32


class HashingBusy(RuntimeError):
    """Too many new passwords already wait to be hashed: try again in a moment."""


class Passwords:
    """Hashes and verifies passwords; one instance per process, shared by every request."""

    def __init__(
        self,
        hasher: argon2.PasswordHasher = DEFAULT_HASHER,
        *,
        concurrent_verifies: int = DEFAULT_CONCURRENT_VERIFIES,
        concurrent_new_hashes: int = DEFAULT_CONCURRENT_NEW_HASHES,
        max_waiting_new_hashes: int = DEFAULT_MAX_WAITING_NEW_HASHES,
    ) -> None:
        self._hasher = hasher
        self._verify_limiter = trio.CapacityLimiter(concurrent_verifies)
        self._new_hash_limiter = trio.CapacityLimiter(concurrent_new_hashes)
        self._max_waiting_new_hashes = max_waiting_new_hashes
        self._dummy_hash: str | None = None

    async def hash(self, password: str) -> str:
        """A new hash (registration). Raises `HashingBusy` when the queue for it is full."""
        if self._new_hash_limiter.statistics().tasks_waiting >= self._max_waiting_new_hashes:
            raise HashingBusy("too many new passwords wait to be hashed")
        return await trio.to_thread.run_sync(
            self._hasher.hash, password, limiter=self._new_hash_limiter
        )

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """True if `password` matches `password_hash`. Pass None for a user that does not exist
        (or must not log in): the password is checked against a dummy hash, which costs the
        same time, and the answer is False."""
        if password_hash is None:
            if self._dummy_hash is None:
                # Making the dummy costs what verifying against it does, so the first unknown
                # user is no faster either. Two first callers may both make one; harmless.
                self._dummy_hash = await trio.to_thread.run_sync(
                    self._hasher.hash, secrets.token_urlsafe(16), limiter=self._verify_limiter
                )
            else:
                await self._check(self._dummy_hash, password)
            return False
        return await self._check(password_hash, password)

    def needs_rehash(self, password_hash: str) -> bool:
        """True if the hash was made with other parameters than this hasher's (upgrade it at
        the next successful login)."""
        try:
            return self._hasher.check_needs_rehash(password_hash)
        except argon2.exceptions.InvalidHashError:
            return True

    async def _check(self, password_hash: str, password: str) -> bool:
        return await trio.to_thread.run_sync(
            self._verify_sync, password_hash, password, limiter=self._verify_limiter
        )

    def _verify_sync(self, password_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash, password)
        except argon2.exceptions.VerificationError:
            return False
        except argon2.exceptions.InvalidHashError:
            # A corrupt stored hash must not become a server error or a way in.
            return False
