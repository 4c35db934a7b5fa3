"""Everything a request handler may use, built once by the application wiring (`server.py`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio
from quart import current_app

from scoreboard.actors.auditor import AuditHandle
from scoreboard.actors.hub import BroadcastStats, HubHandle
from scoreboard.actors.publisher import PublisherHandle
from scoreboard.actors.revocations import DenyList
from scoreboard.adapters.interfaces import Board, Broker, EdgeGuard, Store
from scoreboard.auth.keys import KeyRing
from scoreboard.auth.passwords import Passwords
from scoreboard.auth.token_cache import VerifiedTokens
from scoreboard.catalogue import Catalogue
from scoreboard.config import Config
from scoreboard.http.connections import ConnectionCounts
from scoreboard.intake import Intake

if TYPE_CHECKING:
    from scoreboard.http.ops import Observed


@dataclass(frozen=True)
class Services:
    """The API's dependencies: the backends, the actors it calls (the hub and the publisher,
    through their client functions), the intake of actions (`scoreboard/intake.py`), what the
    operations endpoints report on, and the objects that own the process's shared state (the
    deny-list, the connection counts, the hub's figures)."""

    config: Config
    catalogue: Catalogue
    store: Store
    board: Board
    guard: EdgeGuard
    broker: Broker
    keyring: KeyRing
    verified_tokens: VerifiedTokens
    passwords: Passwords
    hub: HubHandle
    publisher: PublisherHandle
    auditor: AuditHandle
    intake: Intake
    deny_list: DenyList
    observed: Observed
    """What the operations endpoints report on (the supervision tree, the metrics)."""
    public_origin: str
    """The origin the page, the OAuth redirect URI and the WebSocket allow-list use: configured
    (`public.origin`), else the URL the listening socket was bound to."""
    connections: ConnectionCounts
    broadcast: BroadcastStats
    # One rebuild of a missing leaderboard at a time (`http/leaderboard.py`).
    board_rebuild: trio.Lock = field(default_factory=trio.Lock)


def current_services() -> Services:
    """The `Services` of the application handling the current request or WebSocket."""
    found: Services = current_app.config["SERVICES"]
    return found
