"""The seams of the listener: Hypercorn internals it drives (these tests fail loudly when a new
Hypercorn changes them), binding the listening socket, and the per-address counting key."""

from __future__ import annotations

import inspect
import socket
from importlib.metadata import version

import pytest
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import wrap_app

from scoreboard.addresses import address_key
from scoreboard.config import ServerConfig
from scoreboard.http.listener import ReplayStream, bind_socket, socket_url


def parameters(function: object) -> list[str]:
    return list(inspect.signature(function).parameters)  # type: ignore[arg-type]


def test_the_hypercorn_internals_the_listener_drives_are_the_ones_it_was_written_for() -> None:
    assert version("hypercorn").startswith("0.18."), "check listener.py against this Hypercorn"
    assert parameters(TCPServer.__init__) == ["self", "app", "config", "context", "state", "stream"]
    assert parameters(Lifespan.__init__) == ["self", "app", "config", "state"]
    for method in ("handle_lifespan", "wait_for_startup", "wait_for_shutdown"):
        assert inspect.iscoroutinefunction(getattr(Lifespan, method)), method
    assert parameters(WorkerContext.__init__) == ["self", "max_requests"]
    assert parameters(wrap_app) == ["app", "wsgi_max_body_size", "mode"]
    context = WorkerContext(None)
    assert inspect.iscoroutinefunction(context.terminated.set)
    # TCPServer tells a TLS stream from a plain one by `do_handshake`; a plain one needs `socket`.
    assert not hasattr(ReplayStream, "do_handshake")
    assert "self.stream.socket" in inspect.getsource(TCPServer.run)
    assert ConnectionState({}) == {}


async def hello(scope: dict[str, object], receive: object, send: object) -> None:
    assert scope["type"] == "http"
    assert callable(send)
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]}
    )
    await send({"type": "http.response.body", "body": str(scope["path"]).encode()[:5]})


async def test_hypercorn_serves_a_connection_whose_head_was_read_already() -> None:
    """TCPServer over a ReplayStream, as the listener runs it: the replayed bytes and those that
    follow make one request, answered on the same connection."""
    server_side, client_side = socket.socketpair()
    with server_side, client_side:
        server_side.setblocking(False)
        stream = ReplayStream(
            b"GET /hello HTTP/1.1\r\nHost: x\r\n",
            trio.SocketStream(trio.socket.from_stdlib_socket(server_side)),
        )
        client = trio.SocketStream(trio.socket.from_stdlib_socket(client_side))
        app = wrap_app(hello, 0, "asgi")  # type: ignore[arg-type]
        async with trio.open_nursery() as nursery:
            server = TCPServer(
                app,
                HypercornConfig(),
                WorkerContext(None),
                ConnectionState({}),
                stream,  # type: ignore[arg-type]
            )
            nursery.start_soon(server.run)
            await client.send_all(b"\r\n")
            received = b""
            with trio.fail_after(5):
                while not received.endswith(b"/hell"):
                    received += await client.receive_some()
            assert received.startswith(b"HTTP/1.1 200 ")
            nursery.cancel_scope.cancel()


def test_quart_has_no_websocket_route() -> None:
    """A WebSocket route on Quart would be served by Hypercorn, which negotiates per-connection
    permessage-deflate and inflates frames before any size check: live feeds go through the
    listener's own path (http/ws.py) instead."""
    from scoreboard.http.app import create_app

    app = create_app(None)  # type: ignore[arg-type]
    assert [rule.rule for rule in app.url_map.iter_rules() if rule.websocket] == []


def test_the_listening_socket_can_be_shared_by_several_processes() -> None:
    shared = ServerConfig(host="127.0.0.1", port=0, reuse_port=True)
    first = bind_socket(shared)
    with first:
        assert first.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
        port = first.getsockname()[1]
        with bind_socket(ServerConfig(host="127.0.0.1", port=port, reuse_port=True)) as second:
            assert second.getsockname()[1] == port
        with pytest.raises(OSError, match="in use"):
            bind_socket(ServerConfig(host="127.0.0.1", port=port))


def test_a_bound_socket_reports_its_url_ipv6_in_brackets() -> None:
    with bind_socket(ServerConfig(host="::1", port=0)) as ipv6:
        assert socket_url(ipv6) == f"http://[::1]:{ipv6.getsockname()[1]}"
    with bind_socket(ServerConfig(host="127.0.0.1", port=0)) as ipv4:
        assert socket_url(ipv4) == f"http://127.0.0.1:{ipv4.getsockname()[1]}"


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("::ffff:203.0.113.7", "203.0.113.7"),  # IPv4 on a dual-stack socket
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),  # same /64, same key
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),  # the next /64 is another subscriber
        ("::1", "::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("not-an-address", "not-an-address"),
    ],
)
def test_an_address_counts_as_itself_or_its_ipv6_64(address: str, key: str) -> None:
    assert address_key(address) == key
