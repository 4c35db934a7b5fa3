"""The application wiring: backends, channels, actors and the HTTP server under supervision.

One process runs the API role (HTTP, WebSockets, hub, events, publisher), the worker role
(consumer, router and its user actors, scorer, keeper), or both. Each role is its own
rest_for_one supervisor (`worker_supervisor`, `api_supervisor`: the tests build theirs with the
same functions), with its children in dependency order, so a crash restarts the crashed actor
and those that depend on it; the two roles sit under a one_for_one root, and a root that gives up
ends the process non-zero. In the API role only the hub, which the server's WebSockets register
with, comes before the HTTP server: the publisher, the events subscription and the revocations
poll come after it, so their trouble restarts them, never the server and every socket on it.

Every channel is opened here, by the actor module that reads it (`open_inbox`, which knows its
size); each incarnation of an actor gets fresh clones (`actor_spec`), so a restarted actor reads
the same inbox and its senders just wait. The root is made before its roles, since the API
reports on it (`/readyz`, `/api/v1/supervisor`); what a child reports started with (the HTTP
server's URL) the supervisor keeps.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import trio

from scoreboard import metrics
from scoreboard.actors import (
    auditor,
    consumer,
    events,
    flags,
    hub,
    janitor,
    keeper,
    publisher,
    revocations,
    router,
    scorer,
)
from scoreboard.actors.hub import BroadcastStats
from scoreboard.actors.revocations import DenyList
from scoreboard.adapters.interfaces import Board, Broker, Store
from scoreboard.auth.key_encryption import load_key_encryption
from scoreboard.auth.keys import load_or_create_keyring
from scoreboard.auth.passwords import Passwords
from scoreboard.auth.token_cache import VerifiedTokens
from scoreboard.backends import Backends, describe_backends, open_backends, wait_for_backends
from scoreboard.catalogue import Catalogue, configured_catalogue
from scoreboard.config import Config
from scoreboard.demo import announcement, create_demo_user
from scoreboard.drain import Drain
from scoreboard.http.app import create_asgi_app
from scoreboard.http.connections import ConnectionCounts
from scoreboard.http.listener import ListeningSocket, serve_http, socket_url
from scoreboard.http.ops import Observed, bind_ops_socket, serve_ops
from scoreboard.http.services import Services
from scoreboard.intake import Intake
from scoreboard.processes import ParentLink
from scoreboard.supervisor import (
    ChildSpec,
    Supervisor,
    SupervisorGaveUp,
    actor_spec,
)

log = logging.getLogger("scoreboard.server")

# With the default thresholds the collector ate half the CPU at 5k sockets (docs/performance.md).
GC_THRESHOLDS = (50_000, 20, 100)


@dataclass
class ServerHandle:
    """What a running server tells its starter (the CLI, or a test on port 0)."""

    url: str | None
    ops_url: str | None
    """The operations listener (`/healthz`, `/readyz`, `/api/v1/supervisor`, `/metrics`)."""
    supervisor: Supervisor
    services: Services | None
    request_shutdown: Callable[[], None]
    drain: Drain
    """Begun on SIGTERM: `/readyz` (public and ops) answers 503 from then on."""


def worker_supervisor(
    config: Config,
    catalogue: Catalogue,
    *,
    store: Store,
    board: Board,
    broker: Broker,
    flag_stats: flags.FlagStats | None = None,
) -> Supervisor:
    """The worker role: keeper ← scorer ← router (and the user actors) ← consumer, then the
    janitor and the flags actor; each started after what it sends to, except the flags actor:
    the scorer only ever offers it decisions (kept in its inbox until it runs, dropped when
    that is full), and its trouble must restart nothing on the scoring path."""
    flag_stats = flag_stats or flags.FlagStats()
    flags_handle, flags_inbox = flags.open_inbox()
    keeper_handle, keeper_inbox = keeper.open_inbox()
    scorer_handle, scorer_inbox = scorer.open_inbox()
    router_handle, router_inbox = router.open_inbox()
    return Supervisor(
        [
            actor_spec(
                "keeper",
                keeper.run,
                keeper_inbox,
                store=store,
                board=board,
                broker=broker,
                config=config,
            ),
            actor_spec(
                "scorer",
                scorer.run,
                scorer_inbox,
                keeper_handle,
                flags_handle,
                store=store,
                broker=broker,
                config=config,
                catalogue=catalogue,
                flag_stats=flag_stats,
            ),
            actor_spec(
                "router",
                router.run,
                router_inbox,
                scorer_handle,
                store=store,
                catalogue=catalogue,
                config=config,
            ),
            actor_spec("consumer", consumer.run, router_handle, broker=broker, config=config),
            actor_spec("janitor", janitor.run, store=store, config=config.janitor),
            actor_spec(
                "flags",
                flags.run,
                flags_inbox,
                store=store,
                settings=config.anticheat,
                stats=flag_stats,
            ),
        ],
        strategy="rest_for_one",
        name="worker",
    )


async def api_supervisor(
    config: Config,
    backends: Backends,
    catalogue: Catalogue,
    *,
    listening: ListeningSocket,
    observed: Observed,
    connections: ConnectionCounts,
    broadcast: BroadcastStats,
) -> tuple[Supervisor, Services]:
    """The API role and what its handlers depend on: the hub, the HTTP server on `listening`
    (its started value is its URL), then the publisher, the events subscription and the
    revocations poll. `observed` is what the operations endpoints report on; `connections` and
    `broadcast` count what the listener and the hub do. The deny-list is loaded here, before
    anything verifies a token."""
    hub_handle, hub_inbox = hub.open_inbox()
    publisher_handle, publisher_inbox = publisher.open_inbox()
    auditor_handle, auditor_inbox = auditor.open_inbox()
    keyring = await load_or_create_keyring(
        backends.store, activation_delay_ms=int(config.oauth.key_activation_s * 1000)
    )
    deny_list = DenyList(hub_handle)
    await deny_list.load(backends.store)
    services = Services(
        config=config,
        catalogue=catalogue,
        store=backends.store,
        board=backends.board,
        guard=backends.guard,
        broker=backends.broker,
        keyring=keyring,
        verified_tokens=VerifiedTokens(keyring, config),
        passwords=Passwords(),
        hub=hub_handle,
        publisher=publisher_handle,
        auditor=auditor_handle,
        intake=Intake(catalogue, config, backends.guard, publisher_handle, backends.store),
        deny_list=deny_list,
        observed=observed,
        public_origin=config.public_origin if config.public.origin else listening.url,
        connections=connections,
        broadcast=broadcast,
    )
    supervisor = Supervisor(
        [
            actor_spec(
                "hub",
                hub.run,
                hub_inbox,
                board=backends.board,
                config=config,
                stats=services.broadcast,
            ),
            http_spec(services, listening),
            actor_spec(
                "publisher",
                publisher.run,
                publisher_inbox,
                broker=backends.broker,
                guard=backends.guard,
                config=config,
            ),
            actor_spec(
                "events",
                events.run,
                hub_handle,
                broker=backends.broker,
                deny_list=deny_list,
                board=backends.board,
                board_size=config.leaderboard.size,
            ),
            actor_spec(
                "revocations",
                revocations.run,
                deny_list,
                store=backends.store,
                keyring=keyring,
                config=config,
            ),
            actor_spec(
                "auditor",
                auditor.run,
                auditor_inbox,
                store=backends.store,
                stats=auditor_handle.stats,
            ),
        ],
        strategy="rest_for_one",
        name="api",
    )
    return supervisor, services


def http_spec(services: Services, listening: ListeningSocket) -> ChildSpec:
    """The HTTP server (and the live feed's WebSockets), stopped through its trigger."""
    app = create_asgi_app(services)
    shutdown = trio.Event()

    async def run_http(*, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal shutdown
        shutdown = trio.Event()
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_http, app, services, listening.take(), shutdown)
            task_status.started(listening.url)

    return ChildSpec(id="http", start=run_http, shutdown=lambda: shutdown.set())


async def run_server(
    config: Config, *, task_status: trio.TaskStatus[ServerHandle] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run until cancelled (or until the root supervisor gives up, which raises)."""
    role = config.server.role
    log.info("%s", describe_backends(config))
    if not config.limits.enabled:
        log.warning("rate limits and cooldowns are DISABLED (SCOREBOARD_LIMITS_ENABLED=false)")
    catalogue = configured_catalogue(config)
    # A key-encryption key that cannot be used stops the start here, not in a retry loop.
    key_encryption = load_key_encryption(config)
    if not key_encryption.enabled:
        log.warning(
            "the JWT signing keys are stored in plain text: set SCOREBOARD_AUTH_KEY_ENCRYPTION_KEY"
            " (or _FILE) to encrypt them (`scoreboard keys new-kek` makes a key)"
        )
    await wait_for_backends(config)
    async with open_backends(config) as backends, contextlib.AsyncExitStack() as owned:
        sealed = await backends.store.reseal_signing_keys(plain_only=True)
        if sealed:
            log.info("encrypted the signing keys %s at rest", ", ".join(sealed))
        await backends.broker.declare_topology()
        root = Supervisor([], strategy="one_for_one", name="root")
        serves_api = role in ("all", "api")
        connections = ConnectionCounts(
            max_per_user=config.websocket.max_connections_per_user,
            max_per_address=config.websocket.max_connections_per_ip,
        )
        broadcast = BroadcastStats()
        observed = Observed.build(
            config,
            root,
            store=backends.store,
            board=backends.board,
            broker=backends.broker,
            server_collector=metrics.ServerCollector(
                root.statistics,
                connections=connections if serves_api else None,
                broadcast=broadcast if serves_api else None,
                broker=getattr(backends.broker, "statistics", None),
            ),
        )
        ops_url = None
        if config.ops.enabled:
            # Bound here, so that a port in use fails the start rather than a restart loop.
            ops_socket = owned.enter_context(bind_ops_socket(config))
            ops_url = socket_url(ops_socket)
            root.add_child(
                ChildSpec(id="ops", start=functools.partial(serve_ops, observed, ops_socket))
            )
            log.info("operations endpoints on %s", ops_url)
        services: Services | None = None
        if role in ("all", "worker"):
            worker = worker_supervisor(
                config,
                catalogue,
                store=backends.store,
                board=backends.board,
                broker=backends.broker,
            )
            root.add_child(ChildSpec(id="worker", start=worker.run))
        if serves_api:
            api, services = await api_supervisor(
                config,
                backends,
                catalogue,
                listening=owned.enter_context(ListeningSocket(config.server)),
                observed=observed,
                connections=connections,
                broadcast=broadcast,
            )
            root.add_child(ChildSpec(id="api", start=api.run))
        async with trio.open_nursery() as nursery:
            await nursery.start(root.run)
            task_status.started(
                ServerHandle(
                    url=root.started_value("api/http") if services is not None else None,
                    ops_url=ops_url,
                    supervisor=root,
                    services=services,
                    request_shutdown=nursery.cancel_scope.cancel,
                    drain=observed.drain,
                )
            )


async def _announce(config: Config, handle: ServerHandle) -> None:
    """Print the page's URL and, in embedded mode, the demo account (to stdout, not the log)."""
    if handle.url is None or handle.services is None:
        return
    embedded = config.backend_mode == "embedded"
    password = None
    if embedded:
        password = await create_demo_user(handle.services.store, handle.services.passwords)
    for line in announcement(handle.url, password, embedded=embedded):
        print(line, flush=True)


async def run_until_signalled(config: Config, parent: ParentLink | None = None) -> int:
    """The `scoreboard serve` main: SIGTERM or SIGINT drains and exits 0 (1 when the drain takes
    longer than `server.drain_timeout_s`); a root give-up exits 1.

    A child of `--processes N` (`parent` given) reports ready to its parent instead of announcing
    itself, ignores SIGINT (its parent stops it), and drains when its parent is gone.
    """
    gc.set_threshold(*GC_THRESHOLDS)
    exit_code = 0
    stop_signals = (signal.SIGTERM,) if parent else (signal.SIGTERM, signal.SIGINT)
    with trio.open_signal_receiver(*stop_signals) as signals:
        try:
            async with trio.open_nursery() as nursery:
                handle: ServerHandle = await nursery.start(run_server, config)
                # What start-up allocated lives as long as the process: keep the collector off it.
                gc.collect()
                gc.freeze()
                where = f" on {handle.url}" if handle.url else ""
                if parent is None:
                    log.info("scoreboard ready: role=%s%s", config.server.role, where)
                    await _announce(config, handle)
                else:
                    log.info("process ready: role=%s%s", config.server.role, where)
                    await parent.report_ready(handle.url)
                log.info("%s: draining", await _wait_for_stop(signals, parent))
                bound = config.server.drain_timeout_s
                with trio.move_on_after(bound) as drain_scope:
                    await _drain(handle)
                if drain_scope.cancelled_caught:
                    log.error("the drain took longer than server.drain_timeout_s (%g s)", bound)
                    exit_code = 1
                nursery.cancel_scope.cancel()
        except* SupervisorGaveUp as group:
            log.critical("supervisor gave up: %s", group.exceptions[0])
            exit_code = 1
    return exit_code


async def _drain(handle: ServerHandle) -> None:
    """`/readyz` 503 first; the HTTP server stops accepting and finishes its requests; then the
    actors stop in reverse order (the consumer before the scorer that acknowledges its batches)."""
    handle.drain.begin()
    if handle.services is not None:
        await handle.drain.http_drained.wait()
    log.info("shutting down the actors")
    await handle.supervisor.shutdown()


async def _wait_for_stop(signals: AsyncIterator[int], parent: ParentLink | None) -> str:
    """Why the server stops: a signal, or the parent process gone."""
    reason = "the parent process has gone"
    async with trio.open_nursery() as nursery:

        async def on_signal() -> None:
            nonlocal reason
            async for signum in signals:
                reason = f"received {signal.Signals(signum).name}"
                break
            nursery.cancel_scope.cancel()

        nursery.start_soon(on_signal)
        if parent is not None:
            await parent.wait_until_gone()
            nursery.cancel_scope.cancel()
    return reason
