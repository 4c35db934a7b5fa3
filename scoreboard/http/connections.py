"""The process's connection counts, against their caps: the only place that changes them.

The listener counts every open connection (`server.max_connections`); the live path counts
WebSockets per user and per client address key (`addresses.address_key`: an IPv6 client counts
by its /64) against `websocket.max_connections_per_user` and `_per_ip`, and how each ended; the
outboxes count the sockets whose kernel buffer is full. Everyone else reads (`/metrics`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from types import MappingProxyType
from typing import Generic, TypeVar

K = TypeVar("K")


class TooManyConnections(Exception):
    """The cap for this user or address is reached: the connection is refused."""


class Held(Generic[K]):
    """One counted WebSocket: leaving the `with` block uncounts it (once)."""

    __slots__ = ("_counts", "_key")

    def __init__(self, counts: dict[K, int], key: K) -> None:
        self._counts: dict[K, int] | None = counts
        self._key = key

    def __enter__(self) -> Held[K]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        counts, self._counts = self._counts, None
        if counts is None:
            return
        remaining = counts[self._key] - 1
        if remaining:
            counts[self._key] = remaining
        else:
            del counts[self._key]


class ConnectionCounts:
    def __init__(self, *, max_per_user: int, max_per_address: int) -> None:
        self._max_per_user = max_per_user
        self._max_per_address = max_per_address
        self._open = 0
        self._per_user: dict[int, int] = {}
        self._per_address: dict[str, int] = {}
        self._closes: Counter[int] = Counter()
        self._backlogged = 0

    def admit(self, limit: int) -> bool:
        """Count a newly accepted connection, unless `limit` are open already (False)."""
        if self._open >= limit:
            return False
        self._open += 1
        return True

    def connection_closed(self) -> None:
        self._open -= 1

    def hold_address(self, key: str) -> Held[str]:
        """Count a WebSocket from the address `key` until the returned `Held` is left.
        `TooManyConnections` (nothing counted) when the address is at its cap."""
        return self._hold(self._per_address, key, self._max_per_address)

    def hold_user(self, user_id: int) -> Held[int]:
        """Count a WebSocket of `user_id` until the returned `Held` is left.
        `TooManyConnections` (nothing counted) when the user is at the cap."""
        return self._hold(self._per_user, user_id, self._max_per_user)

    def _hold(self, counts: dict[K, int], key: K, cap: int) -> Held[K]:
        if counts.get(key, 0) >= cap:
            raise TooManyConnections(key)
        counts[key] = counts.get(key, 0) + 1
        return Held(counts, key)

    def websocket_closed(self, code: int) -> None:
        self._closes[code] += 1

    def backlog_started(self) -> None:
        self._backlogged += 1

    def backlog_ended(self) -> None:
        self._backlogged -= 1

    @property
    def open(self) -> int:
        """Open TCP connections, HTTP and WebSocket."""
        return self._open

    @property
    def websockets(self) -> int:
        return sum(self._per_address.values())

    @property
    def per_user(self) -> Mapping[int, int]:
        return MappingProxyType(self._per_user)

    @property
    def per_ip(self) -> Mapping[str, int]:
        """Open WebSockets per address key."""
        return MappingProxyType(self._per_address)

    @property
    def closes(self) -> Counter[int]:
        """WebSockets closed, by close code (a copy: 0 for codes never seen)."""
        return Counter(self._closes)

    @property
    def backlogged(self) -> int:
        """WebSockets whose kernel send buffer is full."""
        return self._backlogged
