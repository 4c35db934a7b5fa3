"""The load test's own parts: the WebSocket frame codec with permessage-deflate, the latency
histogram, the HTTP/1.1 client's bodies, and finding a server's processes in /proc."""

from __future__ import annotations

import argparse
import os
import socket
import zlib
from functools import partial

import pytest
import trio
import trio.testing

from scoreboard.loadtest.accounts import Account
from scoreboard.loadtest.fleet import BEHIND_P99_MS, FleetFigures
from scoreboard.loadtest.histogram import Histogram
from scoreboard.loadtest.http11 import HttpConnection, HttpError, Origin
from scoreboard.loadtest.ledger import Action
from scoreboard.loadtest.options import Options, add_arguments
from scoreboard.loadtest.procstats import ProcessTree, listening_pids, server_roots
from scoreboard.loadtest.runner import ActionType, LoadTest
from scoreboard.loadtest.watchers import Snapshot, Worker
from scoreboard.loadtest.websocket import (
    BINARY,
    CLOSE,
    PING,
    TEXT,
    Deflate,
    FrameReader,
    ProtocolError,
    accept_value,
    check_upgrade,
    client_frame,
    parse_deflate_answer,
)


def server_frame(opcode: int, payload: bytes, *, final: bool = True, rsv1: bool = False) -> bytes:
    first = (0x80 if final else 0) | (0x40 if rsv1 else 0) | opcode
    length = len(payload)
    if length < 126:
        return bytes((first, length)) + payload
    if length < 65536:
        return bytes((first, 126)) + length.to_bytes(2, "big") + payload
    return bytes((first, 127)) + length.to_bytes(8, "big") + payload


def compressed(compressor: zlib._Compress, message: bytes) -> bytes:
    data = compressor.compress(message) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert data.endswith(b"\x00\x00\xff\xff")
    return data[:-4]


def unmask(frame: bytes) -> tuple[int, bytes]:
    length = frame[1] & 0x7F
    start = 2
    if length == 126:
        length, start = int.from_bytes(frame[2:4], "big"), 4
    mask, payload = frame[start : start + 4], frame[start + 4 :]
    assert frame[1] & 0x80
    assert len(payload) == length
    return frame[0] & 0x0F, bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def test_frames_split_anywhere_come_out_whole() -> None:
    big = b"x" * 70_000
    stream = (
        server_frame(TEXT, b'{"type":"a"}') + server_frame(BINARY, big) + server_frame(PING, b"hi")
    )
    for cut in (1, 2, 3, 7, 100, 65_000):
        reader = FrameReader(None)
        messages = []
        for start in range(0, len(stream), cut):
            messages += reader.feed(stream[start : start + cut])
        assert messages == [(TEXT, b'{"type":"a"}'), (BINARY, big), (PING, b"hi")]


def test_fragments_are_joined_with_control_frames_between() -> None:
    reader = FrameReader(None)
    stream = (
        server_frame(TEXT, b"hel", final=False)
        + server_frame(PING, b"p")
        + server_frame(0, b"lo", final=False)
        + server_frame(0, b"!")
    )
    assert reader.feed(stream) == [(PING, b"p"), (TEXT, b"hello!")]


@pytest.mark.parametrize("no_context_takeover", [False, True])
def test_compressed_messages_are_inflated(no_context_takeover: bool) -> None:
    reader = FrameReader(Deflate(no_context_takeover, 15))
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    messages = [b'{"type":"leaderboard_update","n":%d}' % i for i in range(5)]
    stream = b""
    for message in messages:
        if no_context_takeover:
            compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
        stream += server_frame(TEXT, compressed(compressor, message), rsv1=True)
    stream += server_frame(TEXT, b"plain")  # RSV1 clear: not compressed
    assert reader.feed(stream) == [(TEXT, m) for m in [*messages, b"plain"]]


def test_a_fragmented_compressed_message() -> None:
    data = compressed(zlib.compressobj(6, zlib.DEFLATED, -15), b"a" * 1000)
    reader = FrameReader(Deflate(False, 15))
    stream = server_frame(TEXT, data[:5], final=False, rsv1=True) + server_frame(0, data[5:])
    assert reader.feed(stream) == [(TEXT, b"a" * 1000)]


@pytest.mark.parametrize(
    "frame",
    [
        bytes((0x81, 0x81)) + b"abcdx",  # masked by the server
        server_frame(TEXT, b"x", rsv1=True),  # compressed without the extension
        server_frame(0, b"x"),  # a continuation of nothing
        server_frame(PING, b"p" * 126),  # a control frame over 125 bytes
        server_frame(3, b"x"),  # a reserved opcode
    ],
)
def test_protocol_errors(frame: bytes) -> None:
    with pytest.raises(ProtocolError):
        FrameReader(None).feed(frame)


def test_client_frames_are_masked() -> None:
    for payload in (b"", b"abc", b"y" * 200, b"z" * 70_000):
        frame = client_frame(TEXT, payload)
        if len(payload) < 65536:
            assert unmask(frame) == (TEXT, payload)
    assert unmask(client_frame(CLOSE, (1000).to_bytes(2, "big"))) == (CLOSE, b"\x03\xe8")


def test_the_deflate_answer_and_the_upgrade_checks() -> None:
    answer = parse_deflate_answer(
        "permessage-deflate; server_no_context_takeover; "
        "server_max_window_bits=10; client_max_window_bits=12"
    )
    assert answer == Deflate(True, 10)
    assert parse_deflate_answer("permessage-deflate") == Deflate(False, 15)
    for bad in ("x-webkit-deflate-frame", "permessage-deflate; foo", "permessage-deflate, x"):
        with pytest.raises(ProtocolError):
            parse_deflate_answer(bad)
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    assert accept_value(key) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 section 1.3
    headers = {"upgrade": "websocket", "connection": "Upgrade", "sec-websocket-accept": "x"}
    with pytest.raises(ProtocolError):
        check_upgrade(101, "", headers, key, b"", offered=True)
    headers["sec-websocket-accept"] = accept_value(key)
    assert check_upgrade(101, "", headers, key, b"", offered=True) is None
    headers["sec-websocket-extensions"] = "permessage-deflate"
    with pytest.raises(ProtocolError):  # accepted without an offer
        check_upgrade(101, "", headers, key, b"", offered=False)


def test_histogram_percentiles_count_the_missing_values() -> None:
    histogram = Histogram.of(float(ms) for ms in range(1, 101))
    assert histogram.percentile(50) == pytest.approx(50, rel=0.01)
    assert histogram.percentile(99) == pytest.approx(99, rel=0.01)
    assert histogram.max_ms == 100
    histogram.add_missing(2)  # 102 values, the two largest never arrived
    assert histogram.percentile(98) == pytest.approx(100, rel=0.01)
    assert histogram.percentile(99) is None
    merged = Histogram.from_json(histogram.to_json())
    merged.merge(Histogram.of([0.0, 500.0]))
    assert (merged.count, merged.missing, merged.max_ms) == (102, 2, 500.0)
    assert Histogram().summary()["p50"] is None


def test_watchers_that_read_late_are_reported_and_prompt_warning() -> None:
    fleet = FleetFigures()
    assert fleet.behind_warning() is None  # nothing read while sending: nothing to say
    fleet.read_delay = Histogram.of([5.0] * 99 + [BEHIND_P99_MS * 3])
    assert fleet.behind_warning() is None  # one late wake-up in a hundred is not behind
    late = FleetFigures()
    late.read_delay = Histogram.of([BEHIND_P99_MS * 2] * 10)
    warning = late.behind_warning()
    assert warning is not None
    assert "200 ms (p99)" in warning
    assert "--client-processes" in warning


def watching(clients: int, opened: list[socket.socket]) -> Worker:
    """A watchers' worker whose sockets are open (socket pairs nobody writes to)."""
    worker = Worker(
        {
            "host": "127.0.0.1",
            "port": 9,
            "tokens": {},
            "leaders": [7],
            "clients": [[number, number] for number in range(clients)],
            "track_clients": clients,
        }
    )
    for watcher in worker.watchers:
        watcher.sock, other = socket.socketpair()
        opened += [watcher.sock, other]
    worker.snapshots += [Snapshot(0, 0.0, ((7, 10),)), Snapshot(1, 0.0, ((7, 20),))]
    return worker


async def test_the_finish_waits_until_every_open_screen_shows_the_final_board(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The last update may still be on its way when the last outcome is in: a socket that gets
    it within the screen bound is not missing it; a socket closed meanwhile is not waited for."""
    opened: list[socket.socket] = []
    worker = watching(3, opened)
    first, closing, late = worker.watchers
    worker._update(first, worker.snapshots[1], 0.0)  # already there
    worker._update(late, worker.snapshots[0], 0.0)
    finish = {"final_top": [[7, 20]], "bound_s": 5.0, "actions": [], "pair_budget": 1}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.settle, finish)
        await trio.sleep(1)
        worker._drop(closing, "closed without a close frame")
        await trio.sleep(1)
        began = trio.current_time()
        worker._update(late, worker.snapshots[1], 2.0)
    assert trio.current_time() == began
    assert worker.result(finish)["on_final_board"] == 2

    stuck = watching(1, opened)
    began = trio.current_time()
    await stuck.settle(finish)  # never shown: given up after the bound
    assert trio.current_time() - began == pytest.approx(5.0)
    for sock in opened:
        sock.close()


async def test_http_bodies_by_length_and_by_chunks() -> None:
    answers = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: x\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
    ]

    async def serve(stream: trio.SocketStream) -> None:
        for answer in answers:
            request = b""
            while b"\r\n\r\n" not in request:
                request += await stream.receive_some(4096)
            await stream.send_all(answer[:10])
            await stream.send_all(answer[10:])

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        http = HttpConnection(Origin("127.0.0.1", port))
        assert (await http.get("/a")).body == b"hello"
        second = await http.get("/b")
        assert (second.status, second.body) == (201, b"abcde")
        assert (await http.get("/c")).status == 204
        await http.aclose()
        nursery.cancel_scope.cancel()


def test_the_server_is_found_by_its_listening_port() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert os.getpid() in listening_pids(port)
        assert server_roots(port) == set()  # never this process itself
        tree = ProcessTree({os.getpid()})
        sample = tree.sample()
        assert sample.processes >= 1
        assert sample.rss_kib > 0
        assert sample.cpu_s > 0


async def test_http_connection_reopens_a_keep_alive_connection_the_server_closed() -> None:
    """The server closes after each answer, once saying so and once silently: every request
    is answered, on a new connection each time."""
    connections: list[int] = []
    answers = [
        b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
        b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\n{}",
    ]

    async def serve(stream: trio.SocketStream) -> None:
        connections.append(len(connections))
        answer = answers[min(len(connections) - 1, 1)]
        request = b""
        while b"\r\n\r\n" not in request:
            request += await stream.receive_some(4096)
        await stream.send_all(answer)
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        http = HttpConnection(Origin("127.0.0.1", port))
        message = http.encode("POST", "/p", body=b"{}")
        for _ in range(3):
            response = await http.send(message)
            assert (response.status, response.json()) == (202, {})
        await http.aclose()
        nursery.cancel_scope.cancel()
    assert len(connections) == 3


async def test_http_connection_refuses_an_answer_that_is_not_http() -> None:
    async def serve(stream: trio.SocketStream) -> None:
        await stream.receive_some(4096)
        await stream.send_all(b"SSH-2.0-OpenSSH\r\n\r\n")
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        http = HttpConnection(Origin("127.0.0.1", port))
        with pytest.raises(HttpError, match="not an HTTP response"):
            await http.get("/a")
        await http.aclose()
        nursery.cancel_scope.cancel()


async def test_the_http_sender_times_out_an_unanswered_action_and_goes_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The first action is never answered: it is counted as a timeout after --request-timeout,
    and the next one, on a new connection, is answered (one cancel scope per connection must
    not stay cancelled)."""
    answered = b'HTTP/1.1 202 Accepted\r\nContent-Length: 20\r\n\r\n{"action_id": "a-1"}'
    connections = 0

    async def serve(stream: trio.SocketStream) -> None:
        nonlocal connections
        connections += 1
        request = b""
        while b"\r\n\r\n" not in request:
            request += await stream.receive_some(4096)
        if connections == 1:
            await trio.sleep_forever()
        await stream.send_all(answered)
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        arguments = ["--url", f"http://127.0.0.1:{port}", "--request-timeout", "5", "--no-chart"]
        test = LoadTest(Options.from_namespace(parser.parse_args(arguments)))
        test.accounts = [Account(0, "p0", user_id=1, access_token="t0")]
        kind = ActionType("complete_task", 10, {"task_id": "string"})
        unanswered = test._new_action(0, kind, "http", leader=False, measured=True)
        answered_action = test._new_action(0, kind, "http", leader=False, measured=True)
        send, receive = trio.open_memory_channel[Action](2)
        send.send_nowait(unanswered)
        send.send_nowait(answered_action)
        send.close()
        await test._http_sender(receive)
        nursery.cancel_scope.cancel()
    assert unanswered.error == "timeout"
    assert answered_action.action_id == "a-1"
    assert test.ledger.answers == {"http timeout": 1, "http 202": 1}
