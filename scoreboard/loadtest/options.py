"""The options of `scoreboard loadtest`."""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass
from datetime import UTC, datetime

DESCRIPTION = """\
Load-test a running scoreboard server from outside, knowing only its wire contract: sign in
--users players through the OAuth authorization code flow with PKCE (registering them, or reusing
them when they exist), open --clients authenticated WebSockets that watch the live top 10 (offering
permessage-deflate as browsers do), send actions at an open-loop --rate for --duration seconds,
wait for every accepted action to be processed, and check that each was counted exactly once.

The first --leaders players get a head start so that they lead the board; the time from sending
one of their actions until each socket shows it is the action-to-screen latency.

Prints a table and one JSON line on stdout, writes a latency-over-time chart (HTML with inline
SVG) and, with --json, the JSON to a file. Exit status: 0 when every check passed, 1 when a
correctness check failed, 3 when the run could not be done as asked (the server refused sockets,
users or actions: the message says which setting to raise).

The server under test should run with SCOREBOARD_LIMITS_ENABLED=false and WebSocket caps above
what the run opens from this one address (SCOREBOARD_WEBSOCKET_MAX_CONNECTIONS_PER_IP >= clients
+ users, SCOREBOARD_WEBSOCKET_MAX_CONNECTIONS_PER_USER >= clients per player + 1).
"""

MIN_LEADER_RATE = 20.0  # leader actions per second: the top 10 changes every 100 ms tick
LEADER_SHARE = 0.1
CLIENTS_PER_PROCESS = 2500


@dataclass(frozen=True)
class Options:
    url: str
    origin: str | None
    users: int
    leaders: int
    clients: int
    rate: float
    duration_s: float
    transport: str
    leader_rate: float | None
    client_processes: int | None
    http_connections: int
    user_prefix: str
    password: str
    server_pid: int | None
    drain_timeout_s: float
    screen_bound_s: float
    offer_deflate: bool
    json_path: str | None
    chart_path: str | None
    quiet: bool
    connect_concurrency: int
    setup_concurrency: int
    request_timeout_s: float
    connect_timeout_s: float

    @property
    def effective_leader_rate(self) -> float:
        if self.rate <= 0:
            return 0.0
        wanted = self.leader_rate
        if wanted is None:
            wanted = max(MIN_LEADER_RATE, LEADER_SHARE * self.rate)
        return min(wanted, self.rate)

    @property
    def processes(self) -> int:
        if self.client_processes is not None:
            return max(1, self.client_processes)
        needed = math.ceil(self.clients / CLIENTS_PER_PROCESS)
        return max(1, min(needed, os.cpu_count() or 1))

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> Options:
        return cls(
            url=args.url.rstrip("/"),
            origin=args.origin.rstrip("/") if args.origin else None,
            users=args.users,
            leaders=args.leaders,
            clients=args.clients,
            rate=args.rate,
            duration_s=args.duration,
            transport=args.transport,
            leader_rate=args.leader_rate,
            client_processes=args.client_processes,
            http_connections=args.http_connections,
            user_prefix=args.user_prefix,
            password=args.password,
            server_pid=args.server_pid,
            drain_timeout_s=args.drain_timeout,
            screen_bound_s=args.screen_bound,
            offer_deflate=not args.no_deflate,
            json_path=args.json,
            chart_path=None
            if args.no_chart
            else args.chart or f"loadtest-{datetime.now(UTC):%Y%m%d-%H%M%S}.html",
            quiet=args.quiet,
            connect_concurrency=args.connect_concurrency,
            setup_concurrency=args.setup_concurrency,
            request_timeout_s=args.request_timeout,
            connect_timeout_s=args.connect_timeout,
        )


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0 or math.isinf(value):
        raise argparse.ArgumentTypeError("must be a finite number, 0 or more")
    return value


def _positive(text: str) -> float:
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    target = parser.add_argument_group("target")
    target.add_argument(
        "--url",
        default="http://127.0.0.1:8000",
        help="the server's base URL, plain http (default: %(default)s)",
    )
    target.add_argument(
        "--origin",
        help="the Origin header of the WebSockets and the origin of the OAuth redirect URI "
        "<origin>/callback: the server's SCOREBOARD_PUBLIC_ORIGIN (default: the --url's origin)",
    )
    target.add_argument(
        "--server-pid",
        type=int,
        help="measure the CPU and memory of this process and its descendants (default: the "
        "processes listening on the --url's port, with their `scoreboard serve` parent and "
        "its children, when the server runs on this machine)",
    )

    load = parser.add_argument_group("load")
    load.add_argument(
        "--users",
        type=_positive_int,
        default=200,
        help="players to register or reuse and sign in (default: %(default)s)",
    )
    load.add_argument(
        "--leaders",
        type=_positive_int,
        default=10,
        help="how many of the players lead the board (they get a head start and the "
        "higher-scoring action type); their actions are the ones whose action-to-screen "
        "latency is measured (default: %(default)s, at most --users - 1)",
    )
    load.add_argument(
        "--clients",
        type=_non_negative_int,
        default=100,
        help="authenticated WebSockets that watch the board, signed in as the players other "
        "than the leaders, round robin (default: %(default)s)",
    )
    load.add_argument(
        "--rate",
        type=_non_negative,
        default=200.0,
        help="actions per second, open loop: each is sent when due whether or not earlier ones "
        "were answered, and latencies count from that moment; 0 sends none (idle sockets) "
        "(default: %(default)s)",
    )
    load.add_argument(
        "--duration",
        type=_positive,
        default=20.0,
        help="seconds of sending (and of measuring idle sockets with --rate 0) "
        "(default: %(default)s)",
    )
    load.add_argument(
        "--transport",
        choices=("http", "ws", "mixed"),
        default="http",
        help="send actions with POST /api/v1/actions/perform over keep-alive connections, as "
        "action messages on each player's WebSocket, or alternately both (default: %(default)s)",
    )
    load.add_argument(
        "--leader-rate",
        type=_non_negative,
        help=f"the leaders' share of --rate, actions per second (default: "
        f"{LEADER_SHARE * 100:.0f}%% of --rate, at least {MIN_LEADER_RATE:g}/s so that the top 10 "
        "changes at every update tick, at most --rate)",
    )
    load.add_argument(
        "--no-deflate",
        action="store_true",
        help="do not offer permessage-deflate on the WebSockets (by default they offer it the "
        "way browsers do: 'permessage-deflate; client_max_window_bits')",
    )

    client = parser.add_argument_group("load generator")
    client.add_argument(
        "--client-processes",
        type=_positive_int,
        help="worker processes that hold the watching WebSockets (default: one per "
        f"{CLIENTS_PER_PROCESS} clients, at most the number of CPUs)",
    )
    client.add_argument(
        "--http-connections",
        type=_positive_int,
        default=64,
        help="keep-alive connections that carry HTTP actions; a request waits for a free one, "
        "and that wait counts in its latency (default: %(default)s)",
    )
    client.add_argument(
        "--connect-concurrency",
        type=_positive_int,
        default=200,
        help="WebSocket handshakes in flight per worker process (default: %(default)s)",
    )
    client.add_argument(
        "--setup-concurrency",
        type=_positive_int,
        default=8,
        help="registrations and sign-ins in flight (password hashing is the server's "
        "slowest request) (default: %(default)s)",
    )
    client.add_argument(
        "--user-prefix",
        default="loadtest-",
        help="players are named <prefix><number>; existing ones are reused (default: %(default)s)",
    )
    client.add_argument(
        "--password",
        default="loadtest-password",
        help="the players' password (10 to 128 characters) (default: %(default)s)",
    )
    client.add_argument(
        "--request-timeout",
        type=_positive,
        default=10.0,
        help="seconds before an HTTP request counts as timed out; its action is then resent "
        "with the same nonce at the end, as the contract asks (default: %(default)s)",
    )
    client.add_argument(
        "--connect-timeout",
        type=_positive,
        default=60.0,
        help="seconds for one WebSocket to connect, upgrade and authenticate "
        "(default: %(default)s)",
    )

    measure = parser.add_argument_group("measuring")
    measure.add_argument(
        "--drain-timeout",
        type=_non_negative,
        default=60.0,
        help="seconds to wait after the last action for every accepted action to be processed "
        "(default: %(default)s)",
    )
    measure.add_argument(
        "--screen-bound",
        type=_positive,
        default=5.0,
        help="an action not on a socket's screen within this many seconds counts as not "
        "arrived in time (default: %(default)s)",
    )

    output = parser.add_argument_group("output")
    output.add_argument("--json", metavar="FILE", help="also write the JSON result to FILE")
    output.add_argument(
        "--chart",
        metavar="FILE",
        help="where to write the latency-over-time chart, a self-contained HTML file "
        "(default: loadtest-<UTC date and time>.html in the current directory)",
    )
    output.add_argument("--no-chart", action="store_true", help="do not write the chart")
    output.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bar (there is none either when stderr is not a terminal)",
    )
