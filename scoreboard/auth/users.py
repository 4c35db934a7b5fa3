"""Registering accounts and checking their passwords (`POST /api/v1/users`, docs/api.md).

Validation is strict and ASCII-only: a username is 3 to 32 of `[A-Za-z0-9_.-]`; an email is a
dot-atom local part and a hostname with at least two labels, at most 254 characters, its domain
lower-cased; a password is 10 to 128 characters. A bad field raises `RegistrationError`, which the
HTTP layer answers with 400 `invalid_request`. A taken username or email surfaces as the store's
`UsernameTaken` / `EmailTaken` (409).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from scoreboard.adapters.interfaces import Accounts
from scoreboard.auth.passwords import HashingBusy, Passwords
from scoreboard.records import UserRecord

log = logging.getLogger(__name__)

USERNAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{3,32}")
PASSWORD_MIN_CHARS = 10
PASSWORD_MAX_CHARS = 128
EMAIL_MAX_CHARS = 254  # RFC 5321's path limit minus the angle brackets
EMAIL_LOCAL_MAX_CHARS = 64
# RFC 5322 dot-atom: no quoted strings, comments or IP literals, which real sign-ups never need.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
EMAIL_LOCAL_PATTERN = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*")
EMAIL_DOMAIN_PATTERN = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
)


class RegistrationError(ValueError):
    """A registration field is invalid; `description` is safe to show to the client."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.field = field
        self.description = description


@dataclass(frozen=True, slots=True)
class Registration:
    """A validated registration, the email's domain lower-cased."""

    username: str
    email: str
    password: str


def validate_registration(username: object, email: object, password: object) -> Registration:
    """Check each field as it came from the request body (any JSON value)."""
    return Registration(
        username=_validate_username(username),
        email=_validate_email(email),
        password=_validate_password(password),
    )


async def register_user(
    store: Accounts, passwords: Passwords, username: object, email: object, password: object
) -> int:
    """Validate, hash and store a new account; return its user id. Raises `RegistrationError`,
    or the store's `UsernameTaken` / `EmailTaken`."""
    return await create_account(store, passwords, validate_registration(username, email, password))


async def create_account(store: Accounts, passwords: Passwords, registration: Registration) -> int:
    """Hash and store a validated registration; its user id. Raises the store's
    `UsernameTaken` / `EmailTaken` (taken in any case: names are unique case-insensitively),
    or `HashingBusy`."""
    password_hash = await passwords.hash(registration.password)
    return await store.create_user(registration.username, registration.email, password_hash)


async def authenticate_user(
    store: Accounts, passwords: Passwords, username: str, password: str
) -> UserRecord | None:
    """The account if the password is right and the account is enabled, else None. Takes the
    same time whether or not the username exists (and whether or not the account is disabled).
    A right password whose stored hash has other parameters than `passwords`' is hashed anew and
    stored (best effort: see `_upgrade_password_hash`)."""
    # No account is named with NUL, which PostgreSQL's text cannot even be asked about.
    user = None if "\x00" in username else await store.get_user_by_username(username)
    usable_hash = user.password_hash if user is not None and not user.disabled else None
    if not await passwords.verify(usable_hash, password):
        return None
    assert user is not None, "only a stored hash verifies"
    if passwords.needs_rehash(user.password_hash):
        await _upgrade_password_hash(store, passwords, user, password)
    return user


async def _upgrade_password_hash(
    store: Accounts, passwords: Passwords, user: UserRecord, password: str
) -> None:
    """Replace a hash made with other parameters than the current ones by a fresh hash of the
    password just verified, so that raising the cost reaches every account that signs in. Best
    effort: the sign-in has succeeded whatever happens here. A cancellation stops it cleanly
    (the replacement is one compare-and-set), and the password is not verified a second time."""
    try:
        new_hash = await passwords.hash(password)
        replaced = await store.replace_password_hash(user.user_id, user.password_hash, new_hash)
    except HashingBusy:
        return  # registrations fill the hashing queue: a later sign-in upgrades it
    except Exception:
        # Whatever the store (or argon2) answers, the password was right: log it, sign in.
        log.warning("could not upgrade the password hash of user %d", user.user_id, exc_info=True)
        return
    if not replaced:
        # Another sign-in upgraded it first, or the password changed: what is stored stays.
        log.debug("the password hash of user %d changed during sign-in; kept", user.user_id)


def _validate_username(username: object) -> str:
    if not isinstance(username, str):
        raise RegistrationError("username", "must be a string")
    if not USERNAME_PATTERN.fullmatch(username):
        raise RegistrationError("username", "must be 3 to 32 characters of A-Z, a-z, 0-9, _ . -")
    return username


def _validate_email(email: object) -> str:
    if not isinstance(email, str):
        raise RegistrationError("email", "must be a string")
    if len(email) > EMAIL_MAX_CHARS:
        raise RegistrationError("email", f"must be at most {EMAIL_MAX_CHARS} characters")
    local, at, domain = email.rpartition("@")
    if (
        not at
        or len(local) > EMAIL_LOCAL_MAX_CHARS
        or not EMAIL_LOCAL_PATTERN.fullmatch(local)
        or not EMAIL_DOMAIN_PATTERN.fullmatch(domain)
    ):
        raise RegistrationError("email", "is not a valid email address")
    return f"{local}@{domain.lower()}"


def _validate_password(password: object) -> str:
    if not isinstance(password, str):
        raise RegistrationError("password", "must be a string")
    if not PASSWORD_MIN_CHARS <= len(password) <= PASSWORD_MAX_CHARS:
        raise RegistrationError(
            "password", f"must be {PASSWORD_MIN_CHARS} to {PASSWORD_MAX_CHARS} characters"
        )
    return password
