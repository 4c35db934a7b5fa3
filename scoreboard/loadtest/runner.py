"""One load test from start to end: players, sockets, the open-loop schedule, the drain, the
resolution of unknown outcomes, the correctness check and the figures."""

from __future__ import annotations

import math
import os
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

import orjson
import trio

from scoreboard.loadtest.accounts import Account, SetupError, SignIn
from scoreboard.loadtest.fleet import FleetFigures, WatcherProcess, WorkerFailed, start_watchers
from scoreboard.loadtest.http11 import HttpConnection, HttpError, HttpPool, Origin, json_post
from scoreboard.loadtest.ledger import Action, Ledger
from scoreboard.loadtest.options import Options
from scoreboard.loadtest.players import WS_PATH, PlayerSocket, SocketRefused
from scoreboard.loadtest.procstats import TreeSample
from scoreboard.loadtest.progress import Progress
from scoreboard.loadtest.sampler import SATURATED, Sampler

T = TypeVar("T")

WINDOW_LEAD_S = 0.3  # between telling the watchers the window and the first action
SETTLE_AFTER_CONNECT_S = 1.0  # before reading the server's memory with every socket open
FINAL_UPDATE_GRACE_S = 1.0  # after the last outcome, for the last snapshot to reach screens
BOARD_CONVERGENCE_S = 15.0  # the board follows the store a moment after the commit
DRAIN_POLL_S = 0.25
MIN_CHART_INTERVAL_S = 0.5
PROBE_AFTER_S = 2.0  # of draining, before asking the server for outcomes the sockets lack
PROBE_INTERVAL_S = 1.0
PROBE_ACTIONS = 16
REFRESH_RETRY_S = 30.0
RESOLVE_DEADLINE_S = 30.0  # for resending unknown outcomes, and for asking missing ones
PERFORM_PATH = "/api/v1/actions/perform"
NOT_SENT_NO_CONNECTION = "not sent (no free connection within --request-timeout)"
NOT_SENT_OUTBOX_FULL = "not sent (the player socket's outbox was full)"
RESOLVE_CONCURRENCY = 16
MAX_PRIMING_PER_LEADER = 2000
TRACKED_ENTRIES_PER_PROCESS = 4_000_000  # snapshot arrivals kept for action-to-screen
PAIRS_PER_PROCESS = 4_000_000  # (action, socket) pairs evaluated per watcher process
EXPECTED_UPDATES_PER_S = 10
CAP_HINTS = {
    "per_ip": "SCOREBOARD_WEBSOCKET_MAX_CONNECTIONS_PER_IP",
    "per_user": "SCOREBOARD_WEBSOCKET_MAX_CONNECTIONS_PER_USER",
}


class RunRefused(Exception):
    """The run cannot be done as asked; the message says what to change."""


@dataclass(frozen=True)
class ActionType:
    name: str
    points: int
    fields: dict[str, str]
    # The catalogue's rules (`GET /api/v1/actions/types`): what makes an action count once, and
    # the bounds of integer fields.
    unique: tuple[str, ...] = ()
    minimums: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_catalogue(cls, entry: dict[str, Any]) -> ActionType:
        rules = entry.get("rules") or {}
        return cls(
            entry["action_type"],
            int(entry["points"]),
            dict(entry.get("fields", {})),
            tuple(rules.get("unique", ())),
            {name: int(bounds["min"]) for name, bounds in rules.get("ranges", {}).items()},
        )

    @property
    def repeatable(self) -> bool:
        """Whether a player may perform it many times a run: not once per UTC day."""
        return "utc_day" not in self.unique

    def data(self, unique_value: str) -> dict[str, Any]:
        """Action data that passes the type's rules; `unique_value` differs for every action of
        every run, so that no action repeats another one's unique fields."""
        values: dict[str, Any] = {}
        for name, kind in self.fields.items():
            if kind == "integer":
                values[name] = max(1, self.minimums.get(name, 1))
            elif kind == "unix_seconds":
                values[name] = int(time.time())
            else:
                values[name] = unique_value
        return values


async def gather_limited(
    jobs: Sequence[Callable[[], Awaitable[T]]], limit: int, on_done: Callable[[], None]
) -> list[T]:
    """Run the jobs with at most `limit` in flight; results in the jobs' order."""
    results: list[Any] = [None] * len(jobs)
    limiter = trio.CapacityLimiter(limit)

    async def one(index: int) -> None:
        async with limiter:
            results[index] = await jobs[index]()
            on_done()

    async with trio.open_nursery() as nursery:
        for index in range(len(jobs)):
            nursery.start_soon(one, index)
    return results


class LoadTest:
    def __init__(self, options: Options) -> None:
        self.options = options
        self.origin = Origin.parse(options.url)
        self.origin_header = options.origin or self.origin.url
        self.ledger = Ledger()
        self.progress = Progress(enabled=not options.quiet)
        self.warnings: list[str] = []
        self.run_id = uuid.uuid4().hex[:8]
        self.accounts: list[Account] = []
        self.sockets: list[PlayerSocket] = []
        self.created = 0
        self.readyz: dict[str, Any] = {}
        self.limits_enabled: bool | None = None
        self.leader_type = ActionType("", 0, {})
        self.player_type = ActionType("", 0, {})
        self.baseline: dict[int, int] = {}
        self.final: dict[int, int] = {}
        self.board_convergence_s: float | None = None
        self.setup_s = 0.0
        self.priming = 0
        self.token_refreshes = 0
        self.phases_s: dict[str, float] = {}
        self._lap_started = time.monotonic()
        self.dispatch_lags: list[float] = []
        self.not_sent = 0
        self.resolution: Counter[str] = Counter()
        self.window_start = 0.0
        self.window_end = 0.0
        self.last_processed_at: float | None = None
        self.backlog_at_window_end = 0
        self._post_heads: dict[str, bytes] = {}
        self.drain_s: float | None = None
        self.drained = True
        self.watchers: list[WatcherProcess] = []
        self.fleet = FleetFigures()
        self.memory: dict[str, Any] = {}
        self.sampler = Sampler.for_server(self.origin.port, options.server_pid)
        self.correctness: list[dict[str, Any]] = []
        self.leaderboard_check: dict[str, Any] = {}

    # -- helpers

    def lap(self, phase: str) -> None:
        """How long each phase took: where a run's time goes."""
        now = time.monotonic()
        self.phases_s[phase] = round(now - self._lap_started, 2)
        self._lap_started = now

    @property
    def leaders(self) -> list[Account]:
        return self.accounts[: self.leader_count]

    @property
    def players(self) -> list[Account]:
        return self.accounts[self.leader_count :]

    @property
    def leader_count(self) -> int:
        return max(1, min(self.options.leaders, self.options.users - 1))

    def socket_of(self, account: int) -> PlayerSocket:
        return self.sockets[account]

    async def _each(
        self, phase: str, jobs: Sequence[Callable[[], Awaitable[T]]], limit: int
    ) -> list[T]:
        done = [0]

        def tick() -> None:
            done[0] += 1
            self.progress.done = done[0]

        self.progress.stage(phase, len(jobs))
        return await gather_limited(jobs, limit, tick)

    # -- the run

    async def run(self) -> dict[str, Any]:
        started_at = datetime.now(UTC)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.progress.repaint_forever)
            nursery.start_soon(self.sampler.run)
            setup_started = time.monotonic()
            await self.check_server()
            await self.sign_in_players()
            await self.open_player_sockets(nursery)
            self.baseline = await self.scores()
            self.lap("players")
            await self.prime_leaders(nursery)
            self.lap("head start")
            self.setup_s = time.monotonic() - setup_started
            await self.connect_watchers(nursery)
            self.lap("clients")
            nursery.start_soon(self.refresh_tokens_forever)
            await self.send_actions(nursery)
            self.lap("sending")
            await self.drain(self.options.drain_timeout_s, "draining")
            self.lap("draining")
            await self.resolve_unknown(nursery)
            self.lap("resolving")
            await self.check_scores()
            self.lap("checking")
            await self.finish_watchers()
            self.lap("action-to-screen")
            self.progress.finish()
            for player_socket in self.sockets:
                player_socket.closing = True
            nursery.cancel_scope.cancel()
        return self.figures(started_at)

    async def check_server(self) -> None:
        self.progress.stage("checking the server")
        async with self._http() as http:
            try:
                readyz = await http.get("/readyz")
                types = await http.get("/api/v1/actions/types")
            except HttpError as exc:
                raise RunRefused(f"{self.options.url} does not answer: {exc}") from exc
        if readyz.status != 200:
            raise RunRefused(
                f"GET /readyz answered {readyz.status}: the server is not ready "
                f"({readyz.body[:200].decode(errors='replace')})"
            )
        try:
            self.readyz = readyz.json()
        except ValueError:
            self.readyz = {}
        limits = self.readyz.get("limits_enabled")
        self.limits_enabled = limits if isinstance(limits, bool) else None
        if self.limits_enabled:
            self.warnings.append(
                "the server's rate limits are on (GET /readyz: limits_enabled): actions beyond "
                "its per-user and per-IP limits answer 429. Load tests need "
                "SCOREBOARD_LIMITS_ENABLED=false on the server."
            )
        catalogue = [
            kind
            for kind in map(ActionType.from_catalogue, types.json()["action_types"])
            if kind.points > 0 and kind.repeatable
        ]
        if not catalogue:
            raise RunRefused(
                "the action catalogue has no action type worth points that a player may repeat"
            )
        self.leader_type = max(catalogue, key=lambda t: t.points)
        self.player_type = min(catalogue, key=lambda t: t.points)

    def _http(self) -> _HttpSession:
        return _HttpSession(self.origin)

    async def sign_in_players(self) -> None:
        options = self.options
        self.accounts = [
            Account(index, f"{options.user_prefix}{index:05d}") for index in range(options.users)
        ]
        if len(self.accounts[-1].username) > 32:
            raise RunRefused("--user-prefix is too long: usernames are at most 32 characters")
        pool = HttpPool(self.origin, options.setup_concurrency)

        def sign_in(account: Account) -> Callable[[], Awaitable[bool]]:
            async def job() -> bool:
                async with pool.connection() as http:
                    flow = SignIn(http, self.origin_header, options.password)
                    created = await flow.register(account)
                    await flow.sign_in(account)
                    return created

            return job

        try:
            created = await self._each(
                f"signing in {len(self.accounts)} players",
                [sign_in(account) for account in self.accounts],
                options.setup_concurrency,
            )
        except* (SetupError, HttpError) as group:
            raise RunRefused(str(group.exceptions[0])) from None
        finally:
            await pool.aclose()
        self.created = sum(created)

    async def open_player_sockets(self, nursery: trio.Nursery) -> None:
        """One socket per player, for its action results (and its actions over ws)."""
        self.sockets = [
            PlayerSocket(
                account,
                self.origin,
                self.origin_header,
                self.ledger,
                offer_deflate=self.options.offer_deflate,
            )
            for account in self.accounts
        ]
        refused: Counter[str] = Counter()

        def opener(player_socket: PlayerSocket) -> Callable[[], Awaitable[None]]:
            async def job() -> None:
                try:
                    await nursery.start(player_socket.run)
                except SocketRefused as exc:
                    refused[exc.reason] += 1

            return job

        await self._each(
            f"opening {len(self.sockets)} player sockets",
            [opener(s) for s in self.sockets],
            self.options.connect_concurrency,
        )
        if refused:
            raise RunRefused(self._refusal_message(refused, "player sockets", len(self.sockets)))

    def _refusal_message(self, refused: Counter[str], what: str, asked: int) -> str:
        total = sum(refused.values())
        lines = [f"the server refused {total} of {asked} {what}: {dict(refused)}"]
        clients_per_player = math.ceil(self.options.clients / max(1, len(self.players)))
        if any("HTTP 429" in reason for reason in refused):
            lines.append(
                f"  HTTP 429 on the upgrade is the per-IP cap: raise {CAP_HINTS['per_ip']} on "
                f"the server to at least {self.options.clients + self.options.users} "
                "(every socket of the load test comes from this one address)"
            )
        if any("too_many_connections" in reason or "1008" in reason for reason in refused):
            lines.append(
                f"  close 1008 too_many_connections is the per-user cap: raise "
                f"{CAP_HINTS['per_user']} to at least {clients_per_player + 1}, or use more "
                "--users"
            )
        if any("HTTP 403" in reason for reason in refused):
            lines.append(
                f"  HTTP 403 on the upgrade: the Origin {self.origin_header} is not allowed; "
                "pass the server's SCOREBOARD_PUBLIC_ORIGIN as --origin"
            )
        if any("Too many open files" in reason or "EMFILE" in reason for reason in refused):
            lines.append("  this machine's open-files limit: raise it (ulimit -n)")
        lines.append("  (the load test measures the number of clients asked for, or nothing)")
        return "\n".join(lines)

    async def scores(self) -> dict[int, int]:
        """Every player's score as GET /api/v1/leaderboard/me reports it."""
        pool = HttpPool(self.origin, RESOLVE_CONCURRENCY)

        def fetch(account: Account) -> Callable[[], Awaitable[int]]:
            async def job() -> int:
                async with pool.connection() as http:
                    response = await http.get("/api/v1/leaderboard/me", token=account.access_token)
                if response.status != 200:
                    raise RunRefused(f"GET /api/v1/leaderboard/me answered {response.status}")
                return int(response.json()["score"])

            return job

        try:
            values = await gather_limited(
                [fetch(a) for a in self.accounts], RESOLVE_CONCURRENCY, lambda: None
            )
        except* HttpError as group:
            raise RunRefused(f"GET /api/v1/leaderboard/me: {group.exceptions[0]}") from None
        finally:
            await pool.aclose()
        return {
            account.user_id: value for account, value in zip(self.accounts, values, strict=True)
        }

    async def board(self, limit: int) -> list[dict[str, Any]]:
        async with self._http() as http:
            response = await http.get(f"/api/v1/leaderboard?limit={limit}")
        if response.status != 200:
            raise RunRefused(f"GET /api/v1/leaderboard answered {response.status}")
        rows: list[dict[str, Any]] = response.json()["leaderboard"]
        return rows

    # -- leaders

    def player_actions_per_player(self) -> int:
        """The most actions one non-leader performs in the window."""
        options = self.options
        player_rate = options.rate - options.effective_leader_rate
        if not self.players or player_rate <= 0:
            return 0
        return math.ceil(player_rate * options.duration_s / len(self.players)) + 1

    async def prime_leaders(self, nursery: trio.Nursery) -> None:
        """Give every leader a score above anyone else's, with room for what the other players
        gain during the run, so that the leaders hold the top of the board."""
        if self.options.rate <= 0:
            return
        if self.limits_enabled:
            self.warnings.append(
                "the leaders were not given a head start: the server's limits would refuse it"
            )
            return
        leader_ids = {account.user_id for account in self.leaders}
        others = [row["score"] for row in await self.board(100) if row["user_id"] not in leader_ids]
        others += [score for uid, score in self.baseline.items() if uid not in leader_ids]
        ceiling = max(others, default=0)
        target = ceiling + self.player_actions_per_player() * self.player_type.points + 1
        points = self.leader_type.points
        needed = {
            account.index: max(0, math.ceil((target - self.baseline[account.user_id]) / points))
            for account in self.leaders
        }
        if max(needed.values()) > MAX_PRIMING_PER_LEADER:
            self.warnings.append(
                f"the leaders would need up to {max(needed.values())} actions each to lead the "
                f"board (the top score is {ceiling}); they were not primed, so action-to-screen "
                "counts only what shows while they are in the top 10"
            )
            return
        actions = [
            self._new_action(index, self.leader_type, "http", leader=True, measured=False)
            for index, count in needed.items()
            for _ in range(count)
        ]
        if not actions:
            return
        self.priming = len(actions)
        send, receive = trio.open_memory_channel[Action](len(actions))
        for action in actions:
            action.due = time.monotonic()
            send.send_nowait(action)
        send.close()
        async with trio.open_nursery() as senders:
            for _ in range(min(self.options.http_connections, len(actions))):
                senders.start_soon(self._http_sender, receive.clone())
            receive.close()
        await self.drain(self.options.drain_timeout_s, "priming the leaders")
        if self.ledger.accepted_without_outcome():
            raise RunRefused(
                "the leaders' head start was not processed in time (--drain-timeout): the "
                "server is not scoring actions"
            )
        refused = Counter(a.error for a in actions if not a.accepted)
        if refused:
            self.warnings.append(
                f"{sum(refused.values())} of the leaders' {len(actions)} head-start actions were "
                f"refused ({dict(refused)}): the leaders may not lead the board"
            )

    def _new_action(
        self, account: int, kind: ActionType, transport: str, *, leader: bool, measured: bool
    ) -> Action:
        serial = len(self.ledger.by_nonce)
        action = Action(
            account=account,
            nonce=f"lt{self.run_id}{serial:010d}",
            action_type=kind.name,
            points=kind.points,
            body={"action_type": kind.name, "action_data": kind.data(f"lt{self.run_id}-{serial}")},
            transport=transport,
            leader=leader,
            measured=measured,
            due=0.0,
        )
        self.ledger.add(action)
        return action

    # -- watchers

    def _watcher_jobs(self) -> list[dict[str, Any]]:
        options = self.options
        processes = min(options.processes, max(1, options.clients))
        watched_as = self.players or self.accounts
        assignments: list[list[list[int]]] = [[] for _ in range(processes)]
        for number in range(options.clients):
            account = watched_as[number % len(watched_as)].index
            assignments[number % processes].append([number, account])
        expected = EXPECTED_UPDATES_PER_S * (
            options.duration_s + options.drain_timeout_s + WINDOW_LEAD_S + 5
        )
        jobs = []
        for clients in assignments:
            accounts = {account for _number, account in clients}
            jobs.append(
                {
                    "host": self.origin.host,
                    "port": self.origin.port,
                    "host_header": self.origin.host_header,
                    "path": WS_PATH,
                    "origin": self.origin_header,
                    "user_agent": "scoreboard-loadtest/1",
                    "offer_deflate": options.offer_deflate,
                    "clients": clients,
                    "tokens": {str(i): self.accounts[i].access_token for i in accounts},
                    "leaders": [account.user_id for account in self.leaders],
                    "connect_concurrency": options.connect_concurrency,
                    "connect_timeout_s": options.connect_timeout_s,
                    "track_clients": int(min(len(clients), TRACKED_ENTRIES_PER_PROCESS / expected)),
                }
            )
        return jobs

    async def connect_watchers(self, nursery: trio.Nursery) -> None:
        before = self.sampler.sample()
        if self.options.clients == 0:
            return
        jobs = self._watcher_jobs()
        self.watchers = await start_watchers(nursery, jobs)
        self.sampler.worker_pids = [w.pid for w in self.watchers]

        def detail() -> str:
            refused = sum(w.progress["refused"] for w in self.watchers)
            return f"refused {refused}" if refused else ""

        self.progress.stage(
            f"connecting {self.options.clients} clients", self.options.clients, detail
        )
        connect_started = time.monotonic()
        async with trio.open_nursery() as waiting:
            waiting.start_soon(self._count_connected)
            readies = [await w.wait_ready() for w in self.watchers]
            waiting.cancel_scope.cancel()
        refused: Counter[str] = Counter()
        for ready in readies:
            refused.update(ready["refused"])
        self.memory["connect_s"] = time.monotonic() - connect_started
        if refused:
            raise RunRefused(
                self._refusal_message(refused, "watching clients", self.options.clients)
            )
        await trio.sleep(SETTLE_AFTER_CONNECT_S)
        after = self.sampler.sample()
        if before is not None and after is not None:
            self.memory.update(
                rss_mib_before=before.rss_kib / 1024,
                rss_mib_connected=after.rss_kib / 1024,
                kib_per_client=(after.rss_kib - before.rss_kib) / self.options.clients,
                pss_kib_per_client=(after.pss_kib - before.pss_kib) / self.options.clients
                if after.pss_kib is not None and before.pss_kib is not None
                else None,
            )

    async def _count_connected(self) -> None:
        while True:
            self.progress.done = sum(
                w.progress["connected"] + w.progress["refused"] for w in self.watchers
            )
            await trio.sleep(0.2)

    async def finish_watchers(self) -> None:
        if not self.watchers:
            return
        final_top = [[row["user_id"], row["score"]] for row in await self.board(10)]
        measured_leaders = [
            [self.accounts[a.account].user_id, a.new_score, a.due]
            for a in self.ledger
            if a.measured and a.leader and a.status == "completed" and a.new_score is not None
        ]
        self.progress.stage("computing action-to-screen")
        finish = {
            "cmd": "finish",
            "actions": measured_leaders,
            "final_top": final_top,
            "bound_s": self.options.screen_bound_s,
            "pair_budget": PAIRS_PER_PROCESS,
        }
        for watcher in self.watchers:
            await watcher.send(finish)
        for watcher in self.watchers:
            try:
                self.fleet.merge(await watcher.wait_result())
            except WorkerFailed as exc:
                self.warnings.append(str(exc))

    # -- tokens

    async def refresh_tokens_forever(self) -> None:
        async with self._http() as http:
            while True:
                due = min(account.refresh_due for account in self.accounts)
                await trio.sleep(max(0.0, due - time.monotonic()))
                soon = [a for a in self.accounts if a.refresh_due <= time.monotonic() + 5]
                flow = SignIn(http, self.origin_header, self.options.password)
                for account in soon:
                    try:
                        await flow.refresh(account)
                    except (SetupError, HttpError) as exc:
                        self.warnings.append(f"refreshing {account.username}'s token: {exc}")
                        account.refresh_due = time.monotonic() + REFRESH_RETRY_S
                        continue
                    self.socket_of(account.index).reauthenticate()
                    self.token_refreshes += 1
                tokens = {str(a.index): a.access_token for a in soon}
                for watcher in self.watchers:
                    await watcher.send({"cmd": "tokens", "tokens": tokens})

    # -- sending

    async def send_actions(self, nursery: trio.Nursery) -> None:
        options = self.options
        self.window_start = time.monotonic() + WINDOW_LEAD_S
        self.window_end = self.window_start + options.duration_s
        self.ledger.window_start = self.window_start
        for watcher in self.watchers:
            await watcher.send(
                {"cmd": "window", "start": self.window_start, "end": self.window_end}
            )
        total = round(options.rate * options.duration_s)

        def detail() -> str:
            accepted = self.ledger.measured_accepted
            processed = self.ledger.measured_processed
            frames = sum(w.progress["frames"] for w in self.watchers)
            return f"s  accepted {accepted:,}  processed {processed:,}  frames {frames:,}"

        self.progress.stage(
            f"{options.rate:g} actions/s over {options.transport}", options.duration_s, detail
        )
        if total == 0:
            await self._sleep_until(self.window_end, tick=True)
            return
        send, receive = trio.open_memory_channel[Action](total)
        async with trio.open_nursery() as senders:
            for _ in range(options.http_connections):
                senders.start_soon(partial(self._http_sender, receive.clone(), on_schedule=True))
            receive.close()
            async with send:
                await self._schedule(send, total)
        self.backlog_at_window_end = sum(
            1 for a in self.ledger if a.measured and a.accepted and not a.processed
        )

    async def _sleep_until(self, monotonic_at: float, *, tick: bool = False) -> None:
        while (left := monotonic_at - time.monotonic()) > 0:
            if tick:
                self.progress.done = time.monotonic() - self.window_start
            await trio.sleep(min(left, 0.25) if tick else left)

    async def _schedule(self, http_queue: trio.MemorySendChannel[Action], total: int) -> None:
        options = self.options
        rate = options.rate
        leader_share = options.effective_leader_rate / rate
        leaders, players = self.leaders, self.players or self.leaders
        offset = trio.current_time() - time.monotonic()
        leader_turn = player_turn = 0
        for number in range(total):
            due = self.window_start + number / rate
            if due > time.monotonic():
                await trio.sleep_until(due + offset)
            else:
                # Late already: a timer's cancel scope would only cost CPU (the schedule falls
                # behind when the machine is busy), but the senders must still get their turn.
                await trio.lowlevel.checkpoint()
            now = time.monotonic()
            self.dispatch_lags.append(now - due)
            self.progress.done = now - self.window_start
            if math.floor((number + 1) * leader_share) > math.floor(number * leader_share):
                account, kind, leader = leaders[leader_turn % len(leaders)], self.leader_type, True
                leader_turn += 1
            else:
                account, kind, leader = players[player_turn % len(players)], self.player_type, False
                player_turn += 1
            transport = options.transport
            if transport == "mixed":
                transport = "http" if number % 2 == 0 else "ws"
            action = self._new_action(account.index, kind, transport, leader=leader, measured=True)
            action.due = due
            if transport == "http":
                http_queue.send_nowait(action)
            elif not self.socket_of(account.index).send(
                {"type": "action", **action.body, "nonce": action.nonce}
            ):
                self.not_sent += 1
                self.ledger.on_transport_error(action, NOT_SENT_OUTBOX_FULL)

    async def _http_sender(
        self, receive: trio.MemoryReceiveChannel[Action], *, on_schedule: bool = False
    ) -> None:
        """POST each action from the channel on one keep-alive connection. On the schedule, an
        action that found no free connection within --request-timeout of its due time is not
        sent at all (counted apart): a server that answers slower than the rate would otherwise
        stretch the run without bound."""
        http = HttpConnection(self.origin)
        stale_after_s = timeout_s = self.options.request_timeout_s
        try:
            async with receive:
                while True:
                    # One cancel scope per connection rather than per request (this process
                    # shares the machine with the server): its deadline runs only while an
                    # action is in flight. A timeout cancels it for good, so it is made anew.
                    with trio.CancelScope() as in_flight:
                        async for action in receive:
                            if on_schedule and time.monotonic() - action.due > stale_after_s:
                                self.not_sent += 1
                                self.ledger.on_transport_error(action, NOT_SENT_NO_CONNECTION)
                                continue
                            in_flight.deadline = trio.current_time() + timeout_s
                            await self._post(http, action)
                            in_flight.deadline = math.inf
                        return
                    self.ledger.on_transport_error(action, "timeout")
        finally:
            await http.aclose()

    async def _post(self, http: HttpConnection, action: Action) -> None:
        token = self.accounts[action.account].access_token
        if (head := self._post_heads.get(token)) is None:
            # Built once per token (tokens change only when refreshed).
            head = self._post_heads[token] = http.json_post_head(PERFORM_PATH, token)
        body = orjson.dumps({**action.body, "nonce": action.nonce})
        try:
            response = await http.send(json_post(head, body))
        except HttpError:
            self.ledger.on_transport_error(action, "connection")
            return
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if action.resent:
            self.resolution[f"resent: answered {response.status}"] += 1
            if response.headers.get("idempotent-replayed", "").lower() == "true":
                action.replayed = True
        self.ledger.on_http_answer(action, response.status, answer, time.monotonic())

    # -- after the window

    async def drain(self, timeout_s: float, phase: str) -> None:
        """Until every accepted action is processed and every sent one answered, or timeout.
        Outcomes come on the players' sockets; when those fall behind the server (its own
        fan-out lagging), GET /api/v1/actions/<id> of the newest pending actions tells whether
        the server is done, and then a sweep over all pending ones collects their outcomes."""
        deadline = time.monotonic() + timeout_s

        def waiting() -> list[Action]:
            return [
                a
                for a in self.ledger
                if (a.accepted and not a.processed)
                or (a.action_id is None and a.error is None and a.due > 0)
            ]

        pending = waiting()
        total = len(pending)
        self.progress.stage(phase, total, lambda: "actions to go")
        next_probe = time.monotonic() + PROBE_AFTER_S
        while pending and time.monotonic() < deadline:
            await trio.sleep(DRAIN_POLL_S)
            if time.monotonic() >= next_probe:
                await self._probe_pending(pending)
                next_probe = time.monotonic() + PROBE_INTERVAL_S
            pending = waiting()
            self.progress.done = total - len(pending)
        processed = [a.processed_at for a in self.ledger if a.measured and a.processed_at]
        if processed:
            self.last_processed_at = max(processed)
        if phase == "draining":
            self.drained = not pending
            if self.last_processed_at is not None:
                self.drain_s = max(0.0, self.last_processed_at - self.window_end)

    async def _probe_pending(self, pending: list[Action]) -> None:
        """Ask for the newest pending outcomes; if the server finished them, fetch all."""
        accepted = sorted(
            (a for a in pending if a.accepted and not a.processed),
            key=lambda a: a.accepted_at or 0.0,
        )
        if not accepted:
            return
        newest = accepted[-PROBE_ACTIONS:]
        await self._fetch_outcomes(newest)
        if all(action.processed for action in newest):
            await self._fetch_outcomes(accepted[:-PROBE_ACTIONS])

    async def _fetch_outcomes(self, actions: list[Action]) -> None:
        """GET /api/v1/actions/<id> for each, with RESOLVE_CONCURRENCY in flight."""
        pool = HttpPool(self.origin, min(RESOLVE_CONCURRENCY, max(1, len(actions))))

        def fetch(action: Action) -> Callable[[], Awaitable[None]]:
            async def job() -> None:
                if action.processed:
                    return
                token = self.accounts[action.account].access_token
                target = f"/api/v1/actions/{action.action_id}"
                try:
                    async with pool.connection() as http:
                        response = await http.get(target, token=token)
                except HttpError:
                    return
                if response.status == 200:
                    self.ledger.on_fetched(action, response.json())

            return job

        try:
            await gather_limited([fetch(a) for a in actions], RESOLVE_CONCURRENCY, lambda: None)
        finally:
            await pool.aclose()

    async def resolve_unknown(self, nursery: trio.Nursery) -> None:
        """Send again, with the same nonce, every action whose fate is unknown (503, timeout,
        lost connection, no answer on the socket): the contract's answer to a 503. Then ask
        GET /api/v1/actions/<id> for accepted actions whose outcome did not arrive."""
        unknown = self.ledger.fate_unknown()
        if unknown:
            for action in unknown:
                action.resent = True
                action.error = None
            self.resolution["resent with the same nonce"] = len(unknown)
            send, receive = trio.open_memory_channel[Action](len(unknown))
            for action in unknown:
                send.send_nowait(action)
            send.close()
            self.progress.stage("resending unknown outcomes", len(unknown))
            with trio.move_on_after(RESOLVE_DEADLINE_S):
                async with trio.open_nursery() as senders:
                    for _ in range(RESOLVE_CONCURRENCY):
                        senders.start_soon(self._http_sender, receive.clone())
                    receive.close()
            self.resolution["of them queued before"] = sum(1 for a in unknown if a.replayed)
            self.resolution["of them accepted now"] = sum(
                1 for a in unknown if a.accepted and not a.replayed
            )
            await self.drain(min(self.options.drain_timeout_s, 30.0), "waiting for resent actions")
        missing = self.ledger.accepted_without_outcome()
        if missing:
            self.resolution["outcome asked with GET at the end"] = len(missing)
            self.progress.stage("asking for missing outcomes", len(missing))
            with trio.move_on_after(RESOLVE_DEADLINE_S):
                await self._fetch_outcomes(missing)

    def undecided_players(self) -> set[int]:
        """Players with an action accepted but not processed, or whose fate is unknown: their
        expected score cannot be known, so the score checks leave them out (and the checks on
        the actions themselves fail)."""
        return {
            self.accounts[a.account].user_id
            for a in self.ledger
            if (a.accepted and not a.processed) or a.fate_unknown
        }

    async def check_scores(self) -> None:
        """Each player's score now against the score before plus the deltas of its completed
        actions; the board is read until it agrees or BOARD_CONVERGENCE_S runs out (it follows
        the store a moment after each commit)."""
        self.progress.stage("checking scores")
        await trio.sleep(FINAL_UPDATE_GRACE_S)
        expected = dict(self.baseline)
        for action in self.ledger:
            if action.status == "completed" and action.score_delta is not None:
                uid = self.accounts[action.account].user_id
                expected[uid] += action.score_delta
        undecided = self.undecided_players()
        started = time.monotonic()
        while True:
            self.final = await self.scores()
            agree = all(
                self.final[uid] == score for uid, score in expected.items() if uid not in undecided
            )
            if agree or time.monotonic() - started > BOARD_CONVERGENCE_S:
                break
            await trio.sleep(0.5)
        self.board_convergence_s = time.monotonic() - started
        board = await self.board(100)
        # A player with actions still in flight may score between the two reads.
        ours = {a.user_id for a in self.accounts} - undecided
        disagree = [
            f"user {row['user_id']}: board {row['score']}, /me {self.final[row['user_id']]}"
            for row in board
            if row["user_id"] in ours and row["score"] != self.final[row["user_id"]]
        ]
        self.leaderboard_check = {
            "ours_in_top_100": sum(1 for row in board if row["user_id"] in ours),
            "disagree": disagree,
        }
        self.correctness = self._checks(
            {uid: score for uid, score in expected.items() if uid not in undecided}
        )

    def _checks(self, expected: dict[int, int]) -> list[dict[str, Any]]:
        ledger = list(self.ledger)
        checks: list[dict[str, Any]] = []

        def check(name: str, ok: bool, detail: str) -> None:
            checks.append({"name": name, "ok": ok, "detail": detail})

        unknown = [a for a in ledger if a.fate_unknown]
        refused = Counter(
            a.error
            for a in ledger
            if a.action_id is None and not a.fate_unknown and not _never_sent(a)
        )
        check(
            "every action answered",
            not unknown,
            f"{len(ledger) - self.not_sent} sent ({self.priming} to prime the leaders; "
            f"{self.not_sent} due but never sent), {sum(1 for a in ledger if a.accepted)} "
            f"accepted, refused {dict(refused) or 0}, {len(unknown)} with no known outcome "
            "after resending with the same nonce",
        )
        unprocessed = [a for a in ledger if a.accepted and not a.processed]
        check(
            "every accepted action processed",
            not unprocessed,
            f"{len(unprocessed)} accepted actions without a final status "
            f"(socket, then GET /api/v1/actions/<id>)",
        )
        statuses = Counter(a.status for a in ledger if a.accepted)
        not_completed = sum(n for status, n in statuses.items() if status != "completed")
        check(
            "every accepted action completed",
            not_completed == 0 or bool(self.limits_enabled),
            f"final statuses {dict(statuses)}"
            + (" (limits are on: rejections expected)" if self.limits_enabled else ""),
        )
        check(
            "deltas from the catalogue",
            not self.ledger.wrong_delta,
            "; ".join(self.ledger.wrong_delta[:5])
            or "every completed action's score_delta "
            "equals its type's points in GET /api/v1/actions/types",
        )
        wrong = [
            f"{uid}: {self.baseline[uid]} -> {self.final.get(uid)}, expected {expected[uid]}"
            for uid in expected
            if self.final.get(uid) != expected[uid]
        ]
        left_out = len(self.baseline) - len(expected)
        check(
            "score increase = sum of completed deltas",
            not wrong,
            f"{len(expected) - len(wrong)} of {len(expected)} players agree "
            f"(GET /api/v1/leaderboard/me before and after)"
            + (
                f"; {left_out} players with unprocessed or unknown actions not compared"
                if left_out
                else ""
            )
            + (f"; differ: {'; '.join(wrong[:5])}" if wrong else ""),
        )
        broken = self._chain_breaks(set(expected))
        check(
            "counted exactly once",
            not broken,
            "for every player, the new_score of its completed actions, in order, each adds "
            "exactly that action's delta, from the score before to the score after"
            + (f"; broken: {'; '.join(broken[:5])}" if broken else ""),
        )
        check(
            "board agrees with /me",
            not self.leaderboard_check["disagree"],
            f"{self.leaderboard_check['ours_in_top_100']} players without actions in flight "
            "compared in GET /api/v1/leaderboard?limit=100"
            + (
                f"; {'; '.join(self.leaderboard_check['disagree'][:5])}"
                if self.leaderboard_check["disagree"]
                else ""
            ),
        )
        return checks

    def _chain_breaks(self, players: set[int]) -> list[str]:
        completed: dict[int, list[Action]] = {}
        for action in self.ledger:
            if action.status == "completed":
                completed.setdefault(self.accounts[action.account].user_id, []).append(action)
        breaks = []
        for uid, before in self.baseline.items():
            if uid not in players:
                continue
            actions = sorted(completed.get(uid, []), key=lambda a: a.new_score or -1)
            score = before
            for action in actions:
                if action.new_score is None or action.score_delta is None:
                    breaks.append(f"user {uid}: {action.action_id} has no new_score")
                    break
                if action.new_score - action.score_delta != score:
                    breaks.append(
                        f"user {uid}: {action.action_id} new_score {action.new_score} after "
                        f"{score} with delta {action.score_delta}"
                    )
                    break
                score = action.new_score
            else:
                if self.final.get(uid) != score:
                    breaks.append(
                        f"user {uid}: last new_score {score}, final {self.final.get(uid)}"
                    )
        return breaks

    # -- figures

    def figures(self, started_at: datetime) -> dict[str, Any]:
        options = self.options
        measured = self.ledger.measured()
        duration = options.duration_s
        in_window = [
            a for a in measured if a.accepted_at is not None and a.accepted_at <= self.window_end
        ]
        processed_in_window = [
            a for a in measured if a.processed_at is not None and a.processed_at <= self.window_end
        ]
        fleet = self.fleet
        updates_rate = [n / duration for n in fleet.window_updates]
        server_pair = self.sampler.server_between(self.window_start, self.window_end)
        server: dict[str, Any] = {
            "limits_enabled": self.limits_enabled,
            "role": self.readyz.get("role"),
            "backend_mode": self.readyz.get("backend_mode"),
            "measured": server_pair is not None,
        }
        if self.sampler.server is not None and self.sampler.server.samples:
            samples = self.sampler.server.samples
            server.update(
                roots=sorted(self.sampler.server.roots),
                processes=max(s.processes for s in samples),
                rss_mib_max=max(s.rss_kib for s in samples) / 1024,
                rss_mib_end=samples[-1].rss_kib / 1024,
            )
        if server_pair is not None:
            server["cpu_cores"] = (server_pair[1].cpu_s - server_pair[0].cpu_s) / (
                server_pair[1].at - server_pair[0].at
            )
        server.update(self.memory)
        own = self.sampler.own_cpu(self.window_start, self.window_end)
        own_main = own.get(os.getpid())
        own_workers = [own.get(w.pid) for w in self.watchers]
        saturated = [share for share in [own_main, *own_workers] if share and share >= SATURATED]
        if saturated:
            self.warnings.append(
                "the load generator itself was busy (a process at "
                f"{max(saturated):.0%} of a core): figures may be bounded by the client side; "
                "use more --client-processes or a second machine"
            )
        if (behind := fleet.behind_warning()) is not None:
            self.warnings.append(behind)
        if self.ledger.unmatched_results:
            self.warnings.append(
                f"{self.ledger.unmatched_results} action results on the players' sockets matched "
                "no action this run sent (another client acting as the same players?)"
            )
        lags = sorted(self.dispatch_lags)
        late_dispatch = sum(1 for lag in lags if lag > 0.010)
        if lags and lags[-1] > 0.05:
            self.warnings.append(
                f"the schedule fell up to {lags[-1] * 1000:,.0f} ms behind ({late_dispatch} "
                "actions dispatched more than 10 ms late): the load generator's main process "
                "did not get the CPU in time; latencies still count from each action's due time"
            )
        answers = self.ledger.answers
        rate_limited = sum(n for k, n in answers.items() if "429" in k or "rate_limit" in k)
        unavailable = sum(n for k, n in answers.items() if "503" in k or "unavailable" in k)
        if rate_limited:
            self.warnings.append(
                f"{rate_limited} actions were refused by rate limits (429 or "
                "rate_limit_exceeded): set SCOREBOARD_LIMITS_ENABLED=false on the server"
            )
        if self.not_sent:
            self.warnings.append(
                f"{self.not_sent} actions were not sent: no connection of --http-connections "
                f"({options.http_connections}) was free within --request-timeout of their due "
                "time (or a socket's outbox was full); the server answered slower than the "
                "offered rate"
            )
        if not self.drained:
            self.warnings.append(
                f"not every accepted action was processed {options.drain_timeout_s:g} s after "
                "the last one was sent (--drain-timeout): the server fell behind"
            )
        if fleet.dropped_in_window:
            self.warnings.append(
                f"{fleet.dropped_in_window} watching sockets were closed during the run: "
                f"{dict(fleet.dropped)}"
            )
        a2s = fleet.a2s.summary()
        a2s.update(
            bound_ms=options.screen_bound_s * 1000,
            late=fleet.a2s_late,
            not_within_bound=fleet.a2s_late + fleet.a2s.missing,
            pairs=fleet.a2s.count + fleet.a2s.missing,
            tracked_clients=fleet.a2s_tracked_clients,
            tracked_actions=fleet.a2s_tracked_actions,
            sampling_step=fleet.a2s_sampling_step,
        )
        machine = self.sampler.machine_busy(self.window_start, self.window_end)
        result: dict[str, Any] = {
            "tool": "scoreboard loadtest",
            "version": 1,
            "started_at": started_at.isoformat(timespec="seconds"),
            "url": options.url,
            "origin": self.origin_header,
            "options": asdict(options),
            "server": server,
            "players": {
                "users": len(self.accounts),
                "created": self.created,
                "reused": len(self.accounts) - self.created,
                "leaders": self.leader_count,
                "leader_action": self.leader_type.name,
                "player_action": self.player_type.name,
                "sockets": len(self.sockets),
                "socket_drops": sum(len(s.drops) for s in self.sockets),
                "socket_reconnects": sum(s.reconnects for s in self.sockets),
                "socket_connect_retries": sum(s.connect_retries for s in self.sockets),
                "setup_s": self.setup_s,
                "priming_actions": self.priming,
                "token_refreshes": self.token_refreshes,
            },
            "clients": {
                "asked": options.clients,
                "processes": len(self.watchers),
                "connected": fleet.connected,
                "refused": dict(fleet.refused),
                "connect_retries": fleet.connect_retries,
                "connect_s": self.memory.get("connect_s"),
                "dropped": dict(fleet.dropped),
                "dropped_during_window": fleet.dropped_in_window,
                "open_at_end": fleet.open_at_end,
                "on_final_board": fleet.on_final_board,
                "offer_deflate": options.offer_deflate,
            },
            "actions": {
                "offered_per_s": options.rate,
                "leader_per_s": options.effective_leader_rate,
                "duration_s": duration,
                "transport": options.transport,
                "sent": len(measured) - self.not_sent,
                "not_sent": self.not_sent,
                "accepted": sum(1 for a in measured if a.accepted),
                "accepted_in_window_per_s": len(in_window) / duration,
                "processed": sum(1 for a in measured if a.processed),
                "processed_in_window_per_s": len(processed_in_window) / duration,
                "processed_per_s": self._processed_rate(measured),
                "backlog_at_window_end": self.backlog_at_window_end,
                "drain_s": self.drain_s,
                "drained": self.drained,
                "answers": dict(answers),
                "rate_limited": rate_limited,
                "unavailable": unavailable,
                "resolution": dict(self.resolution),
                "outcomes_via": dict(self.ledger.outcomes_via()),
                "unmatched_results": self.ledger.unmatched_results,
                "dispatch_lag_ms_max": lags[-1] * 1000 if lags else None,
                "dispatched_late": late_dispatch,
            },
            "latency_ms": {
                "http_accept": self.ledger.http_latency.summary(),
                "ws_accept": self.ledger.ws_accept_latency.summary(),
                "action_to_screen": a2s,
                "update_lag": fleet.lag.summary(),
                "update_gap": fleet.gap.summary(),
            },
            "updates": {
                "per_client_per_s_mean": statistics.fmean(updates_rate) if updates_rate else None,
                "per_client_per_s_min": min(updates_rate) if updates_rate else None,
                "per_client_per_s_p5": _low_percentile(updates_rate, 5),
                "frames": fleet.frames,
                "other_frames": fleet.other_frames,
                "distinct_snapshots": fleet.snapshots_distinct,
                "malformed": fleet.malformed,
            },
            "load_generator": {
                "cpu_cores_main": own_main,
                "cpu_cores_workers": own_workers,
                "saturated": bool(saturated),
                "read_delay_ms": fleet.read_delay.summary(),
            },
            "machine": {
                "cpus": os.cpu_count(),
                "busy": machine,
                "load_average_1m": os.getloadavg()[0],
            },
            "correctness": {
                "ok": all(check["ok"] for check in self.correctness),
                "checks": self.correctness,
                "board_convergence_s": self.board_convergence_s,
            },
            "warnings": self.warnings,
            "phases_s": self.phases_s,
            "timeline": self.timeline(),
        }
        return result

    def _processed_rate(self, measured: list[Action]) -> float | None:
        """Processed actions per second from the first due time to the last outcome: the
        scoring pipeline's throughput, its backlog included."""
        times = [a.processed_at for a in measured if a.processed_at is not None]
        if not times or max(times) <= self.window_start:
            return None
        return len(times) / (max(times) - self.window_start)

    def timeline(self) -> dict[str, Any]:
        """Per second since the window opened: the chart's data."""
        fleet = self.fleet
        connected = max(1, fleet.connected)
        server_points: list[tuple[float, float, float]] = []
        if self.sampler.server is not None:
            samples: list[TreeSample] = self.sampler.server.samples
            previous = samples[0] if samples else None
            for sample in samples[1:]:
                assert previous is not None
                if sample.at - previous.at < MIN_CHART_INTERVAL_S:
                    continue  # an extra sample (around connecting) would make a noisy point
                server_points.append(
                    (
                        sample.at - self.window_start,
                        (sample.cpu_s - previous.cpu_s) / (sample.at - previous.at),
                        sample.rss_kib / 1024,
                    )
                )
                previous = sample
        return {
            "a2s_p50": fleet.a2s_series.points(50),
            "a2s_p99": fleet.a2s_series.points(99),
            "a2s_max": fleet.a2s_series.maxima(),
            "http_p99": self.ledger.http_latency_series.points(99),
            "update_lag_p99": fleet.lag_series.points(99),
            "accepted_per_s": _every_second(self.ledger.accepted_per_second),
            "processed_per_s": _every_second(self.ledger.processed_per_second),
            "updates_per_client_per_s": sorted(
                (second, count / connected) for second, count in fleet.updates_per_second.items()
            ),
            "server": server_points,
        }


def _never_sent(action: Action) -> bool:
    return action.error is not None and action.error.startswith("not sent")


def _every_second(counts: Counter[int]) -> list[tuple[int, int]]:
    """Counts per second with the silent seconds as zeros, from the window's start."""
    if not counts:
        return []
    return [(second, counts.get(second, 0)) for second in range(0, max(counts) + 1)]


def _low_percentile(values: list[float], percent: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(percent / 100 * len(ordered)) - 1)]


class _HttpSession:
    """`async with` one keep-alive connection."""

    def __init__(self, origin: Origin) -> None:
        self.connection = HttpConnection(origin)

    async def __aenter__(self) -> HttpConnection:
        return self.connection

    async def __aexit__(self, *exc_info: object) -> None:
        await self.connection.aclose()
