"""What `scoreboard serve` tells the person who just started it: the page's URL and, in embedded
mode, a demo account (created on the first start, its password shown that once)."""

from __future__ import annotations

import secrets
import shlex

from scoreboard.adapters.interfaces import Accounts, EmailTaken, UsernameTaken
from scoreboard.auth.passwords import Passwords
from scoreboard.auth.users import register_user

DEMO_USERNAME = "demo"
DEMO_EMAIL = "demo@example.com"


async def create_demo_user(store: Accounts, passwords: Passwords) -> str | None:
    """The new demo account's password; None when the account exists already."""
    if await store.get_user_by_username(DEMO_USERNAME) is not None:
        return None
    password = secrets.token_urlsafe(12)
    try:
        await register_user(store, passwords, DEMO_USERNAME, DEMO_EMAIL, password)
    except (UsernameTaken, EmailTaken):  # created meanwhile, or someone registered the address
        return None
    return password


def announcement(url: str, demo_password: str | None, *, embedded: bool) -> list[str]:
    lines = [f"Scoreboard is running: {url}/"]
    if not embedded:
        return lines
    if demo_password is not None:
        lines.append(f"Demo user: {DEMO_USERNAME} / {demo_password}  (shown only this once)")
    else:
        body = '{"username":"ada","email":"ada@example.com","password":"correct horse battery"}'
        command = shlex.join(
            [
                "curl",
                "-s",
                f"{url}/api/v1/users",
                "-H",
                "Content-Type: application/json",
                "-d",
                body,
            ]
        )
        lines.append(f"Demo user: {DEMO_USERNAME} exists; create another with: {command}")
    return lines
