"""Everything a request handler may use, built once by the application wiring."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import trio
from quart import current_app

from scoreboard.actors.hub import BroadcastStats
from scoreboard.actors.messages import HubMsg, PublisherMsg
from scoreboard.adapters.interfaces import Board, Broker, EdgeGuard, Store
from scoreboard.auth.keys import KeyRing
from scoreboard.auth.passwords import Passwords
from scoreboard.auth.revocations import RevocationList
from scoreboard.auth.token_cache import VerifiedTokens
from scoreboard.catalogue import Catalogue
from scoreboard.config import Config
from scoreboard.supervisor import ChildStatistics


@dataclass
class ConnectionCounts:
    """Open connections: all of them (the process-wide cap), and WebSockets per user and per
    client address key (`requests.address_key`: an IPv6 client counts by its /64), for their
    caps; how WebSockets ended, by close code; how many wait for a full kernel buffer."""

    open: int = 0
    per_user: dict[int, int] = field(default_factory=dict)
    per_ip: dict[str, int] = field(default_factory=dict)
    closes: Counter[int] = field(default_factory=Counter)
    backlogged: int = 0


@dataclass
class Services:
    config: Config
    catalogue: Catalogue
    store: Store
    board: Board
    guard: EdgeGuard
    broker: Broker
    keyring: KeyRing
    passwords: Passwords
    hub: trio.MemorySendChannel[HubMsg]
    publisher: trio.MemorySendChannel[PublisherMsg]
    statistics: Callable[[], list[ChildStatistics]]
    all_running: Callable[[], bool]
    public_origin: str
    connections: ConnectionCounts = field(default_factory=ConnectionCounts)
    broadcast: BroadcastStats = field(default_factory=BroadcastStats)
    revocations: RevocationList = field(default_factory=RevocationList)
    # One rebuild of a missing leaderboard at a time (`http/leaderboard.py`).
    board_rebuild: trio.Lock = field(default_factory=trio.Lock)
    verified_tokens: VerifiedTokens = field(init=False)

    def __post_init__(self) -> None:
        self.verified_tokens = VerifiedTokens(self.keyring, self.config)


def current_services() -> Services:
    """The `Services` of the application handling the current request or WebSocket."""
    found: Services = current_app.config["SERVICES"]
    return found
