"""Signing keys encrypted at rest: the stores keep each private key sealed with a key-encryption
key (KEK) that never enters the database.

A KEK is 32 random bytes, written as base64url (`scoreboard keys new-kek` makes one). The
setting `auth.key_encryption_key` (`SCOREBOARD_AUTH_KEY_ENCRYPTION_KEY`) holds one or more,
separated by commas, or `auth.key_encryption_key_file` names a file holding them, one a line.
The first encrypts; the others only decrypt, which is how a KEK is rotated: put the new one
first and the old one after it on every process, run `scoreboard keys rewrap` (it re-seals
every key with the first), then drop the old one.

A sealed key is `kek1:<KEK id>:<base64url(nonce | AES-256-GCM ciphertext)>`, its kid the
associated data, so a ciphertext moved to another row does not open. The KEK id (a hash of the
KEK, not the KEK) tells which KEK sealed it, so a missing or wrong KEK is named, not guessed.

Without any configured KEK: embedded mode makes one, in `key-encryption-key` (0600) in its data
directory beside the database, which keeps the keys out of a copied database file (and its
backups), not from someone who can read the directory; the real stack keeps the keys as they
are, in plain text, and the server warns at every start. Keys stored in plain text (by an older
version, or without a KEK) are sealed at the first start with a KEK.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import logging
import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from scoreboard.config import Config, ConfigError
from scoreboard.private_files import PRIVATE_FILE_MODE, private_directory
from scoreboard.records import SigningKeyRecord

log = logging.getLogger(__name__)

KEK_BYTES = 32
NONCE_BYTES = 12
SEALED_PREFIX = "kek1"
EMBEDDED_KEK_FILE = "key-encryption-key"
KEK_SEPARATORS = re.compile(r"[\s,]+")


class KeyEncryptionError(ConfigError):
    """A KEK that cannot be used, or a stored key that no configured KEK opens."""


def new_kek() -> str:
    return _encode(secrets.token_bytes(KEK_BYTES))


def kek_id(kek: bytes) -> str:
    return hashlib.sha256(b"scoreboard key-encryption key\0" + kek).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class KeyEncryption:
    """The configured KEKs, the first of which seals; none: keys are stored as they are."""

    keks: tuple[bytes, ...] = ()
    source: str = "no key-encryption key configured"

    @property
    def enabled(self) -> bool:
        return bool(self.keks)

    def sealed(self, record: SigningKeyRecord) -> SigningKeyRecord:
        """The record as the store keeps it."""
        return dataclasses.replace(record, private_pem=self._seal(record.kid, record.private_pem))

    def opened(self, record: SigningKeyRecord) -> SigningKeyRecord:
        """The record as it was before `sealed`. Raises `KeyEncryptionError`."""
        return dataclasses.replace(record, private_pem=self._open(record.kid, record.private_pem))

    def resealed(self, record: SigningKeyRecord, *, plain_only: bool) -> str | None:
        """The stored value the record should have instead, or None if it is right: a key in
        plain text gets sealed; unless `plain_only`, one sealed by another KEK than the first
        is sealed again by the first. Nothing changes without a KEK."""
        if not self.keks:
            return None
        stored = record.private_pem
        if _is_sealed(stored) and (plain_only or _sealed_by(stored) == kek_id(self.keks[0])):
            return None
        return self._seal(record.kid, self._open(record.kid, stored))

    def _seal(self, kid: str, private_pem: str) -> str:
        if not self.keks:
            return private_pem
        nonce = secrets.token_bytes(NONCE_BYTES)
        ciphertext = AESGCM(self.keks[0]).encrypt(nonce, private_pem.encode(), kid.encode())
        return f"{SEALED_PREFIX}:{kek_id(self.keks[0])}:{_encode(nonce + ciphertext)}"

    def _open(self, kid: str, stored: str) -> str:
        if not _is_sealed(stored):
            return stored
        sealed_by = _sealed_by(stored)
        kek = next((kek for kek in self.keks if kek_id(kek) == sealed_by), None)
        if kek is None:
            configured = ", ".join(kek_id(kek) for kek in self.keks) or "none"
            raise KeyEncryptionError(
                f"signing key {kid} is encrypted with the key-encryption key {sealed_by}, which "
                f"is not configured ({self.source}; KEK ids configured: {configured}). Set "
                "SCOREBOARD_AUTH_KEY_ENCRYPTION_KEY or SCOREBOARD_AUTH_KEY_ENCRYPTION_KEY_FILE "
                "to the KEK that encrypted the keys (during a rotation: the new one, then that)"
            )
        try:
            blob = _decode(stored.split(":", 2)[2])
            plain = AESGCM(kek).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], kid.encode())
        except (IndexError, ValueError, InvalidTag):
            raise KeyEncryptionError(
                f"signing key {kid} does not decrypt with the key-encryption key {sealed_by}: "
                "the stored value was altered, or belongs to another key"
            ) from None
        return plain.decode()


def load_key_encryption(config: Config) -> KeyEncryption:
    """The KEKs the configuration names; in embedded mode without any, the data directory's
    own (made on first use). Raises `KeyEncryptionError` for a setting that cannot be used."""
    auth = config.auth
    if auth.key_encryption_key and auth.key_encryption_key_file:
        raise KeyEncryptionError(
            "both SCOREBOARD_AUTH_KEY_ENCRYPTION_KEY and SCOREBOARD_AUTH_KEY_ENCRYPTION_KEY_FILE "
            "are set: choose one"
        )
    if auth.key_encryption_key:
        source = "SCOREBOARD_AUTH_KEY_ENCRYPTION_KEY"
        return KeyEncryption(parse_keks(auth.key_encryption_key, source), source)
    if auth.key_encryption_key_file:
        path = Path(auth.key_encryption_key_file)
        return KeyEncryption(_read_kek_file(path), f"the file {path}")
    if config.backend_mode == "embedded":
        path = Path(config.embedded.data_dir) / EMBEDDED_KEK_FILE
        if not path.exists():
            _create_kek_file(path)
        return KeyEncryption(_read_kek_file(path), f"the file {path}")
    return KeyEncryption()


def parse_keks(text: str, source: str) -> tuple[bytes, ...]:
    keks = []
    for word in KEK_SEPARATORS.split(text.strip()):
        try:
            kek = _decode(word)
        except ValueError:  # binascii.Error is one
            kek = b""
        if len(kek) != KEK_BYTES:
            raise KeyEncryptionError(
                f"{source}: a key-encryption key is {KEK_BYTES} random bytes in base64url "
                f"(43 characters; `scoreboard keys new-kek` makes one), not {len(word)} "
                "characters of something else"
            )
        keks.append(kek)
    if not keks:
        raise KeyEncryptionError(f"{source} holds no key-encryption key")
    return tuple(keks)


def _read_kek_file(path: Path) -> tuple[bytes, ...]:
    try:
        text = path.read_text(encoding="ascii")
        mode = stat.S_IMODE(path.stat().st_mode)
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyEncryptionError(f"cannot read the key-encryption key file {path}: {exc}") from exc
    if mode & 0o077:
        log.warning("%s is readable by others (mode %04o): chmod 600 it", path, mode)
    return parse_keks(text, f"the key-encryption key file {path}")


def _create_kek_file(path: Path) -> None:
    private_directory(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    except FileExistsError:
        return  # another process made it first: use theirs
    with os.fdopen(fd, "w", encoding="ascii") as file:
        file.write(new_kek() + "\n")
        file.flush()
        os.fsync(file.fileno())
    log.warning(
        "made a key-encryption key for the signing keys in %s: back it up with the database "
        "(without it the signing keys cannot be read)",
        path,
    )


def _is_sealed(stored: str) -> bool:
    return stored.startswith(SEALED_PREFIX + ":")


def _sealed_by(stored: str) -> str:
    return stored.split(":", 2)[1]


def _encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
