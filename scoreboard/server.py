"""The application wiring: backends, channels, actors and the HTTP server under supervision.

One process runs the API role (HTTP, WebSockets, hub, events, publisher), the worker role
(consumer, router, scorer, keeper), or both. Each role is its own rest_for_one supervisor, with
its children in dependency order, so a crash restarts the crashed actor and those that depend on
it; the two roles sit under a one_for_one root, and a root that gives up ends the process
non-zero. In the API role only the hub, which the server's WebSockets register with, comes
before the HTTP server: the publisher, the events subscription and the revocations poll come
after it, so their trouble restarts them, never the server and every socket on it.

The wiring owns every channel; each incarnation of an actor gets fresh clones, so a restarted
actor reads the same inbox and its senders just wait.
"""

from __future__ import annotations

import gc
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from scoreboard.actors import (
    consumer,
    events,
    hub,
    janitor,
    keeper,
    publisher,
    revocations,
    router,
    scorer,
)
from scoreboard.actors.messages import HubMsg, KeeperMsg, PublisherMsg, RouterMsg, ScorerMsg
from scoreboard.auth.key_encryption import load_key_encryption
from scoreboard.auth.keys import load_or_create_keyring
from scoreboard.auth.passwords import Passwords
from scoreboard.backends import Backends, describe_backends, open_backends, wait_for_backends
from scoreboard.catalogue import Catalogue, configured_catalogue
from scoreboard.config import Config
from scoreboard.demo import announcement, create_demo_user
from scoreboard.http.app import create_asgi_app
from scoreboard.http.listener import bind_socket, serve_http, socket_url
from scoreboard.http.services import Services
from scoreboard.processes import ParentLink
from scoreboard.supervisor import ChildSpec, Supervisor, SupervisorGaveUp

log = logging.getLogger("scoreboard.server")

# Inbox sizes: small enough that a stalled stage pushes back on the broker's prefetch window,
# large enough that a batch of deliveries flows through without a context switch per message.
ROUTER_INBOX = 1024  # the consumer's burst of up to `prefetch` deliveries
SCORER_INBOX = 1024  # one full group commit waiting while the previous one commits
KEEPER_INBOX = 64  # batches, not actions
HUB_INBOX = 4096  # events, registrations and waiters from every connection of the process
PUBLISHER_INBOX = 1024  # requests waiting while a batch is confirmed; past it, handlers wait
# Design §8: with the default thresholds the collector eats half the CPU at 5k sockets.
GC_THRESHOLDS = (50_000, 20, 100)


@dataclass
class ServerHandle:
    """What a running server tells its starter (the CLI, or a test on port 0)."""

    url: str | None
    supervisor: Supervisor
    services: Services | None
    request_shutdown: Callable[[], None]


def _clone_start(
    start: Callable[..., Awaitable[None]], **kwargs: Any
) -> Callable[..., Awaitable[None]]:
    """A child start function whose channel arguments are cloned afresh for each incarnation."""

    async def start_with_clones(
        *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        fresh = {
            name: value.clone()
            if isinstance(value, trio.MemorySendChannel | trio.MemoryReceiveChannel)
            else value
            for name, value in kwargs.items()
        }
        await start(task_status=task_status, **fresh)

    return start_with_clones


def worker_children(config: Config, backends: Backends, catalogue: Catalogue) -> list[ChildSpec]:
    router_send, router_receive = trio.open_memory_channel[RouterMsg](ROUTER_INBOX)
    scorer_send, scorer_receive = trio.open_memory_channel[ScorerMsg](SCORER_INBOX)
    keeper_send, keeper_receive = trio.open_memory_channel[KeeperMsg](KEEPER_INBOX)
    return [
        ChildSpec(
            id="keeper",
            start=_clone_start(
                keeper.run,
                inbox=keeper_receive,
                store=backends.store,
                board=backends.board,
                broker=backends.broker,
                config=config,
            ),
            inbox=keeper_send,
        ),
        ChildSpec(
            id="scorer",
            start=_clone_start(
                scorer.run,
                inbox=scorer_receive,
                keeper=keeper_send,
                store=backends.store,
                broker=backends.broker,
                config=config,
            ),
            inbox=scorer_send,
        ),
        ChildSpec(
            id="router",
            start=_clone_start(
                router.run,
                inbox=router_receive,
                scorer=scorer_send,
                store=backends.store,
                catalogue=catalogue,
                config=config,
            ),
            inbox=router_send,
        ),
        ChildSpec(
            id="consumer",
            start=_clone_start(
                consumer.run, router=router_send, broker=backends.broker, config=config
            ),
        ),
        ChildSpec(
            id="janitor",
            start=_clone_start(janitor.run, store=backends.store, config=config.janitor),
        ),
    ]


def api_children(
    config: Config,
    backends: Backends,
    services: Services,
    hub_receive: trio.MemoryReceiveChannel[HubMsg],
    publisher_receive: trio.MemoryReceiveChannel[PublisherMsg],
    http_started: Callable[[list[str]], None],
) -> list[ChildSpec]:
    hub_send = services.hub
    app = create_asgi_app(services)
    http_shutdown = trio.Event()

    async def run_http(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal http_shutdown
        http_shutdown = trio.Event()
        with bind_socket(config.server) as listening:
            async with trio.open_nursery() as nursery:
                await nursery.start(serve_http, app, services, listening, http_shutdown)
                http_started([socket_url(listening)])
                task_status.started()

    return [
        ChildSpec(
            id="hub",
            start=_clone_start(
                hub.run,
                inbox=hub_receive,
                board=backends.board,
                config=config,
                stats=services.broadcast,
            ),
            inbox=hub_send,
        ),
        ChildSpec(id="http", start=run_http, shutdown=lambda: http_shutdown.set()),
        ChildSpec(
            id="publisher",
            start=_clone_start(
                publisher.run,
                inbox=publisher_receive,
                broker=backends.broker,
                guard=backends.guard,
                config=config,
            ),
            inbox=services.publisher,
        ),
        ChildSpec(
            id="events",
            start=_clone_start(
                events.run,
                hub=hub_send,
                broker=backends.broker,
                revocations=services.revocations,
            ),
        ),
        ChildSpec(
            id="revocations",
            start=_clone_start(
                revocations.run,
                hub=hub_send,
                store=backends.store,
                revocations=services.revocations,
                keyring=services.keyring,
                config=config,
            ),
        ),
    ]


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
    async with open_backends(config) as backends:
        sealed = await backends.store.reseal_signing_keys(plain_only=True)
        if sealed:
            log.info("encrypted the signing keys %s at rest", ", ".join(sealed))
        await backends.broker.declare_topology()
        roles: list[ChildSpec] = []
        services: Services | None = None
        bound: list[str] = []
        if role in ("all", "worker"):
            worker = Supervisor(
                worker_children(config, backends, catalogue), strategy="rest_for_one", name="worker"
            )
            roles.append(ChildSpec(id="worker", start=worker.run))
        if role in ("all", "api"):
            hub_send, hub_receive = trio.open_memory_channel[HubMsg](HUB_INBOX)
            publisher_send, publisher_receive = trio.open_memory_channel[PublisherMsg](
                PUBLISHER_INBOX
            )
            services = Services(
                config=config,
                catalogue=catalogue,
                store=backends.store,
                board=backends.board,
                guard=backends.guard,
                broker=backends.broker,
                keyring=await load_or_create_keyring(
                    backends.store,
                    activation_delay_ms=int(config.oauth.key_activation_s * 1000),
                ),
                passwords=Passwords(),
                hub=hub_send,
                publisher=publisher_send,
                statistics=lambda: root.statistics(),
                all_running=lambda: root.all_running,
                public_origin=config.public_origin,
            )

            await revocations.load_deny_list(backends.store, services.revocations)

            def http_started(binds: list[str], services: Services = services) -> None:
                bound[:] = binds
                if not config.public.origin:
                    services.public_origin = binds[0]

            api = Supervisor(
                api_children(
                    config, backends, services, hub_receive, publisher_receive, http_started
                ),
                strategy="rest_for_one",
                name="api",
            )
            roles.append(ChildSpec(id="api", start=api.run))
        root = Supervisor(roles, strategy="one_for_one", name="root")
        async with trio.open_nursery() as nursery:
            await nursery.start(root.run)
            task_status.started(
                ServerHandle(
                    url=bound[0] if bound else None,
                    supervisor=root,
                    services=services,
                    request_shutdown=nursery.cancel_scope.cancel,
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
    """The `scoreboard serve` main: SIGTERM or SIGINT drains and exits 0; a root give-up exits 1.

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
                log.info("%s: shutting down", await _wait_for_stop(signals, parent))
                await handle.supervisor.shutdown()
                nursery.cancel_scope.cancel()
        except* SupervisorGaveUp as group:
            log.critical("supervisor gave up: %s", group.exceptions[0])
            exit_code = 1
    return exit_code


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
