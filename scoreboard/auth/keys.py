"""The RS256 signing keys, kept in the database so that every process signs and verifies alike.

Keys are named by generation: `key-1`, `key-2`, … Two processes starting at once on an empty
database both generate a key named `key-1`; the store keeps whichever is inserted first (a kid
is unique, a second insert of it does nothing), and both then reload and use that one. Rotation
(`scoreboard keys rotate`) adds the next generation the same way, so concurrent rotators cannot
fork the ring either.

Every key that is not retired verifies and is published in the JWKS. The newest key that is at
least `activation_delay_ms` old signs (the oldest active key while none is): a rotated-in key
verifies everywhere before any process signs with it, since each process refreshes its ring
more often than that delay. Rotation retires a key once its successor has signed for longer
than any access token lives, so old keys verify until their tokens have expired.

Each active key also keys the HMAC of short-lived login forms (`form_secret`), derived from its
private key, so that every process can check a form another one rendered.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import trio
from joserfc.jwk import RSAKey

from scoreboard import clock
from scoreboard.adapters.interfaces import KeyRotation, SigningKeys
from scoreboard.records import SigningKeyRecord

SIGNING_ALGORITHM = "RS256"
# 2048 bits is RFC 7518's floor for RS256 and what verification on every request can afford.
RSA_KEY_BITS = 2048
KID_PATTERN = re.compile(r"key-([1-9][0-9]{0,8})")


class NoSigningKey(RuntimeError):
    """The store holds no key that is not retired."""


@dataclass(frozen=True, slots=True)
class _Keys:
    signing_kid: str
    signing_key: RSAKey
    verifying: Mapping[str, RSAKey]
    public_jwks: tuple[dict[str, Any], ...]
    form_secrets: Mapping[str, bytes]


class KeyRing:
    """The active keys of this process. Swapped whole on refresh, so a reader never sees half.

    Building one parses (and checks) a private key, some 40 ms of CPU: the async paths below do
    it in a worker thread."""

    def __init__(
        self, records: Sequence[SigningKeyRecord], *, activation_delay_ms: int = 0
    ) -> None:
        self._activation_delay_ms = activation_delay_ms
        self._keys = _build(records, activation_delay_ms)
        self._selection = _selection(records, activation_delay_ms)
        self.generation = 0
        """Counts the changes of the verifying keys and the signer (`VerifiedTokens` reads it)."""

    def signer(self) -> tuple[str, RSAKey]:
        """The kid and private key that sign new tokens."""
        return self._keys.signing_kid, self._keys.signing_key

    def verifying_key(self, kid: str) -> RSAKey | None:
        return self._keys.verifying.get(kid)

    def form_secret(self, kid: str) -> bytes | None:
        """The HMAC key of login forms rendered under this kid (None if it is not active)."""
        return self._keys.form_secrets.get(kid)

    def jwks(self) -> dict[str, Any]:
        """The public JWK set, as served at `/.well-known/jwks.json`."""
        return {"keys": [dict(jwk) for jwk in self._keys.public_jwks]}

    async def refresh(self, store: SigningKeys) -> None:
        """Pick up keys added or retired by other processes. Raises `NoSigningKey` (and keeps
        the current keys) if the store has no active key."""
        records = await store.signing_keys()
        selection = _selection(records, self._activation_delay_ms)
        if selection == self._selection:
            return  # parsing the keys again costs some 40 ms of CPU for nothing
        self._keys = await trio.to_thread.run_sync(_build, records, self._activation_delay_ms)
        self._selection = selection
        self.generation += 1


async def load_or_create_keyring(store: SigningKeys, *, activation_delay_ms: int = 0) -> KeyRing:
    """The ring from the store, creating the first key if there is none."""
    records = await store.signing_keys()
    if not any(record.retired_at_ms is None for record in records):
        key = await trio.to_thread.run_sync(generate_signing_key, next_kid(records))
        await store.add_signing_key(key)
        records = await store.signing_keys()
    return await trio.to_thread.run_sync(
        lambda: KeyRing(records, activation_delay_ms=activation_delay_ms)
    )


def next_kid(records: Sequence[SigningKeyRecord]) -> str:
    """The kid of the next generation, counting retired keys too so that no kid is reused."""
    generations = [int(match[1]) for r in records if (match := KID_PATTERN.fullmatch(r.kid))]
    return f"key-{max(generations, default=0) + 1}"


def generate_signing_key(kid: str) -> SigningKeyRecord:
    """A new RSA key as the store keeps it. CPU-bound: call it from a worker thread."""
    key = RSAKey.generate_key(RSA_KEY_BITS)
    return SigningKeyRecord(
        kid=kid,
        private_pem=key.as_pem(private=True).decode("ascii"),
        public_jwk=_public_jwk(key.as_dict(private=False), kid),
        created_at_ms=clock.now_ms(),
        retired_at_ms=None,
    )


def _public_jwk(jwk: Mapping[str, Any], kid: str) -> dict[str, Any]:
    """Only the public members, whatever else the source holds."""
    return {
        "kty": "RSA",
        "n": jwk["n"],
        "e": jwk["e"],
        "kid": kid,
        "alg": SIGNING_ALGORITHM,
        "use": "sig",
    }


def _active_and_signing(
    records: Sequence[SigningKeyRecord], activation_delay_ms: int
) -> tuple[list[SigningKeyRecord], SigningKeyRecord]:
    """The keys that verify (oldest first) and the one that signs."""
    active = sorted(
        (r for r in records if r.retired_at_ms is None), key=lambda r: (r.created_at_ms, r.kid)
    )
    if not active:
        raise NoSigningKey("no signing key that is not retired")
    activated_before = clock.now_ms() - activation_delay_ms
    activated = [
        r for r in active if not activation_delay_ms or r.created_at_ms <= activated_before
    ]
    return active, (activated[-1:] or active[:1])[0]


def _selection(
    records: Sequence[SigningKeyRecord], activation_delay_ms: int
) -> tuple[tuple[str, ...], str]:
    """What a ring built from `records` now would hold: kids are never reused, so the active
    kids and the signer's identify it."""
    active, signing = _active_and_signing(records, activation_delay_ms)
    return tuple(r.kid for r in active), signing.kid


def _build(records: Sequence[SigningKeyRecord], activation_delay_ms: int = 0) -> _Keys:
    active, signer = _active_and_signing(records, activation_delay_ms)
    public_jwks = tuple(_public_jwk(r.public_jwk, r.kid) for r in active)
    return _Keys(
        signing_kid=signer.kid,
        signing_key=RSAKey.import_key(signer.private_pem),
        # Verify with exactly what is published, so we accept what outside verifiers would.
        verifying=MappingProxyType({jwk["kid"]: RSAKey.import_key(jwk) for jwk in public_jwks}),
        public_jwks=public_jwks,
        form_secrets=MappingProxyType({r.kid: _form_secret(r.private_pem) for r in active}),
    )


def _form_secret(private_pem: str) -> bytes:
    return hashlib.sha256(b"scoreboard login form\0" + private_pem.encode("ascii")).digest()


async def rotate_keys(
    store: KeyRotation, *, token_lifetime_ms: int, now_ms: int | None = None
) -> tuple[str, list[str]]:
    """Add the next generation of key, and retire the keys whose tokens have all expired: those
    whose successor was created more than `token_lifetime_ms` (access-token lifetime, leeway
    and the activation delay) ago. Returns the new kid and the retired kids."""
    now = clock.now_ms() if now_ms is None else now_ms
    records = await store.signing_keys()
    key = await trio.to_thread.run_sync(generate_signing_key, next_kid(records))
    await store.add_signing_key(key)
    active = sorted(
        (r for r in records if r.retired_at_ms is None), key=lambda r: (r.created_at_ms, r.kid)
    )
    retired = [
        older.kid
        for older, successor in itertools.pairwise(active)
        if successor.created_at_ms <= now - token_lifetime_ms
    ]
    for kid in retired:
        await store.retire_signing_key(kid, now)
    return key.kid, retired
