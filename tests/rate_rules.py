"""The rate rules, stated once: a table of cases that every judge of them must pass.

Three places apply the per-user limit and the per-type cooldown: the Redis guard's Lua script
(`adapters/redis.py`, `_CLAIM`), the embedded guard (`adapters/memory_board.py`), both at the API,
and the user actor's `Ledger` (`actors/user.py`), exactly, where the action is scored. Their
tests (`tests/adapters/test_redis.py`, `test_embedded_board.py`, `tests/actors/test_rate_rules.py`)
run every case below. Each case is one user's attempts in time order; every attempt admitted is
taken to complete (the guards record it, the ledger counts it as completed), a refused one
counts nowhere. The rules:

- at most `user_limit` admitted actions in any 60 s window; an action exactly 60 s older than
  another no longer shares its window;
- between two admitted actions of one type, at least the type's cooldown; exactly the cooldown
  apart is allowed;
- a refusal says when to come back: the longest of the waits that apply, in whole seconds,
  rounded up, at least 1.
"""

from __future__ import annotations

from dataclasses import dataclass

from scoreboard.catalogue import Catalogue, parse_catalogue

T0 = 1_764_500_000_000  # ms
WINDOW_MS = 60_000
# The IP limit is the guards' alone; the cases keep it out of the way.
IP_LIMIT = 1_000


@dataclass(frozen=True, slots=True)
class Attempt:
    after_ms: int  # since T0
    action_type: str
    retry_after_s: int | None  # None: admitted


@dataclass(frozen=True, slots=True)
class RateCase:
    name: str
    user_limit: int
    cooldowns_s: dict[str, float]
    attempts: tuple[Attempt, ...]

    def cooldown_ms(self, action_type: str) -> int:
        return int(self.cooldowns_s[action_type] * 1000)

    def catalogue(self) -> Catalogue:
        """The action types of this case, as the user actor reads them."""
        text = "".join(
            f'[{name}]\npoints = 1\ncooldown_s = {cooldown}\nfields = {{ item = "string" }}\n'
            for name, cooldown in self.cooldowns_s.items()
        )
        return parse_catalogue(text, f"<rate case {self.name}>")


def admitted(after_ms: int, action_type: str = "tap") -> Attempt:
    return Attempt(after_ms, action_type, None)


def refused(after_ms: int, retry_after_s: int, action_type: str = "tap") -> Attempt:
    return Attempt(after_ms, action_type, retry_after_s)


RATE_CASES = (
    RateCase(
        "the limit admits exactly that many in a minute",
        user_limit=3,
        cooldowns_s={"tap": 0},
        attempts=(
            admitted(0),
            admitted(1_000),
            admitted(2_000),
            refused(3_000, 57),
            refused(59_999, 1),
            admitted(60_000),  # the first is exactly a window old: gone
            refused(60_500, 1),  # the one at 1 s leaves at 61 s: 500 ms, rounded up
            admitted(61_000),
        ),
    ),
    RateCase(
        "the window slides: the wait is until the oldest that must leave has left",
        user_limit=2,
        cooldowns_s={"tap": 0},
        attempts=(
            admitted(0),
            admitted(30_000),
            refused(59_999, 1),
            admitted(60_000),
            refused(60_001, 30),  # 29.999 s until the one at 30 s leaves
            refused(89_000, 1),
            admitted(90_000),
        ),
    ),
    RateCase(
        "a refused attempt counts nowhere",
        user_limit=1,
        cooldowns_s={"tap": 0},
        attempts=(
            admitted(0),
            refused(10_000, 50),
            refused(20_000, 40),
            admitted(60_000),
        ),
    ),
    RateCase(
        "a cooldown separates two actions of one type, exactly the cooldown apart is allowed",
        user_limit=10,
        cooldowns_s={"tap": 5, "swipe": 5},
        attempts=(
            admitted(0),
            refused(1, 5),
            admitted(1_000, "swipe"),  # another type: its own cooldown
            refused(4_001, 1),
            refused(4_999, 1),
            admitted(5_000),
            refused(5_999, 1, "swipe"),
            admitted(6_000, "swipe"),
            refused(9_000, 1),
        ),
    ),
    RateCase(
        "a fractional cooldown",
        user_limit=10,
        cooldowns_s={"tap": 2.5},
        attempts=(admitted(0), refused(1_000, 2), refused(1_500, 1), admitted(2_500)),
    ),
    RateCase(
        "the longest wait wins when both the cooldown and the limit refuse",
        user_limit=2,
        cooldowns_s={"tap": 30, "swipe": 30},
        attempts=(
            admitted(0),
            admitted(1_000, "swipe"),
            refused(2_000, 58),  # cooldown 28 s, limit 58 s
            refused(29_000, 31, "swipe"),  # cooldown 2 s, limit 31 s
            admitted(60_000),
        ),
    ),
)
