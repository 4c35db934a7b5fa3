"""One listener, two servers: the live feed's own WebSocket path and Hypercorn, on one port.

The process owns the listening socket. For each connection it reads the first request head
(at most `MAX_HEAD_BYTES`, within `server.header_timeout_s`, else the connection is closed,
408/431 if a partial head came). A WebSocket upgrade of `GET /api/v1/ws` goes to the lean
path (`http/ws.py`); a plain HTTP/1.1 `POST /api/v1/actions/perform` to the lean perform loop
(`http/perform_loop.py`), which keeps the connection while perform requests follow on it. Every
other connection (other routes, HTTP/1.0, chunked bodies, h2c, WebSocket upgrades of other
paths, anything unparsable), and a lean one from its first other request on, goes to
Hypercorn's own connection handler over a stream that first replays the bytes already read, so
Hypercorn sees the connection exactly as a client sent it. A connection past
`server.max_connections` gets a 503 and is closed at once.

Hypercorn has no public API for serving a connection it did not accept, so this drives its trio
worker's internals the way `hypercorn.trio.run.worker_serve` does (`TCPServer`, `Lifespan`,
`WorkerContext`, `wrap_app`); pyproject.toml pins the Hypercorn versions this was checked with,
and tests/http/test_listener.py fails loudly if those internals change.

Shutdown (the trigger set, or the process's drain begun `server.drain_delay_s` ago): stop
accepting and close the listening socket, close WebSockets (1012 when the process drains, else
1001) and connections waiting for a request head (the first, or the next on a lean perform
connection), tell Hypercorn's connections to finish (idle keep-alive connections close, requests
in flight complete), wait at most `server.shutdown_grace_s`.
A drain then reports `http_drained` and waits for the trigger; the app's lifespan shutdown runs
last. While the process drains, every response carries `Connection: close` (`CloseWhenDraining`,
and the lean perform loop likewise):
Hypercorn alone would answer one more request on each keep-alive connection as if nothing
happened, then drop the connection under the client's next request.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import resource
import socket
from types import TracebackType
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import AppWrapper, ConnectionState, LifespanState
from hypercorn.utils import wrap_app

from scoreboard.config import ServerConfig
from scoreboard.drain import Drain
from scoreboard.http import perform_loop, ws
from scoreboard.http.services import Services

log = logging.getLogger(__name__)

LISTEN_BACKLOG = 4096  # the kernel caps it at net.core.somaxconn
MAX_HEAD_BYTES = 16 * 1024  # as Hypercorn's own h11 limit for a request head
RECEIVE_BYTES = 16 * 1024
ACCEPT_BATCH = 64  # connections accepted per wake-up before other tasks get a turn
ACCEPT_PAUSE_S = 0.1  # out of file descriptors: wait for some to close
RESERVED_FILES = 256  # descriptors kept for everything else (backends, logs, the listener)
_OVERLOADED_BODY = (
    b'{"success":false,"error":"unavailable","retry_after":1,"message":"too many connections"}'
)
OVERLOADED = (
    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_OVERLOADED_BODY), _OVERLOADED_BODY)
)


def bind_socket(server: ServerConfig) -> socket.socket:
    """The listening socket for `server.host`/`server.port` (port 0: any free port), with
    SO_REUSEPORT when `server.reuse_port` is set so that several processes serve one port."""
    host = server.host.strip("[]")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if server.reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, server.port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def socket_url(sock: socket.socket) -> str:
    """`http://host:port` of a bound socket, IPv6 hosts in brackets."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if sock.family == socket.AF_INET6 else f"http://{host}:{port}"


class ListeningSocket:
    """The process's listening socket, bound at once (with port 0, to a free port), so that its
    `url` is known before anything serves on it. A server that stops closes the socket to refuse
    new connections (`Listener.serve`); `take` binds the same address again for its successor."""

    def __init__(self, server: ServerConfig) -> None:
        self._sock = bind_socket(server)
        self.url = socket_url(self._sock)
        self._rebind_as = dataclasses.replace(server, port=self._sock.getsockname()[1])

    def take(self) -> socket.socket:
        """The listening socket to serve on, bound again if a previous server closed it."""
        if self._sock.fileno() < 0:
            self._sock = bind_socket(self._rebind_as)
        return self._sock

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> ListeningSocket:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def connection_limit(configured: int) -> int:
    """`server.max_connections`, within what the process may open: the soft limit on open files
    is raised towards the hard one, and a limit still too low lowers the cap (with a warning)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = configured + RESERVED_FILES
    if soft != resource.RLIM_INFINITY and soft < wanted:
        raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
        soft = raised
    if soft != resource.RLIM_INFINITY and soft < wanted:
        log.warning(
            "server.max_connections %d is above what the open-files limit (%d) allows: "
            "serving at most %d connections",
            configured,
            soft,
            soft - RESERVED_FILES,
        )
        return max(1, soft - RESERVED_FILES)
    return configured


class ReplayStream(trio.abc.HalfCloseableStream):
    """A connection's stream that first gives back the bytes the listener read to route it.
    `socket` is there for Hypercorn, which reads the peer's address from it."""

    def __init__(self, replay: bytes, transport: trio.SocketStream) -> None:
        self._replay = replay
        self._transport = transport

    @property
    def socket(self) -> trio.socket.SocketType:
        return self._transport.socket

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if not self._replay:
            return await self._transport.receive_some(max_bytes)
        await trio.lowlevel.checkpoint()
        size = len(self._replay) if max_bytes is None else max_bytes
        data, self._replay = self._replay[:size], self._replay[size:]
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._transport.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._transport.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self._transport.send_eof()

    async def aclose(self) -> None:
        await self._transport.aclose()


def hypercorn_config(services: Services) -> HypercornConfig:
    config = HypercornConfig()
    # No WebSocket route reaches Hypercorn (the live path is ours); should one ever, its
    # messages stay small.
    config.websocket_max_message_size = services.config.websocket.max_message_bytes
    config.graceful_timeout = services.config.server.shutdown_grace_s
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    return config


class Listener:
    def __init__(
        self, app: Any, services: Services, sock: socket.socket, *, lean_perform: bool = True
    ) -> None:
        self.services = services
        self.sock = sock
        self.lean_perform = lean_perform
        self.config = hypercorn_config(services)
        self.app: AppWrapper = wrap_app(
            CloseWhenDraining(app, services.observed.drain), self.config.wsgi_max_body_size, "asgi"
        )
        self.context = WorkerContext(None)
        self.lifespan_state: LifespanState = {}
        self.limit = connection_limit(services.config.server.max_connections)
        # Cancelled at shutdown: connections waiting for a request head (the first, or the next
        # on a lean perform connection), and WebSockets.
        self.unrouted: set[trio.CancelScope] = set()
        self.websockets: set[trio.CancelScope] = set()

    async def serve(
        self, shutdown: trio.Event, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        lifespan = Lifespan(self.app, self.config, self.lifespan_state)
        async with trio.open_nursery() as lifespan_nursery:
            await lifespan_nursery.start(lifespan.handle_lifespan)
            await lifespan.wait_for_startup()
            connection_state = ConnectionState(self.lifespan_state.copy())
            async with trio.open_nursery() as connections:
                async with trio.open_nursery() as accepting:
                    accepting.start_soon(self.accept, connections, connection_state)
                    task_status.started()
                    await self.stop_requested(shutdown)
                    accepting.cancel_scope.cancel()
                # Refused from now on, rather than queued by the kernel and reset at exit (and
                # with SO_REUSEPORT, new connections go to the other processes).
                self.sock.close()
                await self.context.terminated.set()
                for scope in (*self.unrouted, *self.websockets):
                    scope.cancel()
                connections.cancel_scope.deadline = (
                    trio.current_time() + self.config.graceful_timeout
                )
            drain = self.services.observed.drain
            if drain.draining:
                drain.http_drained.set()
                await shutdown.wait()
            await lifespan.wait_for_shutdown()
            lifespan_nursery.cancel_scope.cancel()

    async def stop_requested(self, shutdown: trio.Event) -> None:
        """Until the trigger is set, or the drain began `server.drain_delay_s` ago."""
        async with trio.open_nursery() as nursery:

            async def drained() -> None:
                await self.services.observed.drain.requested.wait()
                await trio.sleep(self.services.config.server.drain_delay_s)
                nursery.cancel_scope.cancel()

            async def triggered() -> None:
                await shutdown.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(drained)
            nursery.start_soon(triggered)

    async def accept(self, connections: trio.Nursery, state: ConnectionState) -> None:
        counts = self.services.connections
        while True:
            await trio.lowlevel.wait_readable(self.sock)
            for _ in range(ACCEPT_BATCH):
                try:
                    conn, address = self.sock.accept()
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                        log.warning("cannot accept connections: %s", exc)
                        await trio.sleep(ACCEPT_PAUSE_S)
                        break
                    if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                        continue
                    raise
                conn.setblocking(False)
                if not counts.admit(self.limit):
                    refuse_overloaded(conn)
                    continue
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                connections.start_soon(self.handle, conn, address[0], state)

    async def handle(self, conn: socket.socket, peer: str, state: ConnectionState) -> None:
        try:
            head = await self.read_head(conn)
            if head is None:
                return
            request = ws.is_live_path_upgrade(head)
            if request is not None:
                trailing = head[head.index(b"\r\n\r\n") + 4 :]
                await ws.serve(self.services, conn, peer, request, trailing, self.websockets)
                return
            if self.lean_perform:
                rest = await perform_loop.serve(
                    self.services,
                    conn,
                    peer,
                    head,
                    lambda received: self.next_head(conn, received),
                    self.config.keep_alive_max_requests,
                )
                if rest is None:
                    return
                head = rest  # Hypercorn's from this request on
            stream = ReplayStream(head, trio.SocketStream(trio.socket.from_stdlib_socket(conn)))
            # Annotated as an SSL stream; a plain one works (its `.socket` is what it reads).
            await TCPServer(self.app, self.config, self.context, state, stream)  # type: ignore[arg-type]
        except Exception:
            log.exception("connection from %s failed", peer)
        finally:
            self.services.connections.connection_closed()
            conn.close()

    async def read_head(
        self, conn: socket.socket, timeout_s: float | None = None, received: bytes = b""
    ) -> bytes | None:
        """The bytes up to the end of a request head, and whatever came with them, given those
        of `received`; None (and the connection answered if it sent part of a head) if none
        arrives within `timeout_s` (default `server.header_timeout_s`)."""
        if timeout_s is None:
            timeout_s = self.services.config.server.header_timeout_s
        buffer = bytearray(received)
        with trio.CancelScope() as scope:
            self.unrouted.add(scope)
            try:
                with trio.move_on_after(timeout_s):
                    searched_from = 0
                    while buffer.find(b"\r\n\r\n", searched_from) < 0:
                        if len(buffer) > MAX_HEAD_BYTES:
                            await ws.refuse(
                                conn,
                                431,
                                "Request Header Fields Too Large",
                                "request head too large",
                            )
                            return None
                        data = await ws.receive_some(conn)
                        if not data:
                            return None
                        searched_from = max(0, len(buffer) - 3)
                        buffer += data
                    return bytes(buffer)
            except ws.PeerGone:
                return None
            finally:
                self.unrouted.discard(scope)
        if buffer and not scope.cancelled_caught:
            await ws.refuse(conn, 408, "Request Timeout", "the request head did not arrive in time")
        return None

    async def next_head(self, conn: socket.socket, received: bytes) -> bytes | None:
        """The next request head on a keep-alive connection of the lean perform loop, within
        Hypercorn's `keep_alive_timeout` as its own idle connections; None once the server
        stops (as Hypercorn closes its idle keep-alive connections then)."""
        if self.context.terminated.is_set():
            return None
        if received.find(b"\r\n\r\n") >= 0:
            # A pipelined request: give other tasks their turn before serving it.
            await trio.lowlevel.checkpoint()
            return received
        return await self.read_head(conn, self.config.keep_alive_timeout, received)


class CloseWhenDraining:
    """ASGI middleware: while the process drains, each HTTP response says `Connection: close`,
    so that a keep-alive client sends its next request to another process."""

    def __init__(self, app: Any, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_closing(message: Any) -> None:
            if message["type"] == "http.response.start" and self.drain.draining:
                headers = [
                    (name, value)
                    for name, value in message.get("headers", ())
                    if name.lower() != b"connection"
                ]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, send_closing)


def refuse_overloaded(conn: socket.socket) -> None:
    """A 503 sent without waiting (it fits any empty socket buffer), then close."""
    with contextlib.suppress(OSError):
        conn.send(OVERLOADED)
    conn.close()


async def serve_http(
    app: Any,
    services: Services,
    sock: socket.socket,
    shutdown: trio.Event,
    *,
    lean_perform: bool = True,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve on the listening socket `sock` until `shutdown` is set; it is closed then. Without
    `lean_perform`, perform requests go to `app` through Hypercorn too (tests compare both)."""
    listener = Listener(app, services, sock, lean_perform=lean_perform)
    await listener.serve(shutdown, task_status=task_status)
