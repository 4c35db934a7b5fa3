"""`FlagDetector`: the behavioural flags, computed incrementally from a stream of decided
attempts. Pure: no I/O, no clock of its own besides the injected one, which only stamps
`raised_at_ms`; everything else is judged on the decisions' times, so the same stream gives the
same flags, whenever and however fast it is replayed.

Per attempt it costs a few operations on short lists and, once per `growth_refresh_s` of the
stream's time, one pass over the users active in the growth window (the population's median and
MAD).
Memory is bounded: each user keeps at most `burst_actions` attempts, `regular_intervals`
intervals and `GROWTH_BUCKETS` sums; each address at most `ADDRESS_USERS_KEPT` users; users and
addresses idle for longer than every window are forgotten, and beyond `max_users` /
`max_addresses` the least recently seen are.
"""

from __future__ import annotations

import array
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from scoreboard.addresses import address_key
from scoreboard.anticheat.records import DecidedAction, Evidence, Flag, FlagKind, subject_of
from scoreboard.anticheat.windows import (
    GROWTH_BUCKETS,
    AddressWindow,
    BurstWindow,
    GrowthWindow,
    IntervalWindow,
    PopulationGrowth,
)
from scoreboard.config import AnticheatConfig

# A redelivered attempt (same action id) is recognized among the user's last this many (by the
# id's low 64 bits).
REMEMBERED_ACTION_IDS = 8
_LOW_64_BITS = (1 << 64) - 1


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class _User:
    __slots__ = ("action_ids", "address", "burst", "growth", "intervals", "ip", "latest_ms")

    def __init__(self, settings: AnticheatConfig) -> None:
        self.latest_ms = 0
        # The last address and its key: parsing an address costs more than all the rest of an
        # attempt's checks, and players mostly keep theirs.
        self.ip = ""
        self.address = ""
        self.action_ids = array.array("Q")
        self.burst = BurstWindow(settings.burst_actions)
        self.intervals = IntervalWindow(settings.regular_intervals)
        self.growth = GrowthWindow()


@dataclass(frozen=True, slots=True)
class DetectorStatistics:
    users: int
    addresses: int
    standing_flags: int
    # The newest decision time seen: the stream's "now".
    watermark_ms: int
    population: PopulationGrowth | None


class FlagDetector:
    """Feed it every decided attempt, in the order decided; it returns the flags each raises.

    A flag stands for `cooloff_s` after it is raised: the same kind for the same user (or
    address) is not raised again meanwhile, unless `clear`ed. After a restart, `restore` the
    flags that still stand."""

    def __init__(self, settings: AnticheatConfig, clock: Callable[[], int]) -> None:
        self._settings = settings
        self._clock = clock
        self._burst_window_ms = _ms(settings.burst_window_s)
        self._growth_window_ms = _ms(settings.growth_window_s)
        self._bucket_ms = max(1, self._growth_window_ms // GROWTH_BUCKETS)
        self._refresh_ms = _ms(settings.growth_refresh_s)
        self._address_window_ms = _ms(settings.shared_address_window_s)
        self._cooloff_ms = _ms(settings.cooloff_s)
        # Every per-user window reaches back at most this far (a user back after longer starts
        # afresh: the long pause would have broken any regularity anyway).
        self._user_forget_ms = max(self._growth_window_ms, self._burst_window_ms)
        self._users: OrderedDict[int, _User] = OrderedDict()
        self._addresses: OrderedDict[str, AddressWindow] = OrderedDict()
        self._standing: dict[tuple[FlagKind, str], int] = {}  # → until (decision time)
        self._watermark_ms = 0
        self._population: PopulationGrowth | None = None
        self._next_refresh_ms: int | None = None

    def observe(self, action: DecidedAction) -> list[Flag]:
        settings = self._settings
        action_id = action.action_id.int & _LOW_64_BITS
        user = self._users.get(action.user_id)
        if user is None:
            user = self._users[action.user_id] = _User(settings)
        elif action_id in user.action_ids:
            return []  # a redelivery: already counted
        else:
            self._users.move_to_end(action.user_id)
        user.action_ids.append(action_id)
        if len(user.action_ids) > REMEMBERED_ACTION_IDS:
            user.action_ids.pop(0)
        # One user's attempts arrive in the order decided; a time earlier than the last one
        # (API processes' clocks differ by milliseconds) counts as simultaneous with it.
        at_ms = max(action.decided_at_ms, user.latest_ms)
        user.latest_ms = at_ms
        self._watermark_ms = max(self._watermark_ms, at_ms)
        if action.ip != user.ip:
            user.ip, user.address = action.ip, address_key(action.ip) if action.ip else ""
        key = user.address

        flags: list[Flag] = []
        burst = user.burst.observe(at_ms, action, self._burst_window_ms)
        if burst is not None:
            self._raise(flags, action.user_id, key, at_ms - burst.span_ms, at_ms, burst)
        regular = user.intervals.observe(at_ms, settings.regular_max_cv)
        if regular is not None:
            self._raise(flags, action.user_id, key, at_ms - regular.span_ms, at_ms, regular)
        if action.accepted and action.score_delta > 0:
            user.growth.add(at_ms, action.score_delta, self._bucket_ms)
        self._refresh_population()
        if action.accepted and action.score_delta > 0 and self._population is not None:
            growth = self._population.judge(
                user.growth.slide(at_ms, self._bucket_ms),
                threshold_z=settings.growth_z,
                min_points=settings.growth_min_points,
                min_population=settings.growth_min_population,
            )
            if growth is not None:
                start_ms = at_ms - self._growth_window_ms
                self._raise(flags, action.user_id, key, start_ms, at_ms, growth)
        if key:
            shared = self._address(key).observe(
                at_ms, action.user_id, self._address_window_ms, settings.shared_address_users
            )
            if shared is not None:
                start_ms = at_ms - self._address_window_ms
                self._raise(flags, None, key, start_ms, at_ms, shared)
        self._forget_idle()
        return flags

    def clear(self, kind: FlagKind, subject: str) -> None:
        """The operator cleared the flag: the next occurrence raises it again."""
        self._standing.pop((kind, subject), None)

    def restore(self, flags: Iterable[Flag]) -> None:
        """Flags raised before a restart stand until their cool-off ends."""
        for flag in flags:
            entry = (flag.kind, flag.subject)
            until_ms = flag.window_end_ms + self._cooloff_ms
            self._standing[entry] = max(until_ms, self._standing.get(entry, until_ms))

    def statistics(self) -> DetectorStatistics:
        return DetectorStatistics(
            users=len(self._users),
            addresses=len(self._addresses),
            standing_flags=len(self._standing),
            watermark_ms=self._watermark_ms,
            population=self._population,
        )

    def _raise(
        self,
        flags: list[Flag],
        user_id: int | None,
        key: str,
        start_ms: int,
        end_ms: int,
        evidence: Evidence,
    ) -> None:
        entry = (evidence.KIND, subject_of(user_id, key))
        if self._standing.get(entry, end_ms) > end_ms:
            return
        self._standing[entry] = end_ms + self._cooloff_ms
        flags.append(Flag(user_id, key, start_ms, end_ms, self._clock(), evidence))

    def _address(self, key: str) -> AddressWindow:
        window = self._addresses.get(key)
        if window is None:
            window = self._addresses[key] = AddressWindow()
        else:
            self._addresses.move_to_end(key)
        return window

    def _refresh_population(self) -> None:
        now_ms = self._watermark_ms
        if self._next_refresh_ms is not None and now_ms < self._next_refresh_ms:
            return
        self._next_refresh_ms = now_ms + self._refresh_ms
        active_since = now_ms - self._growth_window_ms
        points = [
            user.growth.slide(now_ms, self._bucket_ms)
            for user in self._users.values()
            if user.latest_ms >= active_since
        ]
        self._population = PopulationGrowth.of(points, now_ms)
        self._standing = {entry: until for entry, until in self._standing.items() if until > now_ms}

    def _forget_idle(self) -> None:
        users, addresses = self._users, self._addresses
        user_cutoff = self._watermark_ms - self._user_forget_ms
        while users and (
            len(users) > self._settings.max_users
            or next(iter(users.values())).latest_ms < user_cutoff
        ):
            users.popitem(last=False)
        address_cutoff = self._watermark_ms - self._address_window_ms
        while addresses and (
            len(addresses) > self._settings.max_addresses
            or next(iter(addresses.values())).last_seen_ms < address_cutoff
        ):
            addresses.popitem(last=False)
