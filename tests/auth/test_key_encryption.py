"""Signing keys sealed with a key-encryption key (KEK): what the stores keep, what opens it, and
how the KEK is configured."""

from __future__ import annotations

import base64
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from scoreboard.auth.key_encryption import (
    EMBEDDED_KEK_FILE,
    KeyEncryption,
    KeyEncryptionError,
    kek_id,
    load_key_encryption,
    new_kek,
    parse_keks,
)
from scoreboard.auth.keys import generate_signing_key
from scoreboard.config import Config, ConfigError
from scoreboard.records import SigningKeyRecord

OLD, NEW = new_kek(), new_kek()


def encryption(*keks: str) -> KeyEncryption:
    return KeyEncryption(parse_keks(",".join(keks), "test"), "test")


@pytest.fixture(scope="module")
def record() -> SigningKeyRecord:
    return generate_signing_key("key-1")


def test_a_sealed_key_holds_nothing_of_the_private_key_and_opens_again(
    record: SigningKeyRecord,
) -> None:
    sealed = encryption(NEW).sealed(record)
    assert sealed.private_pem.startswith(f"kek1:{kek_id(parse_keks(NEW, 't')[0])}:")
    body = "".join(record.private_pem.splitlines()[1:-1])
    assert "PRIVATE KEY" not in sealed.private_pem
    assert body[:40] not in sealed.private_pem
    assert sealed.public_jwk == record.public_jwk  # the public half stays readable
    assert encryption(NEW).opened(sealed) == record
    assert encryption(NEW).sealed(record).private_pem != sealed.private_pem  # a fresh nonce


def test_a_sealed_key_moved_to_another_kid_does_not_open(record: SigningKeyRecord) -> None:
    sealed = encryption(NEW).sealed(record)
    moved = SigningKeyRecord("key-2", sealed.private_pem, {}, 0, None)
    with pytest.raises(KeyEncryptionError, match="key-2 does not decrypt"):
        encryption(NEW).opened(moved)
    altered = SigningKeyRecord("key-1", sealed.private_pem[:-8] + "AAAAAAAA", {}, 0, None)
    with pytest.raises(KeyEncryptionError, match="altered"):
        encryption(NEW).opened(altered)


def test_the_wrong_kek_or_none_is_named_in_the_refusal(record: SigningKeyRecord) -> None:
    sealed = encryption(OLD).sealed(record)
    old_id, new_id = (kek_id(parse_keks(kek, "t")[0]) for kek in (OLD, NEW))
    with pytest.raises(KeyEncryptionError) as wrong:
        encryption(NEW).opened(sealed)
    assert f"key-encryption key {old_id}, which is not configured" in str(wrong.value)
    assert new_id in str(wrong.value)
    with pytest.raises(KeyEncryptionError, match="KEK ids configured: none"):
        KeyEncryption().opened(sealed)


def test_without_a_kek_keys_stay_as_they_are(record: SigningKeyRecord) -> None:
    assert KeyEncryption().sealed(record) == record
    assert KeyEncryption().opened(record) == record
    assert KeyEncryption().resealed(record, plain_only=False) is None


def test_a_plain_key_is_sealed_and_a_rotation_reseals_with_the_first_kek(
    record: SigningKeyRecord,
) -> None:
    rotating = encryption(NEW, OLD)
    sealed_new = rotating.resealed(record, plain_only=True)
    assert sealed_new is not None
    assert encryption(NEW).opened(replace(record, private_pem=sealed_new)) == record
    sealed_old = encryption(OLD).sealed(record)
    assert rotating.opened(sealed_old) == record  # the old KEK still opens during a rotation
    assert rotating.resealed(sealed_old, plain_only=True) is None
    resealed = rotating.resealed(sealed_old, plain_only=False)
    assert resealed is not None
    assert encryption(NEW).opened(replace(record, private_pem=resealed)) == record
    assert rotating.resealed(encryption(NEW).sealed(record), plain_only=False) is None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not base64 at all!",
        base64.urlsafe_b64encode(b"x" * 16).decode(),  # 128 bits: too short
        NEW + "," + NEW[:20],
    ],
    ids=["empty", "not base64", "128 bits", "a second key cut short"],
)
def test_a_kek_is_32_bytes_of_base64url(text: str) -> None:
    with pytest.raises(
        KeyEncryptionError, match=r"SCOREBOARD_AUTH_KEY_ENCRYPTION_KEY(:| holds no)"
    ):
        parse_keks(text, "SCOREBOARD_AUTH_KEY_ENCRYPTION_KEY")


def test_several_keks_are_separated_by_commas_or_lines() -> None:
    assert parse_keks(f" {NEW}, {OLD}\n", "t") == parse_keks(f"{NEW}\n{OLD}\n", "t")
    assert len(parse_keks(f"{NEW}\n{OLD}\n", "t")) == 2
    padded = base64.urlsafe_b64encode(parse_keks(NEW, "t")[0]).decode()
    assert parse_keks(padded, "t") == parse_keks(NEW, "t")


def test_a_kek_error_is_a_configuration_error() -> None:
    assert issubclass(KeyEncryptionError, ConfigError)


def embedded(tmp_path: Path, **auth: str) -> Config:
    return Config().replace(embedded={"data_dir": str(tmp_path / "var")}, auth=auth)


def test_embedded_mode_without_a_kek_makes_one_of_its_own(tmp_path: Path) -> None:
    first = load_key_encryption(embedded(tmp_path))
    kek_file = tmp_path / "var" / EMBEDDED_KEK_FILE
    assert stat.S_IMODE(kek_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(kek_file.parent.stat().st_mode) == 0o700
    assert first.enabled
    assert load_key_encryption(embedded(tmp_path)).keks == first.keks  # made once


def test_a_configured_kek_wins_over_the_embedded_one(tmp_path: Path) -> None:
    chosen = load_key_encryption(embedded(tmp_path, key_encryption_key=NEW))
    assert chosen.keks == parse_keks(NEW, "t")
    assert not (tmp_path / "var" / EMBEDDED_KEK_FILE).exists()
    kek_file = tmp_path / "kek"
    kek_file.write_text(f"{NEW}\n{OLD}\n")
    from_file = load_key_encryption(embedded(tmp_path, key_encryption_key_file=str(kek_file)))
    assert from_file.keks == parse_keks(f"{NEW},{OLD}", "t")


def test_the_real_stack_without_a_kek_stores_keys_as_they_are() -> None:
    real = Config().replace(
        database={"url": "postgresql://db/x"},
        redis={"url": "redis://r"},
        amqp={"url": "amqp://q"},
    )
    assert not load_key_encryption(real).enabled


def test_unusable_kek_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyEncryptionError, match="choose one"):
        load_key_encryption(
            embedded(tmp_path, key_encryption_key=NEW, key_encryption_key_file="/x")
        )
    with pytest.raises(KeyEncryptionError, match="cannot read"):
        load_key_encryption(embedded(tmp_path, key_encryption_key_file=str(tmp_path / "no")))


def test_the_kek_stays_out_of_the_configurations_repr(tmp_path: Path) -> None:
    assert NEW not in repr(embedded(tmp_path, key_encryption_key=NEW))
