"""The listener's lean perform loop (`http/perform_loop.py`) answers as Hypercorn's ASGI chain
does, and hands Hypercorn everything else.

A connection whose first request is `POST /api/v1/actions/perform` is served by the lean loop;
one that starts with `GET /healthz` stays Hypercorn's for good, so the same perform request sent
on each compares the two paths. Hypercorn's answers carry `server: hypercorn-h11`, the lean
loop's do not: that header tells which path answered.
"""

from __future__ import annotations

import dataclasses
import json
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import h11
import httpx
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from scoreboard.config import Config, ServerConfig
from scoreboard.drain import Drain
from scoreboard.http.app import create_asgi_app
from scoreboard.http.listener import bind_socket, serve_http, socket_url
from scoreboard.http.perform_loop import parse_head
from scoreboard.http.services import Services
from scoreboard.server import ServerHandle
from tests.http.conftest import Player, action, new_player

PERFORM = "/api/v1/actions/perform"
ANSWER_TIMEOUT_S = 10
UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
REMAINING = re.compile(rb";r=\d+;t=\d+")
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"


@dataclasses.dataclass(frozen=True)
class Raw:
    status: int
    head: bytes  # the status line and header lines, as sent
    body: bytes

    def header(self, name: str) -> str | None:
        for line in self.head.split(b"\r\n")[1:]:
            found, _, value = line.partition(b":")
            if found.decode().lower() == name:
                return value.strip().decode()
        return None

    @property
    def closes(self) -> bool:
        return (self.header("connection") or "").lower() == "close"

    @property
    def from_hypercorn(self) -> bool:
        return self.header("server") == "hypercorn-h11"

    def comparable(self) -> bytes:
        """Everything but the date, the server, the ids and the limit's moving counts."""
        lines = [
            line
            for line in self.head.split(b"\r\n")
            if not line.lower().startswith((b"date:", b"server:"))
        ]
        return REMAINING.sub(b"", UUID.sub(b"<id>", b"\r\n".join(lines) + b"\r\n\r\n" + self.body))


class Connection:
    """One raw client connection: bytes out as the test writes them, answers parsed by hand."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _fill(self) -> None:
        data = await self.stream.receive_some(65536)
        if not data:
            raise EOFError(self.buffer)
        self.buffer += data

    async def answer(self) -> Raw:
        with trio.fail_after(ANSWER_TIMEOUT_S):
            while b"\r\n\r\n" not in self.buffer:
                await self._fill()
            head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            status = int(head.split(b" ")[1])
            raw = Raw(status, head, b"")
            length = int(raw.header("content-length") or 0)
            while len(self.buffer) < length:
                await self._fill()
            body, self.buffer = self.buffer[:length], self.buffer[length:]
            return dataclasses.replace(raw, body=body)

    async def closed_by_server(self) -> bool:
        with trio.fail_after(ANSWER_TIMEOUT_S):
            try:
                return self.buffer == b"" and await self.stream.receive_some(65536) == b""
            except trio.BrokenResourceError:
                return True

    async def aclose(self) -> None:
        await self.stream.aclose()


Opener = Callable[..., Awaitable[Connection]]


@pytest.fixture
async def connect(server: ServerHandle) -> AsyncIterator[Opener]:
    """Open a connection to `url` (the server's by default); `via_hypercorn`: a `GET /healthz`
    first, which hands the connection to Hypercorn for good."""
    opened: list[Connection] = []

    async def open_connection(*, via_hypercorn: bool = False, url: str | None = None) -> Connection:
        host, _, port = (url or server.url or "").removeprefix("http://").partition(":")
        connection = Connection(await trio.open_tcp_stream(host, int(port)))
        opened.append(connection)
        if via_hypercorn:
            await connection.send(HEALTHZ)
            healthz = await connection.answer()
            assert (healthz.status, healthz.from_hypercorn) == (200, True), healthz
        return connection

    yield open_connection
    for connection in opened:
        await connection.aclose()


def request(
    body: bytes,
    headers: dict[str, str] | None = None,
    *,
    target: str = PERFORM,
    length: int | None = None,
    version: str = "HTTP/1.1",
) -> bytes:
    fields = {"Host": "t", **(headers or {})}
    if "Transfer-Encoding" not in fields:
        fields["Content-Length"] = str(len(body) if length is None else length)
    head = f"POST {target} {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    return head.encode() + b"\r\n" + body


def json_auth(player: Player) -> dict[str, str]:
    return {**player.auth, "Content-Type": "application/json"}


async def both(connect: Opener, data: bytes) -> tuple[Raw, Raw]:
    """The answers to `data` from the lean loop and from Hypercorn, each on its own connection."""
    answers = []
    for via_hypercorn in (False, True):
        connection = await connect(via_hypercorn=via_hypercorn)
        await connection.send(data)
        answer = await connection.answer()
        assert answer.from_hypercorn is via_hypercorn, answer
        answers.append(answer)
    return answers[0], answers[1]


async def test_every_kind_of_answer_is_the_same_from_the_lean_loop_and_hypercorn(
    server: ServerHandle, client: httpx.AsyncClient, connect: Opener
) -> None:
    player = await new_player(client, server)
    reader = await new_player(client, server, scope="read")
    good = json.dumps(action(action_type="daily_login")).encode()
    cases: list[tuple[bytes, dict[str, str], str, int]] = [
        (good, {}, PERFORM, 401),  # no token
        (good, {"Authorization": "Bearer not.a.jwt"}, PERFORM, 401),
        (good, {"Authorization": f"Basic {player.token}"}, PERFORM, 401),
        (good, {"Content-Type": "application/json"}, PERFORM + "?access_token=x", 401),
        (good, json_auth(reader), PERFORM, 403),
        (good, player.auth, PERFORM, 415),  # no Content-Type
        (good, {**player.auth, "Content-Type": "text/plain"}, PERFORM, 415),
        (b"{", json_auth(player), PERFORM, 400),
        (b"NaN", json_auth(player), PERFORM, 400),
        (b"[]", json_auth(player), PERFORM, 400),
        (json.dumps({**action(), "score": 1}).encode(), json_auth(player), PERFORM, 400),
        (json.dumps({**action(), "nonce": "short"}).encode(), json_auth(player), PERFORM, 400),
        (b'{"a":"\\u0000"}', json_auth(player), PERFORM, 400),
    ]
    for body, headers, target, status in cases:
        lean, hypercorn = await both(connect, request(body, headers, target=target))
        assert lean.status == status, (target, headers, lean)
        assert lean.comparable() == hypercorn.comparable(), (target, headers)
        assert not lean.closes

    oversized = b"{" + b" " * 5000 + b"}"
    lean, hypercorn = await both(connect, request(oversized, json_auth(player)))
    assert (lean.status, lean.closes) == (413, True), lean
    assert lean.comparable() == hypercorn.comparable()

    # Accepted on each (ids differ), then the first replayed on each.
    first = action(action_type="win_match")
    accepted = request(json.dumps(first).encode(), json_auth(player))
    other = await new_player(client, server)  # a player's actions are 5 s apart
    second = request(json.dumps({**first, "nonce": uuid.uuid4().hex}).encode(), json_auth(other))
    lean_connection = await connect()
    hypercorn_connection = await connect(via_hypercorn=True)
    await lean_connection.send(accepted)
    await hypercorn_connection.send(second)
    lean, hypercorn = await lean_connection.answer(), await hypercorn_connection.answer()
    assert lean.status == 202, lean
    assert lean.comparable() == hypercorn.comparable()
    await lean_connection.send(accepted)
    await hypercorn_connection.send(accepted)
    lean, hypercorn = await lean_connection.answer(), await hypercorn_connection.answer()
    assert lean.header("idempotent-replayed") == "true", lean
    status_field = re.compile(rb'"status":"[a-z]+"')
    assert json.loads(lean.body)["action_id"] == json.loads(hypercorn.body)["action_id"]
    without_length = re.compile(rb"content-length: \d+")
    assert without_length.sub(b"", status_field.sub(b"", lean.comparable())) == without_length.sub(
        b"", status_field.sub(b"", hypercorn.comparable())
    )

    # The cooldown of win_match: 429 with Retry-After from each.
    third = action(action_type="win_match")
    await lean_connection.send(request(json.dumps(third).encode(), json_auth(player)))
    third["nonce"] = uuid.uuid4().hex
    await hypercorn_connection.send(request(json.dumps(third).encode(), json_auth(other)))
    lean, hypercorn = await lean_connection.answer(), await hypercorn_connection.answer()
    assert (lean.status, bool(lean.header("retry-after"))) == (429, True), lean
    retry = re.compile(rb'(retry-after: |"retry_after":)\d+')
    assert retry.sub(b"", lean.comparable()) == retry.sub(b"", hypercorn.comparable())


async def test_a_repeated_header_is_read_by_its_first_value_on_both_layers(
    server: ServerHandle, client: httpx.AsyncClient, connect: Opener
) -> None:
    """Both routes read headers from a dict of first values (`first_values`), as werkzeug's
    `Headers.get` did: a repeated header counts by its first line, through either layer; a
    media type other than exactly `application/json` is still parsed as before."""
    player = await new_player(client, server)
    bad_token = {"Authorization": "Bearer not.a.jwt", "Content-Type": "application/json"}
    cases = [
        # (headers, a repeated line added after them, status): a malformed body answers 400
        # once the token and the media type have passed.
        (json_auth(player), "Content-Type: text/plain", 400),
        ({**player.auth, "Content-Type": "text/plain"}, "Content-Type: application/json", 415),
        (json_auth(player), "Authorization: Bearer not.a.jwt", 400),
        (bad_token, f"Authorization: Bearer {player.token}", 401),
        ({**player.auth, "Content-Type": "Application/JSON; charset=utf-8"}, "X-A: 1", 400),
    ]
    for headers, repeated, status in cases:
        data = request(b"{", headers).replace(b"\r\n\r\n", f"\r\n{repeated}\r\n\r\n".encode())
        lean, hypercorn = await both(connect, data)
        assert lean.status == status, (headers, repeated, lean)
        assert lean.comparable() == hypercorn.comparable(), (headers, repeated)


async def test_heads_the_lean_loop_does_not_take_are_hypercorns(
    server: ServerHandle, client: httpx.AsyncClient, connect: Opener
) -> None:
    players = [await new_player(client, server) for _ in range(4)]
    headers = json_auth(players[0])

    def fresh() -> bytes:
        return json.dumps(action()).encode()

    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(payload := fresh()), payload)
    two_lengths = request(fresh(), headers).replace(b"\r\n\r\n", b"\r\nContent-Length: 1\r\n\r\n")
    for data, status in [
        (request(fresh(), json_auth(players[0]), version="HTTP/1.0"), 202),
        (request(chunked, {**json_auth(players[1]), "Transfer-Encoding": "chunked"}), 202),
        (request(fresh(), {**json_auth(players[2]), "Expect": "something"}), 202),
        (request(fresh(), json_auth(players[3]), target="/api/v1/actions/%70erform"), 202),
        (two_lengths, 400),  # h11 refuses two different lengths
        (request(fresh(), headers).replace(b"Host: t\r\n", b"Host t\r\n"), 400),
    ]:
        connection = await connect()
        await connection.send(data)
        answer = await connection.answer()
        assert (answer.status, answer.from_hypercorn) == (status, True), (data, answer)


def test_only_a_plain_perform_head_is_parsed_for_the_lean_loop() -> None:
    plain = b"POST /api/v1/actions/perform HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}"
    head = parse_head(plain)
    assert head is not None
    assert (head.content_length, head.close, head.expects_continue, head.query) == (
        2,
        False,
        False,
        b"",
    )
    assert head.size == len(plain) - 2
    with_query = parse_head(plain.replace(b"perform ", b"perform?access_token=x "))
    assert with_query is not None
    assert with_query.query == b"access_token=x"
    closing = parse_head(plain.replace(b"Host: t", b"Host: t\r\nConnection: keep-alive, Close"))
    assert closing is not None
    assert closing.close
    expecting = parse_head(plain.replace(b"Host: t", b"Host: t\r\nExpect: 100-Continue"))
    assert expecting is not None
    assert expecting.expects_continue
    for other in (
        plain.replace(b"POST", b"PUT"),
        plain.replace(b"perform", b"perform/"),
        plain.replace(b"HTTP/1.1", b"HTTP/1.0"),
        plain.replace(b"Host: t\r\n", b""),
        plain.replace(b"Host: t\r\n", b"Host: t\r\nHost: u\r\n"),
        plain.replace(b"Content-Length: 2\r\n", b""),
        plain.replace(b"Content-Length: 2", b"Content-Length: +2"),
        plain.replace(b"Content-Length: 2", b"Content-Length: 2\r\nContent-Length: 2"),
        plain.replace(b"Content-Length: 2", b"Content-Length: 2\r\nTransfer-Encoding: chunked"),
        plain.replace(b"Host: t\r\n", b"Host: t\r\nUpgrade: h2c\r\n"),
        plain.replace(b"Host: t\r\n", b"Host: t\r\nExpect: other\r\n"),
        plain.replace(b"Host: t\r\n", b"Host: t\r\n folded\r\n"),
        plain.replace(b"Host: t\r\n", b"Host: t\r\nBad Name: x\r\n"),
        plain.replace(b"Host: t\r\n", b"Host: t\r\nX: a\x01b\r\n"),
        plain.replace(b"Host: t\r\n", b"Host: t\nX: y\r\n"),
        plain.replace(b"perform ", b"perform?a=\xff "),
        b"\r\n" + plain,
    ):
        assert parse_head(other) is None, other


# Pieces of header lines: mostly what a well-formed line holds, now and then what none may.
VALID = st.sampled_from(
    [b"a", b"Z", b"-", b"5", b" ", b"\t", b",", b'"', b"\xe9", b"close", b"100-continue"]
)
ODD = st.sampled_from([b":", b"\x00", b"\x01", b"\x7f", b"\r", b"\n", b" \r\n "])
NAMES = st.sampled_from(
    [b"X-A", b"X-B", b"Connection", b"expect", b"Content-Length", b"HOST", b"Upgrade", b"X\xe9"]
)
HEAD_LINES = st.lists(
    st.tuples(
        st.one_of(NAMES, NAMES, NAMES, st.lists(st.one_of(VALID, ODD), max_size=3).map(b"".join)),
        st.sampled_from([b": ", b": ", b":", b":\t", b" :", b""]),
        st.lists(st.one_of(VALID, VALID, VALID, ODD), max_size=5).map(b"".join),
    ).map(b"".join),
    max_size=3,
).flatmap(lambda extra: st.permutations([b"Host: t", b"Content-Length: 2", *extra]))
REQUEST_LINES = st.sampled_from(
    [
        b"POST /api/v1/actions/perform HTTP/1.1",
        b"POST /api/v1/actions/perform HTTP/1.1",
        b"POST /api/v1/actions/perform?access_token=x&a=%20 HTTP/1.1",
        b"POST /api/v1/actions/perform?a=\x7f HTTP/1.1",
        b"POST /api/v1/actions/perform  HTTP/1.1",
        b"POST /api/v1/actions/perform HTTP/1.10",
    ]
)


@settings(max_examples=1000, deadline=None, database=None)
@given(request_line=REQUEST_LINES, lines=HEAD_LINES)
def test_a_head_the_lean_loop_takes_is_one_h11_reads_the_same(
    request_line: bytes, lines: list[bytes]
) -> None:
    """The lean loop is stricter than Hypercorn's h11, never looser: whatever it takes, h11
    reads as the same request, with the same headers and length."""
    head = b"\r\n".join([request_line, *lines]) + b"\r\n\r\n"
    parsed = parse_head(head)
    if parsed is None:
        return
    connection = h11.Connection(h11.SERVER)
    connection.receive_data(head)
    event = connection.next_event()
    assert isinstance(event, h11.Request), head
    assert (event.method, event.http_version) == (b"POST", b"1.1")
    assert event.target == PERFORM.encode() + (b"?" + parsed.query if b"?" in event.target else b"")
    # The loop keeps each header's first value, which is what the perform route reads.
    first: dict[str, str] = {}
    for name, value in event.headers:
        first.setdefault(name.decode("latin-1"), value.decode("latin-1"))
    assert first == parsed.headers
    lengths = [int(value) for name, value in event.headers if name == b"content-length"]
    assert lengths == [parsed.content_length]
    assert connection.they_are_waiting_for_100_continue is parsed.expects_continue
    assert parsed.size == head.index(b"\r\n\r\n") + 4


async def test_a_head_sent_before_its_body_in_pieces_is_served(
    server: ServerHandle, client: httpx.AsyncClient, connect: Opener
) -> None:
    player = await new_player(client, server)
    data = request(json.dumps(action()).encode(), json_auth(player))
    connection = await connect()
    split = data.index(b"\r\n\r\n") + 4
    for piece in (data[:10], data[10:split], data[split : split + 5], data[split + 5 :]):
        await connection.send(piece)
        await trio.sleep(0.02)
    answer = await connection.answer()
    assert (answer.status, answer.from_hypercorn, answer.closes) == (202, False, False), answer


async def test_pipelined_requests_are_answered_in_order_then_quart_takes_over(
    server: ServerHandle, client: httpx.AsyncClient, connect: Opener
) -> None:
    # One player for each action: a player's actions are 5 s apart (the catalogue's cooldown).
    players = [await new_player(client, server) for _ in range(4)]
    connection = await connect()
    await connection.send(
        b"".join(request(json.dumps(action()).encode(), json_auth(p)) for p in players[:3])
        + request(b"{", json_auth(players[0]))
        + HEALTHZ
        + request(json.dumps(action()).encode(), json_auth(players[3]))
    )
    answers = [await connection.answer() for _ in range(6)]
    assert [answer.status for answer in answers] == [202, 202, 202, 400, 200, 202], answers
    # The perform requests before the GET are the lean loop's; from the GET on, Hypercorn's.
    assert [answer.from_hypercorn for answer in answers] == [False] * 4 + [True] * 2


async def test_expect_100_continue_is_answered_before_the_body(
    server: ServerHandle, client: httpx.AsyncClient, connect: Opener
) -> None:
    player = await new_player(client, server)
    body = json.dumps(action()).encode()
    data = request(body, {**json_auth(player), "Expect": "100-continue"})
    connection = await connect()
    await connection.send(data[: -len(body)])
    interim = await connection.answer()
    assert interim.status == 100, interim
    await connection.send(body)
    answer = await connection.answer()
    assert (answer.status, answer.from_hypercorn) == (202, False), answer


async def test_connection_close_from_the_client_is_honoured(
    server: ServerHandle, client: httpx.AsyncClient, connect: Opener
) -> None:
    player = await new_player(client, server)
    connection = await connect()
    headers = {**json_auth(player), "Connection": "close"}
    await connection.send(request(json.dumps(action()).encode(), headers))
    answer = await connection.answer()
    assert (answer.status, answer.closes) == (202, True), answer
    assert await connection.closed_by_server()


async def test_a_client_gone_mid_body_has_nothing_performed(
    server: ServerHandle, client: httpx.AsyncClient, connect: Opener
) -> None:
    player = await new_player(client, server)
    body = json.dumps(action()).encode()
    connection = await connect()
    await connection.send(request(body, json_auth(player))[:-5])
    await connection.aclose()
    again = await connect()
    await again.send(request(body, json_auth(player)))
    answer = await again.answer()
    assert (answer.status, answer.header("idempotent-replayed")) == (202, None), answer


@dataclasses.dataclass(frozen=True)
class OwnListener:
    url: str
    services: Services
    shutdown: trio.Event
    stopped: trio.Event


@pytest.fixture
async def own_listener(
    server: ServerHandle, nursery: trio.Nursery
) -> AsyncIterator[Callable[..., Awaitable[OwnListener]]]:
    """A second listener on the server's services with a configuration and drain of its own."""
    listeners: list[OwnListener] = []

    async def start(**config: dict[str, Any]) -> OwnListener:
        assert server.services is not None
        base = server.services
        services = dataclasses.replace(
            base,
            config=base.config.replace(**config),
            observed=dataclasses.replace(base.observed, drain=Drain()),
        )
        listening = bind_socket(ServerConfig(host="127.0.0.1", port=0))
        listener = OwnListener(socket_url(listening), services, trio.Event(), trio.Event())

        async def run(task_status: trio.TaskStatus[None]) -> None:
            try:
                await serve_http(
                    create_asgi_app(services),
                    services,
                    listening,
                    listener.shutdown,
                    task_status=task_status,
                )
            finally:
                listening.close()
                listener.stopped.set()

        await nursery.start(run)
        listeners.append(listener)
        return listener

    yield start
    for listener in listeners:
        listener.shutdown.set()


class TestLimitsAndTimeouts:
    @pytest.fixture
    def app_config(self, config: Config) -> Config:
        return config.replace(websocket={"auth_timeout_s": 1.0}, server={"body_timeout_s": 0.5})

    async def test_a_trickled_body_is_answered_408_and_closed(
        self, server: ServerHandle, client: httpx.AsyncClient, connect: Opener
    ) -> None:
        player = await new_player(client, server)
        body = json.dumps(action()).encode()
        data = request(body, json_auth(player))
        answers = []
        for via_hypercorn in (False, True):
            connection = await connect(via_hypercorn=via_hypercorn)
            await connection.send(data[: -len(body)])
            async with trio.open_nursery() as nursery:

                async def trickle(connection: Connection = connection) -> None:
                    for byte in body[:-1]:
                        await connection.send(bytes([byte]))
                        await trio.sleep(0.1)

                nursery.start_soon(trickle)
                answer = await connection.answer()
                nursery.cancel_scope.cancel()
            assert (answer.status, answer.closes) == (408, True), answer
            assert json.loads(answer.body)["error"] == "request_timeout"
            answers.append(answer)
        assert answers[0].comparable() == answers[1].comparable()
        # Nothing was performed: the nonce is still free.
        fresh = await connect()
        await fresh.send(data)
        assert (await fresh.answer()).status == 202

    async def test_the_per_address_limit_counts_lean_answers_and_refuses_past_it(
        self,
        server: ServerHandle,
        client: httpx.AsyncClient,
        connect: Opener,
        own_listener: Callable[..., Awaitable[OwnListener]],
    ) -> None:
        players = [await new_player(client, server) for _ in range(4)]
        # Counted as a client of its own: the test's other requests count against 127.0.0.1.
        limited = await own_listener(
            limits={"ip_requests_per_minute": 3}, server={"trusted_proxies": ("127.0.0.1/32",)}
        )
        forwarded = {"X-Forwarded-For": "203.0.113.7"}
        lean = await connect(url=limited.url)
        answers = []
        for player in players:
            headers = {**json_auth(player), **forwarded}
            await lean.send(request(json.dumps(action()).encode(), headers))
            answers.append(await lean.answer())
        assert [answer.status for answer in answers] == [202, 202, 202, 429], answers
        assert not any(answer.from_hypercorn for answer in answers)
        assert [
            re.sub(r";t=\d+$", "", answer.header("ratelimit") or "") for answer in answers[:3]
        ] == [f'"ip";r={remaining}' for remaining in (2, 1, 0)]
        assert answers[0].header("ratelimit-policy") == '"ip";q=3;w=60'
        refused = answers[3]
        assert int(refused.header("retry-after") or 0) >= 1
        assert json.loads(refused.body)["error"] == "rate_limit_exceeded"
        hypercorn = await connect(url=limited.url, via_hypercorn=True)  # itself refused: 429
        headers = {**json_auth(players[0]), **forwarded}
        await hypercorn.send(request(json.dumps(action()).encode(), headers))
        through_hypercorn = await hypercorn.answer()
        assert through_hypercorn.from_hypercorn
        retry = re.compile(rb'(retry-after: |"retry_after":)\d+')
        assert retry.sub(b"", refused.comparable()) == retry.sub(
            b"", through_hypercorn.comparable()
        )


async def test_while_draining_every_lean_answer_closes_its_connection(
    server: ServerHandle,
    client: httpx.AsyncClient,
    connect: Opener,
    own_listener: Callable[..., Awaitable[OwnListener]],
) -> None:
    first_player, second_player = [await new_player(client, server) for _ in range(2)]
    listener = await own_listener(server={"drain_delay_s": 60.0})
    connection = await connect(url=listener.url)
    await connection.send(request(json.dumps(action()).encode(), json_auth(first_player)))
    first = await connection.answer()
    assert (first.status, first.closes) == (202, False), first
    listener.services.observed.drain.begin()
    await connection.send(request(json.dumps(action()).encode(), json_auth(second_player)))
    last = await connection.answer()
    assert (last.status, last.closes, last.from_hypercorn) == (202, True, False), last
    assert await connection.closed_by_server()


async def test_shutdown_closes_idle_lean_connections_and_finishes_requests_in_flight(
    server: ServerHandle,
    client: httpx.AsyncClient,
    connect: Opener,
    own_listener: Callable[..., Awaitable[OwnListener]],
) -> None:
    idle_player, busy_player = [await new_player(client, server) for _ in range(2)]
    listener = await own_listener()
    idle = await connect(url=listener.url)
    await idle.send(request(json.dumps(action()).encode(), json_auth(idle_player)))
    assert (await idle.answer()).status == 202
    body = json.dumps(action()).encode()
    in_flight = await connect(url=listener.url)
    data = request(body, {**json_auth(busy_player), "Expect": "100-continue"})
    await in_flight.send(data[: -len(body)])
    assert (await in_flight.answer()).status == 100  # the head is read: the request is in flight
    listener.shutdown.set()
    assert await idle.closed_by_server()
    await in_flight.send(body)
    answer = await in_flight.answer()
    assert (answer.status, answer.from_hypercorn) == (202, False), answer
    assert await in_flight.closed_by_server()
    with trio.fail_after(ANSWER_TIMEOUT_S):
        await listener.stopped.wait()


async def test_a_lean_connection_ends_after_hypercorns_request_count(connect: Opener) -> None:
    """As Hypercorn closes a keep-alive connection after `keep_alive_max_requests` (1,000)."""
    connection = await connect()
    refused = request(b"{}", {"Content-Type": "application/json"})  # no token: 401
    for _ in range(999):
        await connection.send(refused)
        answer = await connection.answer()
        assert (answer.status, answer.closes) == (401, False), answer
    await connection.send(refused)
    last = await connection.answer()
    assert (last.status, last.closes, last.from_hypercorn) == (401, True, False), last
    assert await connection.closed_by_server()
