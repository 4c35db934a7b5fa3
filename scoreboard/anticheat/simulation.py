"""Scripted players and cheaters, judged by the user actor's own rules (`Ledger`: the
catalogue, its cooldowns, the per-user limit), feeding a `FlagDetector`: which cheaters the flags
catch, and how many people who play normally they flag. Deterministic for a seed: every player
draws from a random stream of its own, so the first N players of two populations are the same
people whatever else the populations hold.

Each player is a generator that yields its next attempt and is sent the decision about it, so
people react to refusals as the web page makes them (a rate-limit refusal blocks the buttons for
`retry_after_s`). What a normal player does (docs/anticheat.md discusses it):

- plays in sessions (median 20 min, log-normal) separated by breaks (median 90 min);
- between actions thinks for a log-normal time around a median of its own (4 s to 3 min);
- sometimes clicks again at once (a double click, now and then mashing 2 to 4 more times at about
  6 clicks a second), sometimes chains two actions within a second;
- a quarter of players grind now and then: the same action again the moment its cooldown ends,
  after a human reaction time (ex-Gaussian: 270 ms ± 40 ms plus an exponential tail of 110 ms);
- lives at an address of its own, or shares it with 1 to 6 others (a household, an office);
  some are on IPv6 with a new address within their /64 every session, some on a mobile carrier
  whose few public addresses many subscribers share in turn.

The cheaters, each meant to raise its own flags (`EXPECTED`): a player who sends bursts at
machine speed now and then, a metronome (one cheap action every 15 to 30 s, to a few
milliseconds), a score farmer (the richest action at the highest pace the limits allow, at
irregular intervals), one that does all three, and an account farm (12 accounts playing from one
address within the same hour).
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
import random
import uuid
from collections import Counter
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from scoreboard.actors.user import Ledger
from scoreboard.anticheat.detector import FlagDetector
from scoreboard.anticheat.records import DecidedAction, Flag, FlagKind, SharedAddressEvidence
from scoreboard.catalogue import ActionType, Catalogue
from scoreboard.config import Config
from scoreboard.records import ActionEnvelope, Decision

SIM_START_MS = 1_767_571_200_000  # 2026-01-05T00:00:00Z
MINUTE_MS = 60_000

Role = Literal["normal", "burst_bot", "metronome", "score_farmer", "all_in_one", "account_farm"]
CHEATER_ROLES: tuple[Role, ...] = ("burst_bot", "metronome", "score_farmer", "all_in_one")
EXPECTED: dict[Role, frozenset[FlagKind]] = {
    "normal": frozenset(),
    "burst_bot": frozenset({"burst"}),
    "metronome": frozenset({"regular_intervals"}),
    "score_farmer": frozenset({"score_growth"}),
    "all_in_one": frozenset({"burst", "regular_intervals", "score_growth"}),
    # The farm's accounts each play like people: the flag is on their address.
    "account_farm": frozenset(),
}


@dataclass(frozen=True, slots=True)
class Attempt:
    at_ms: int
    action_type: str
    ip: str


Script = Generator[Attempt, Decision, None]


@dataclass(frozen=True, slots=True)
class Player:
    user_id: int
    role: Role
    script: Script


@dataclass(frozen=True, slots=True)
class Scenario:
    seed: int
    normal_players: int = 1000
    duration_s: float = 2 * 3600.0
    cheaters_per_role: int = 2
    farm_accounts: int = 12


@dataclass(slots=True)
class Outcome:
    """What a run produced: every attempt as the detector saw it, every flag, and the volume,
    per role."""

    roles: dict[int, Role]
    actions: list[DecidedAction] = field(default_factory=list)
    flags: list[Flag] = field(default_factory=list)
    attempts: Counter[Role] = field(default_factory=Counter)
    accepted: Counter[Role] = field(default_factory=Counter)
    points: Counter[int] = field(default_factory=Counter)

    @property
    def total_attempts(self) -> int:
        return sum(self.attempts.values())

    def user_flags(self, role: Role) -> dict[int, set[FlagKind]]:
        """The kinds flagged per user of the role (users never flagged left out)."""
        flagged: dict[int, set[FlagKind]] = {}
        for flag in self.flags:
            if flag.user_id is not None and self.roles[flag.user_id] == role:
                flagged.setdefault(flag.user_id, set()).add(flag.kind)
        return flagged

    def address_flags(self, *, farmed: bool) -> list[Flag]:
        """Address flags that name an account of a farm (`farmed`), or none (false ones)."""
        return [
            flag
            for flag in self.flags
            if isinstance(flag.evidence, SharedAddressEvidence)
            and farmed == any(self.roles[user] == "account_farm" for user in flag.evidence.user_ids)
        ]

    def false_positives(self) -> tuple[int, int, Counter[FlagKind]]:
        """Normal players flagged, addresses flagged without a farm account, and the flags
        raised against either, by kind."""
        normal = self.user_flags("normal")
        addresses = self.address_flags(farmed=False)
        by_kind: Counter[FlagKind] = Counter(kind for kinds in normal.values() for kind in kinds)
        by_kind.update("shared_address" for _ in addresses)
        return len(normal), len(addresses), by_kind


def run(players: Sequence[Player], *, config: Config, catalogue: Catalogue) -> Outcome:
    """Every player's attempts, in time order, decided by a `Ledger` per player and fed to one
    `FlagDetector` whose clock is the simulated time."""
    now_ms = SIM_START_MS
    detector = FlagDetector(config.anticheat, clock=lambda: now_ms)
    outcome = Outcome(roles={player.user_id: player.role for player in players})
    ledgers = [Ledger(catalogue, config) for _ in players]
    pending: list[Attempt] = []
    queue: list[tuple[int, int]] = []
    for index, player in enumerate(players):
        pending.append(next(player.script))
        queue.append((pending[index].at_ms, index))
    heapq.heapify(queue)
    serial = 0
    while queue:
        now_ms, index = heapq.heappop(queue)
        player, attempt, ledger = players[index], pending[index], ledgers[index]
        serial += 1
        action_id = uuid.UUID(int=serial)
        envelope = ActionEnvelope(
            action_id=action_id,
            user_id=player.user_id,
            action_type=attempt.action_type,
            action_data=_action_data(catalogue.types[attempt.action_type], attempt.at_ms, serial),
            nonce=action_id.hex,
            received_at_ms=attempt.at_ms,
            ip=attempt.ip,
        )
        since = ledger.history_needed_since(envelope.received_at_ms)
        if since is not None:
            ledger.add_history(since, [])
        decision = ledger.decide(envelope)
        action = DecidedAction.from_decision(decision, catalogue)
        outcome.actions.append(action)
        outcome.attempts[player.role] += 1
        if action.accepted:
            outcome.accepted[player.role] += 1
            outcome.points[player.user_id] += action.score_delta
        outcome.flags.extend(detector.observe(action))
        try:
            following = player.script.send(decision)
        except StopIteration:
            continue
        if following.at_ms < attempt.at_ms:
            raise ValueError(f"user {player.user_id}'s script went back in time")
        pending[index] = following
        heapq.heappush(queue, (following.at_ms, index))
    return outcome


def _action_data(entry: ActionType, at_ms: int, serial: int) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for name, kind in entry.fields:
        if kind == "string":
            data[name] = f"{name}-{serial}"
        elif kind == "integer":
            data[name] = 1 + serial % 5
        else:
            data[name] = at_ms // 1000 - serial % 3
    return data


def build(scenario: Scenario, catalogue: Catalogue) -> list[Player]:
    """The normal players first (user ids 1…N), then the cheaters and the account farm."""
    start_ms = SIM_START_MS
    end_ms = start_ms + round(scenario.duration_s * 1000)
    types = tuple(catalogue.types.values())
    addresses = _AddressBook(random.Random(f"{scenario.seed}:addresses"))
    players: list[Player] = []

    def rng_of(user_id: int) -> random.Random:
        return random.Random(f"{scenario.seed}:{user_id}")

    for user_id in range(1, scenario.normal_players + 1):
        rng = rng_of(user_id)
        script = _human(rng, addresses.home_of(user_id), types, start_ms, end_ms)
        players.append(Player(user_id, "normal", script))
    user_id = scenario.normal_players
    for role in CHEATER_ROLES:
        for _ in range(scenario.cheaters_per_role):
            user_id += 1
            rng = rng_of(user_id)
            address = addresses.home_of(user_id)
            players.append(
                Player(user_id, role, _cheater(role, rng, address, types, start_ms, end_ms))
            )
    farm_address = addresses.dedicated()
    farm_start_ms = start_ms + (end_ms - start_ms) // 3
    for _ in range(scenario.farm_accounts):
        user_id += 1
        rng = rng_of(user_id)
        first_ms = farm_start_ms + rng.randrange(15 * MINUTE_MS)
        script = _human(
            rng,
            farm_address,
            types,
            first_ms,
            first_ms + rng.randrange(30 * MINUTE_MS, 50 * MINUTE_MS),
            first_session_ms=first_ms,
        )
        players.append(Player(user_id, "account_farm", script))
    return players


def _cheater(
    role: Role,
    rng: random.Random,
    address: Callable[[], str],
    types: Sequence[ActionType],
    start_ms: int,
    end_ms: int,
) -> Script:
    match role:
        case "burst_bot":
            return _human(rng, address, types, start_ms, end_ms, burst_probability=0.1)
        case "metronome":
            return _metronome(rng, address(), types, start_ms, end_ms)
        case "score_farmer":
            return _score_farmer(rng, address(), types, start_ms, end_ms)
        case "all_in_one":
            return _all_in_one(rng, address(), types, start_ms, end_ms)
        case _:
            raise ValueError(f"{role} is not a cheater")


def _seconds(value: float) -> int:
    return round(value * 1000)


def _reaction_ms(rng: random.Random) -> int:
    """A person's reaction time: ex-Gaussian, the shape measured reaction times have."""
    return max(150, round(rng.gauss(270, 40) + rng.expovariate(1 / 110)))


def _after(decision: Decision) -> int:
    """How long the web page keeps the buttons blocked after this decision."""
    return _seconds(decision.outcome.retry_after_s or 0)


def _human(
    rng: random.Random,
    address: Callable[[], str],
    types: Sequence[ActionType],
    start_ms: int,
    end_ms: int,
    *,
    burst_probability: float = 0.0,
    first_session_ms: int | None = None,
) -> Script:
    think_median_s = min(180.0, max(4.0, rng.lognormvariate(math.log(20), 0.6)))
    think_sigma = rng.uniform(0.5, 1.0)
    session_median_s = rng.lognormvariate(math.log(20 * 60), 0.4)
    break_median_s = rng.lognormvariate(math.log(90 * 60), 0.4)
    preference = list(itertools.accumulate(rng.uniform(0.2, 1.0) for _ in types))

    def favourite() -> ActionType:
        return types[bisect.bisect(preference, rng.random() * preference[-1])]

    grinder = rng.random() < 0.25
    if first_session_ms is None:
        at = start_ms + round(rng.uniform(0.0, 0.95) * (end_ms - start_ms))
    else:
        at = first_session_ms
    while at < end_ms:
        session_end = min(
            end_ms, at + _seconds(rng.lognormvariate(math.log(session_median_s), 0.6))
        )
        ip = address()
        grind_left = round(min(60.0, rng.lognormvariate(math.log(12), 0.6))) if grinder else 0
        if rng.random() < 0.5:
            grind_left = 0
        entry = favourite()
        while at < session_end:
            decision = yield Attempt(at, entry.name, ip)
            if burst_probability and rng.random() < burst_probability:
                for step in range(rng.randint(8, 15)):
                    at += rng.randint(1, 8)
                    decision = yield Attempt(at, types[step % len(types)].name, ip)
            roll = rng.random()
            if roll < 0.03:
                for _ in range(1 if rng.random() < 0.7 else rng.randint(2, 4)):
                    at += max(70, round(rng.gauss(160, 40)))
                    decision = yield Attempt(at, entry.name, ip)
            if grind_left > 0:
                grind_left -= 1
                if decision.outcome.status == "completed":
                    at += _seconds(entry.cooldown_s) + _reaction_ms(rng)
                else:
                    at += max(_after(decision), 1000) + _reaction_ms(rng)
                continue
            if roll > 0.95:
                at += max(_after(decision), rng.randint(300, 900))
            else:
                think_s = rng.lognormvariate(math.log(think_median_s), think_sigma)
                at += max(_after(decision), _seconds(think_s))
            entry = favourite()
        at = session_end + _seconds(rng.lognormvariate(math.log(break_median_s), 0.6))


def _metronome(
    rng: random.Random, ip: str, types: Sequence[ActionType], start_ms: int, end_ms: int
) -> Script:
    cheap = sorted(types, key=lambda entry: entry.points)[:2]
    period_ms = rng.randint(15_000, 30_000)
    scheduled = start_ms + rng.randrange(10 * MINUTE_MS)
    last = scheduled
    step = 0
    while scheduled < end_ms:
        # A script's requests still cross a network: a few milliseconds of jitter.
        last = max(last, scheduled + round(rng.gauss(0, 5)))
        yield Attempt(last, cheap[step % len(cheap)].name, ip)
        step += 1
        scheduled += period_ms


def _richest_ready(
    types: Sequence[ActionType], completed_at: dict[str, int], at_ms: int
) -> ActionType:
    ready = [
        entry
        for entry in types
        if at_ms - completed_at.get(entry.name, -(10**15)) >= entry.cooldown_s * 1000
    ]
    return max(ready or types, key=lambda entry: entry.points)


def _score_farmer(
    rng: random.Random, ip: str, types: Sequence[ActionType], start_ms: int, end_ms: int
) -> Script:
    at = start_ms + rng.randrange(10 * MINUTE_MS)
    completed_at: dict[str, int] = {}
    while at < end_ms:
        entry = _richest_ready(types, completed_at, at)
        decision = yield Attempt(at, entry.name, ip)
        if decision.outcome.status == "completed":
            completed_at[entry.name] = at
        at += max(_after(decision), rng.randint(5_500, 9_000))


def _all_in_one(
    rng: random.Random, ip: str, types: Sequence[ActionType], start_ms: int, end_ms: int
) -> Script:
    richest = max(types, key=lambda entry: entry.points)
    at = start_ms + rng.randrange(10 * MINUTE_MS)
    beats = 0
    while at < end_ms:
        beats += 1
        yield Attempt(at, richest.name, ip)
        if beats % 30 == 0:
            burst_at = at
            for step in range(12):
                burst_at += rng.randint(1, 5)
                yield Attempt(burst_at, types[step % len(types)].name, ip)
        at += 6_000


class _AddressBook:
    """Where players connect from: most alone at an address of their own; some share one with
    1 to 6 others; some on IPv6, a new address within their /64 each session; some on a mobile
    carrier whose public addresses are handed to subscribers in turn."""

    GROUP_SIZES = (1, 2, 3, 4, 5, 6, 7)
    GROUP_WEIGHTS = (0.80, 0.09, 0.05, 0.03, 0.015, 0.01, 0.005)
    IPV6_SHARE = 0.3
    MOBILE_SHARE = 0.08
    CARRIER_ADDRESSES = 40

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._allocated = 0
        self._group_left = 0
        self._group_address: Callable[[], str] = self.dedicated()
        carrier = [f"203.0.113.{n}" for n in range(10, 10 + self.CARRIER_ADDRESSES)]
        self._carrier = carrier

    def dedicated(self) -> Callable[[], str]:
        """A new household: its address (or, on IPv6, a fresh one in its /64) per session."""
        self._allocated += 1
        n = self._allocated
        if self._rng.random() < self.IPV6_SHARE:
            prefix = f"2001:db8:{n >> 16:x}:{n & 0xFFFF:x}"
            session_rng = random.Random(f"ipv6:{prefix}")

            def privacy_address() -> str:
                suffix = ":".join(f"{session_rng.getrandbits(16):x}" for _ in range(4))
                return f"{prefix}:{suffix}"

            return privacy_address
        address = f"198.{18 + (n >> 16 & 1)}.{n >> 8 & 0xFF}.{n & 0xFF}"
        return lambda: address

    def home_of(self, user_id: int) -> Callable[[], str]:
        if self._rng.random() < self.MOBILE_SHARE:
            session_rng = random.Random(f"carrier:{user_id}")
            return lambda: session_rng.choice(self._carrier)
        if self._group_left == 0:
            self._group_left = self._rng.choices(self.GROUP_SIZES, self.GROUP_WEIGHTS)[0]
            self._group_address = self.dedicated()
        self._group_left -= 1
        return self._group_address
