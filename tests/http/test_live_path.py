"""The live feed's own socket path, against the real server on port 0: one listener in front of
two servers, the hub's direct writes and their fallback when a kernel buffer fills, no
per-connection compression, pings and the idle close, and the listener's limits (connections,
request heads)."""

from __future__ import annotations

import contextlib
import functools
import json
import re
import resource
import socket
import time
import zlib
from collections.abc import Callable

import httpx
import pytest
import trio
from trio_websocket import ConnectionRejected

from scoreboard.actors import hub
from scoreboard.config import Config
from scoreboard.records import LeaderboardChanged, RankedEntry, ScoreChanged
from scoreboard.server import ServerHandle, run_server
from tests.http.conftest import Player, new_player
from tests.http.raw_ws import OP_CLOSE, OP_PING, RawWebSocket, open_raw_websocket
from tests.http.test_ws_api import authenticate, closed_with, connect
from tests.prometheus import sample

OFFER_DEFLATE = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits"
WAIT_S = 10


def address(server: ServerHandle) -> tuple[str, int]:
    assert server.url is not None
    host, _, port = server.url.removeprefix("http://").rpartition(":")
    return host.strip("[]"), int(port)


async def raw_connection(server: ServerHandle) -> trio.socket.SocketType:
    host, port = address(server)
    sock = trio.socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    await sock.connect((host, port))
    return sock


async def read_until_closed(sock: trio.socket.SocketType) -> bytes:
    received = bytearray()
    with trio.fail_after(WAIT_S):
        while data := await sock.recv(65536):
            received += data
    return bytes(received)


async def read_until(sock: trio.socket.SocketType, marker: bytes) -> bytes:
    received = bytearray()
    with trio.fail_after(WAIT_S):
        while marker not in received:
            data = await sock.recv(65536)
            assert data, bytes(received)
            received += data
    return bytes(received)


async def raw_authenticated(server: ServerHandle, player: Player, **kwargs: object) -> RawWebSocket:
    assert server.url is not None
    raw = await open_raw_websocket(server.url, origin=server.url, **kwargs)  # type: ignore[arg-type]
    assert raw.status == 101, raw
    await raw.send_json({"type": "auth", "token": player.token})
    assert (await raw.receive_json())["type"] == "auth_ok"
    assert (await raw.receive_json())["type"] == "leaderboard_update"
    return raw


def snapshot(sequence: int, *, padding: int = 0) -> LeaderboardChanged:
    """A top 10 whose leader's score is `sequence` (and about 100 + `padding` bytes a row)."""
    rows = tuple(
        RankedEntry(rank, 10_000 + rank, f"user{rank}-{'x' * padding}", sequence - rank + 1)
        for rank in range(1, 11)
    )
    return LeaderboardChanged(rows, int(time.time() * 1000))


def score_updates(user_id: int, count: int, *, padding: int = 0) -> list[ScoreChanged]:
    """`count` score updates for the user, the n-th going to score n (its name padded by
    `padding` bytes, to fill kernel buffers)."""
    return [ScoreChanged(user_id, f"player-{'x' * padding}", n - 1, n, 1, 0) for n in range(count)]


def new_score(frame: dict[str, object]) -> int:
    assert frame["type"] == "score_update", frame
    score: int = frame["data"]["new_score"]  # type: ignore[index]
    return score


def leader_score(frame: dict[str, object]) -> int:
    assert frame["type"] == "leaderboard_update", frame
    score: int = frame["data"]["leaderboard"][0]["score"]  # type: ignore[index]
    return score


async def wait_for(condition: Callable[[], bool]) -> None:
    with trio.fail_after(WAIT_S):
        while not condition():
            await trio.sleep(0.01)


# One listener, two servers


async def test_http_keep_alive_and_split_bodies_still_reach_quart(server: ServerHandle) -> None:
    sock = await raw_connection(server)
    with sock:
        await sock.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        body = b'{"username": "ab", "email": "not-an-email", "password": "short"}'
        # The head of a POST first, its body a moment later: Hypercorn reads the rest itself.
        await sock.send(
            b"POST /api/v1/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        await trio.sleep(0.05)
        await sock.send(body)
        await sock.send(b"GET /api/v1/ws HTTP/1.1\r\nHost: x\r\n\r\n")
        answers = (await read_until(sock, b"send an upgrade request")).decode()
    statuses = re.findall(r"HTTP/1\.1 (\d{3}) ", answers)
    assert statuses == ["200", "400", "426"], answers
    assert '"status":"ok"' in answers.replace(" ", "")


async def test_a_websocket_upgrade_of_another_path_reaches_quart(server: ServerHandle) -> None:
    assert server.url is not None
    for path in ("/api/v1/other", "/api/v1/wsx", "/healthz"):
        raw = await open_raw_websocket(
            server.url, origin=server.url, path=path, extra_headers=(OFFER_DEFLATE,)
        )
        await raw.aclose()
        # Quart's own answers: no route (404), or an HTTP route that is no WebSocket (400).
        assert raw.status in (400, 404), (path, raw.status)
        assert raw.headers["content-type"] == "application/json"
        assert "sec-websocket-extensions" not in raw.headers


async def test_a_bad_handshake_on_the_live_path_gets_an_http_answer(server: ServerHandle) -> None:
    sock = await raw_connection(server)
    with sock:
        await sock.send(
            b"GET /api/v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n"
            b"Origin: " + server.url.encode() + b"\r\n\r\n"  # type: ignore[union-attr]
        )
        answer = await read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 426 "), answer
    assert b"Sec-WebSocket-Version: 13" in answer


# No per-connection compression (issue: compressed frames inflated without a bound)


async def test_a_client_offering_deflate_connects_and_gets_uncompressed_frames(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    player = await new_player(client, server)
    raw = await raw_authenticated(server, player, extra_headers=(OFFER_DEFLATE,))
    try:
        await raw.send_json({"type": "ping", "timestamp": 1})
        assert await raw.receive_json() == {"type": "pong", "timestamp": 1}
    finally:
        await raw.aclose()


@functools.cache
def deflate_bomb(compressed_size: int) -> bytes:
    """A raw-deflate payload of about `compressed_size` bytes that inflates ~1,000-fold."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(1 << 20)
    payload = bytearray()
    while len(payload) < compressed_size:
        payload += compressor.compress(zeros)
    payload += compressor.flush(zlib.Z_SYNC_FLUSH)
    return bytes(payload[:compressed_size])


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("compressed_size", [65_000, 522_000])
async def test_a_compressed_frame_is_never_inflated(
    server: ServerHandle, client: httpx.AsyncClient, compressed_size: int
) -> None:
    """The server runs in this process: its peak memory is this process's."""
    assert server.url is not None
    player = await new_player(client, server)
    bomb = deflate_bomb(compressed_size)
    peak_before = peak_rss_mib()
    # On the live path deflate is not agreed; a frame that claims it anyway is a protocol error.
    for authenticated in (False, True):
        if authenticated:
            raw = await raw_authenticated(server, player, extra_headers=(OFFER_DEFLATE,))
        else:
            raw = await open_raw_websocket(
                server.url, origin=server.url, extra_headers=(OFFER_DEFLATE,)
            )
            assert raw.status == 101
            assert "sec-websocket-extensions" not in raw.headers
        try:
            await raw.send_frame(0x1, bomb, rsv1=True)
            frame = await raw.receive()
            while frame.opcode != OP_CLOSE:
                frame = await raw.receive()
            assert frame.close_code in (1002, 1009), frame
        finally:
            await raw.aclose()
    # Uncompressed (binary: they are no UTF-8), the same bytes are over the 4 KiB cap.
    raw = await raw_authenticated(server, player)
    try:
        await raw.send_frame(0x2, bomb)
        frame = await raw.receive()
        while frame.opcode != OP_CLOSE:
            frame = await raw.receive()
        assert frame.close_code == 1009
    except (EOFError, OSError):
        pass  # closed while the client was still sending: as good as 1009
    finally:
        await raw.aclose()
    # Another path never upgrades (Quart has no WebSocket route): nothing there inflates either.
    raw = await open_raw_websocket(
        server.url, origin=server.url, path="/api/v1/other", extra_headers=(OFFER_DEFLATE,)
    )
    assert raw.status == 404
    with contextlib.suppress(OSError):
        await raw.send_frame(0x1, bomb, rsv1=True)
        await read_until_closed(raw.sock)
    await raw.aclose()
    assert peak_rss_mib() - peak_before < 50
    assert (await client.get("/healthz")).status_code == 200


async def test_a_message_nested_too_deep_or_not_strict_json_is_an_error_frame(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    raw = await raw_authenticated(server, await new_player(client, server))
    try:
        nested = b"[" * 2000 + b"]" * 2000  # under the 4 KiB cap, deeper than the parser goes
        for message, opcode in (
            (nested, 0x1),
            (b'{"type": "ping", "timestamp": NaN}', 0x1),
            ('{"type": "ping"}'.encode("utf-16"), 0x2),  # binary, but not UTF-8
        ):
            await raw.send_frame(opcode, message)
            answer = await raw.receive_json()
            while answer["type"] == "leaderboard_update":
                answer = await raw.receive_json()
            assert answer["type"] == "error", answer
            assert answer["error"] == "invalid_message"
        await raw.send_json({"type": "ping", "timestamp": 3})
        assert await raw.receive_json() == {"type": "pong", "timestamp": 3}
    finally:
        await raw.aclose()


# The hub's direct writes, and the writer when a kernel buffer fills


class FastTicks:
    @pytest.fixture
    def app_config(self, config: Config) -> Config:
        return config.replace(
            websocket={
                "min_update_interval_s": 0.02,
                "send_timeout_s": 30.0,
                "send_buffer_bytes": 8192,
            },
            limits={"enabled": False},
        )


class TestBackloggedSocket(FastTicks):
    async def test_a_full_kernel_buffer_fills_then_drains_with_the_newest_frames_intact(
        self, server: ServerHandle, client: httpx.AsyncClient
    ) -> None:
        assert server.services is not None
        assert server.url is not None
        counts = server.services.connections
        stalled_player, watcher_player = (
            await new_player(client, server),
            await new_player(client, server),
        )
        stalled = await raw_authenticated(server, stalled_player, receive_buffer=4096)
        watcher = await raw_authenticated(server, watcher_player)
        seen: list[int] = []

        async def watch() -> None:
            while True:
                seen.append(leader_score(await watcher.receive_json()))

        sequence = 0
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch)
                # Stop reading: the client's receive buffer, then the server's send buffer, fill.
                with trio.fail_after(WAIT_S * 3):
                    while counts.backlogged == 0:
                        sequence += 1
                        await hub.notify(server.services.hub, snapshot(sequence, padding=200))
                        await trio.sleep(0.005)
                # Keep the board moving while the socket is backlogged; the watcher keeps up.
                backlogged_from = sequence
                for _ in range(20):
                    sequence += 1
                    await hub.notify(server.services.hub, snapshot(sequence, padding=200))
                    await trio.sleep(0.03)
                assert counts.backlogged == 1
                await wait_for(lambda: bool(seen) and seen[-1] == sequence)
                nursery.cancel_scope.cancel()
            assert seen == sorted(set(seen))
            # Read again: every frame parses, in order, ending with the newest board; the ones
            # the backlog skipped were replaced by newer ones, never queued.
            scores: list[int] = []
            while not scores or scores[-1] != sequence:
                scores.append(leader_score(await stalled.receive_json()))
            assert scores == sorted(set(scores)), scores
            assert len(scores) < sequence  # some were skipped...
            assert scores[-1] == sequence  # ...and the newest arrived
            assert any(score > backlogged_from for score in scores)
            await wait_for(lambda: counts.backlogged == 0)
            # Back on direct writes: the socket is in step again.
            await stalled.send_json({"type": "ping", "timestamp": 7})
            frame = await stalled.receive_json()
            while frame["type"] == "leaderboard_update":
                frame = await stalled.receive_json()
            assert frame == {"type": "pong", "timestamp": 7}
        finally:
            await stalled.aclose()
            await watcher.aclose()


async def test_a_users_frames_of_one_batch_arrive_in_one_write_in_order(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    assert server.services is not None
    player = await new_player(client, server)
    raw = await raw_authenticated(server, player)
    try:
        await hub.notify_all(server.services.hub, score_updates(player.user_id, 12))
        # One recv takes all of them: they were written with one send (loopback delivers a
        # send this small whole). Snapshots, if the board moved, come in writes of their own.
        personal: list[int] = []
        with trio.fail_after(WAIT_S):
            while not personal:
                raw.buffer += await raw.sock.recv(65536)
                personal = [
                    new_score(frame.json())
                    for frame in raw.take_buffered()
                    if frame.json()["type"] != "leaderboard_update"
                ]
        assert personal == list(range(12))
        assert not raw.buffer
    finally:
        await raw.aclose()


class TestBackloggedPersonalFrames(FastTicks):
    async def test_a_partial_write_of_a_batch_resumes_exactly_where_it_stopped(
        self, server: ServerHandle, client: httpx.AsyncClient
    ) -> None:
        assert server.services is not None
        counts = server.services.connections
        player = await new_player(client, server)
        stalled = await raw_authenticated(server, player, receive_buffer=4096)
        try:
            # More than the client's receive and the server's send buffer hold, in one batch.
            events = score_updates(player.user_id, 60, padding=1000)
            await hub.notify_all(server.services.hub, events)
            await wait_for(lambda: counts.backlogged == 1)
            more = score_updates(player.user_id, 63)[60:]
            await hub.notify_all(server.services.hub, more)
            # Reading now: every frame whole, each once, in order.
            scores: list[int] = []
            while len(scores) < 63:
                frame = await stalled.receive_json()
                if frame["type"] != "leaderboard_update":
                    scores.append(new_score(frame))
            assert scores == list(range(63))
            await wait_for(lambda: counts.backlogged == 0)
            await stalled.send_json({"type": "ping", "timestamp": 7})
            frame = await stalled.receive_json()
            while frame["type"] == "leaderboard_update":
                frame = await stalled.receive_json()
            assert frame == {"type": "pong", "timestamp": 7}
        finally:
            await stalled.aclose()


class TestSlowReader:
    @pytest.fixture
    def app_config(self, config: Config) -> Config:
        return config.replace(
            websocket={
                "min_update_interval_s": 0.02,
                "send_timeout_s": 1.0,
                "send_buffer_bytes": 8192,
            },
            limits={"enabled": False},
        )

    async def test_a_reader_that_stays_behind_is_closed_1013_and_the_others_keep_their_rate(
        self, server: ServerHandle, client: httpx.AsyncClient
    ) -> None:
        assert server.services is not None
        services = server.services
        stalled = await raw_authenticated(
            server, await new_player(client, server), receive_buffer=4096
        )
        received = [0, 0, 0]
        newest = [0, 0, 0]

        async def read(index: int, raw: RawWebSocket) -> None:
            while True:
                newest[index] = leader_score(await raw.receive_json())
                received[index] += 1

        readers = [
            await raw_authenticated(server, await new_player(client, server)) for _ in received
        ]
        async with trio.open_nursery() as nursery:
            for index, raw in enumerate(readers):
                nursery.start_soon(read, index, raw)
            broadcasts_before = services.broadcast.broadcasts
            sequence = 0
            with trio.fail_after(WAIT_S * 3):
                while services.connections.closes[1013] == 0:
                    sequence += 1
                    await hub.notify(services.hub, snapshot(sequence, padding=200))
                    await trio.sleep(0.02)
            broadcasts = services.broadcast.broadcasts - broadcasts_before
            await wait_for(lambda: newest == [sequence] * 3)
            nursery.cancel_scope.cancel()
        # The readers kept getting broadcasts while the stalled socket was being given up on (all
        # of them on an idle machine; a reader in this busy process may skip a few, which its
        # small send buffer turns into latest-value drops, hence only half is asserted).
        assert min(received) >= 0.5 * broadcasts, (received, broadcasts)
        assert server.ops_url is not None
        async with httpx.AsyncClient(base_url=server.ops_url) as ops:
            metrics = (await ops.get("/metrics")).text
        assert sample(metrics, "scoreboard_websocket_closes_total", code="1013") == 1
        assert sample(metrics, "scoreboard_websocket_slow_client_closes_total") == 1
        # The stalled client finds, after what was buffered, the end of the connection.
        with pytest.raises((EOFError, OSError)):  # noqa: PT012
            while True:
                await stalled.receive()
        for raw in (stalled, *readers):
            await raw.aclose()

    async def test_a_reader_that_stops_taking_its_own_frames_is_closed_1013(
        self, server: ServerHandle, client: httpx.AsyncClient
    ) -> None:
        assert server.services is not None
        services = server.services
        player = await new_player(client, server)
        stalled = await raw_authenticated(server, player, receive_buffer=4096)
        sent = 0
        with trio.fail_after(WAIT_S * 3):
            while services.connections.closes[1013] == 0:
                batch = score_updates(player.user_id, sent + 5, padding=200)[sent:]
                await hub.notify_all(services.hub, batch)
                sent += len(batch)
                await trio.sleep(0.02)
        # What reaches the client is its own frames whole and in order, with none left out,
        # up to where it was given up on.
        scores: list[int] = []
        with pytest.raises((EOFError, OSError)):  # noqa: PT012
            while True:
                frame = await stalled.receive()
                if frame.opcode == OP_CLOSE:
                    assert frame.close_code == 1013
                elif frame.json()["type"] != "leaderboard_update":
                    scores.append(new_score(frame.json()))
        assert scores == list(range(len(scores)))
        assert 0 < len(scores) < sent
        await stalled.aclose()


class TestRevokedWhileBacklogged(FastTicks):
    async def test_revocation_closes_a_backlogged_socket_4401_after_the_frame_it_was_writing(
        self, server: ServerHandle, client: httpx.AsyncClient
    ) -> None:
        assert server.services is not None
        counts = server.services.connections
        player = await new_player(client, server)
        stalled = await raw_authenticated(server, player, receive_buffer=4096)
        try:
            sequence = 0
            with trio.fail_after(WAIT_S * 3):
                while counts.backlogged == 0:
                    sequence += 1
                    await hub.notify(server.services.hub, snapshot(sequence, padding=200))
                    await trio.sleep(0.005)
            revoked = await client.post(
                "/api/v1/oauth/revoke",
                json={"token": player.token, "token_type_hint": "access_token"},
            )
            assert revoked.json() == {"revoked": True}
            await wait_for(lambda: counts.closes[4401] == 1)
            # Reading again: whole frames in order, then the reason, then the close.
            frame = await stalled.receive()
            scores = []
            while frame.opcode != OP_CLOSE:
                message = frame.json()
                if message["type"] == "leaderboard_update":
                    scores.append(leader_score(message))
                else:
                    assert message == {"type": "error", "error": "token_revoked"}
                frame = await stalled.receive()
            assert frame.close_code == 4401
            assert scores == sorted(set(scores))
        finally:
            await stalled.aclose()


# Pings, the idle close, shutdown


class TestPingsAndIdle:
    @pytest.fixture
    def app_config(self, config: Config) -> Config:
        return config.replace(websocket={"ping_interval_s": 0.3, "idle_timeout_s": 1.5})

    async def test_a_silent_client_is_pinged_then_closed_1008_idle_timeout(
        self, server: ServerHandle, client: httpx.AsyncClient
    ) -> None:
        raw = await raw_authenticated(server, await new_player(client, server))
        try:
            started = trio.current_time()
            frame = await raw.receive()
            assert frame.opcode == OP_PING  # the server noticed the silence
            while frame.opcode == OP_PING:  # never answered
                frame = await raw.receive()
            assert frame.json() == {"type": "error", "error": "idle_timeout"}
            close = await raw.receive()
            assert close.close_code == 1008
            assert trio.current_time() - started >= 1.0
        finally:
            await raw.aclose()

    async def test_a_client_that_answers_pings_stays(
        self, server: ServerHandle, client: httpx.AsyncClient
    ) -> None:
        player = await new_player(client, server)
        async with connect(server) as socket_:  # trio-websocket answers pings by itself
            await authenticate(socket_, player)
            await trio.sleep(2.5)  # not synchronisation: silence well past the idle timeout
            await socket_.send_message(json.dumps({"type": "ping", "timestamp": 9}))
            frame = json.loads(await socket_.get_message())
            while frame["type"] == "leaderboard_update":
                frame = json.loads(await socket_.get_message())
            assert frame == {"type": "pong", "timestamp": 9}


async def test_a_stopping_server_closes_its_websockets_1001(app_config: Config) -> None:
    async with trio.open_nursery() as nursery:
        server: ServerHandle = await nursery.start(run_server, app_config)
        assert server.url is not None
        async with httpx.AsyncClient(base_url=server.url) as http:
            player = await new_player(http, server)
        async with connect(server) as socket_:
            await authenticate(socket_, player)
            nursery.start_soon(server.supervisor.shutdown)
            with trio.fail_after(WAIT_S):
                frames = await closed_with(socket_, 1001)
            assert all(frame["type"] == "leaderboard_update" for frame in frames)
        nursery.cancel_scope.cancel()


# Caps and limits of the listener


class TestIpv6Caps:
    @pytest.fixture
    def app_config(self, config: Config) -> Config:
        return config.replace(server={"host": "::1"}, websocket={"max_connections_per_ip": 1})

    async def test_ipv6_clients_count_by_their_64_against_the_per_address_cap(
        self, server: ServerHandle, client: httpx.AsyncClient
    ) -> None:
        assert server.url is not None
        assert server.url.startswith("http://[::1]:")
        player = await new_player(client, server)
        async with connect(server) as first:
            await authenticate(first, player)
            with pytest.raises(ConnectionRejected) as rejected:
                async with connect(server):
                    pytest.fail("a second connection from the /64 was accepted")
            assert rejected.value.status_code == 429
            assert server.services is not None
            assert server.services.connections.per_ip == {"::/64": 1}
        await wait_for(lambda: not server.services.connections.per_ip)  # type: ignore[union-attr]


class TestConnectionCap:
    @pytest.fixture
    def app_config(self, config: Config) -> Config:
        return config.replace(server={"max_connections": 3})

    async def test_a_connection_past_the_process_cap_gets_503(self, server: ServerHandle) -> None:
        assert server.services is not None
        counts = server.services.connections
        await wait_for(lambda: counts.open == 0)
        held = [await raw_connection(server) for _ in range(3)]
        await wait_for(lambda: counts.open == 3)
        extra = await raw_connection(server)
        with extra:
            answer = await read_until_closed(extra)
        assert answer.startswith(b"HTTP/1.1 503 "), answer
        assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"] == "unavailable"
        held.pop().close()
        await wait_for(lambda: counts.open == 2)
        with await raw_connection(server) as admitted:
            await admitted.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await read_until(admitted, b'"ok"')).startswith(b"HTTP/1.1 200 ")
        for sock in held:
            sock.close()


class TestHeadLimits:
    @pytest.fixture
    def app_config(self, config: Config) -> Config:
        return config.replace(server={"header_timeout_s": 0.5})

    async def test_a_head_that_does_not_arrive_in_time_is_closed(
        self, server: ServerHandle
    ) -> None:
        silent = await raw_connection(server)
        partial = await raw_connection(server)
        with silent, partial:
            await partial.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            started = trio.current_time()
            assert await read_until_closed(silent) == b""
            assert (await read_until_closed(partial)).startswith(b"HTTP/1.1 408 ")
            assert trio.current_time() - started < 5

    async def test_a_head_over_16_kib_is_refused_431(self, server: ServerHandle) -> None:
        sock = await raw_connection(server)
        with sock:
            await sock.send(b"GET /healthz HTTP/1.1\r\nX-Padding: " + b"x" * 17_000)
            assert (await read_until_closed(sock)).startswith(b"HTTP/1.1 431 ")
