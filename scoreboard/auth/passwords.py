"""Password hashing with argon2id, off the trio loop.

Hashing costs tens of milliseconds of CPU and ~19 MiB of memory on purpose, so it runs in worker
threads behind a `CapacityLimiter`: a burst of logins queues up instead of taking every thread
(and every core) the process has. A login for an unknown username verifies the password against
a dummy hash anyway, so the response time does not tell whether the username exists.
"""

from __future__ import annotations

import secrets

import argon2
import trio

# OWASP's argon2id recommendation (m = 19 MiB, t = 2, p = 1): ~30 ms per hash on one core. One
# lane, because the server runs on two cores and concurrency comes from the thread limiter.
DEFAULT_HASHER = argon2.PasswordHasher(
    time_cost=2, memory_cost=19 * 1024, parallelism=1, type=argon2.Type.ID
)
# Hashes in flight at once: one per core of the two-core server; more would only queue in the OS.
DEFAULT_CONCURRENT_HASHES = 2


class Passwords:
    """Hashes and verifies passwords; one instance per process, shared by every request."""

    def __init__(
        self,
        hasher: argon2.PasswordHasher = DEFAULT_HASHER,
        concurrent_hashes: int = DEFAULT_CONCURRENT_HASHES,
    ) -> None:
        self._hasher = hasher
        self._limiter = trio.CapacityLimiter(concurrent_hashes)
        self._dummy_hash: str | None = None

    async def hash(self, password: str) -> str:
        return await trio.to_thread.run_sync(self._hasher.hash, password, limiter=self._limiter)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """True if `password` matches `password_hash`. Pass None for a user that does not exist
        (or must not log in): the password is checked against a dummy hash, which costs the
        same time, and the answer is False."""
        if password_hash is None:
            if self._dummy_hash is None:
                # Making the dummy costs what verifying against it does, so the first unknown
                # user is no faster either. Two first callers may both make one; harmless.
                self._dummy_hash = await self.hash(secrets.token_urlsafe(16))
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
            self._verify_sync, password_hash, password, limiter=self._limiter
        )

    def _verify_sync(self, password_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash, password)
        except argon2.exceptions.VerificationError:
            return False
        except argon2.exceptions.InvalidHashError:
            # A corrupt stored hash must not become a server error or a way in.
            return False
