"""The graceful drain through the real `scoreboard serve`: on SIGTERM `/readyz` answers 503 first,
each keep-alive connection gets at most one more answer, with `Connection: close`, and never hangs,
WebSockets close 1012, and the process exits 0."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import h11
import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from scoreboard.config import Config
from tests.e2e.processes import ServerProcess

pytestmark = pytest.mark.slow

KEEP_ALIVE_CONNECTIONS = 8
DRAIN_ENV = {"SCOREBOARD_SERVER_DRAIN_DELAY_S": "1.0", "SCOREBOARD_SERVER_DRAIN_TIMEOUT_S": "15"}


@pytest.fixture
def processes() -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for process in started:
        process.stop()


class KeepAlive:
    """One raw HTTP/1.1 connection sending requests one after another."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.http = h11.Connection(h11.CLIENT)

    async def get(self, path: str) -> h11.Response | None:
        """The response (its body read), or None when the server closed the connection."""
        if self.http.our_state is h11.DONE:
            self.http.start_next_cycle()
        request = h11.Request(method="GET", target=path, headers=[("Host", "localhost")])
        try:
            await self.stream.send_all(self.http.send(request) + self.http.send(h11.EndOfMessage()))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return None
        response: h11.Response | None = None
        while True:
            event = self.http.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = await self.stream.receive_some()
                except trio.BrokenResourceError:
                    data = b""
                self.http.receive_data(data)
                continue
            if isinstance(event, h11.ConnectionClosed):
                return None
            if isinstance(event, h11.Response):
                response = event
            if isinstance(event, h11.EndOfMessage):
                return response


def closes(response: h11.Response) -> bool:
    return any(
        name == b"connection" and value.lower() == b"close" for name, value in response.headers
    )


@pytest.mark.parametrize("children", [1, 2], ids=["one-process", "two-api-children"])
async def test_sigterm_drains_keep_alive_connections_and_websockets(
    config: Config, tmp_path: Path, processes: list[ServerProcess], children: int
) -> None:
    server = ServerProcess(config, tmp_path, role="all", environment=DRAIN_ENV, processes=children)
    processes.append(server)
    server.start()
    await server.wait_ready()
    port = server.port

    connections = [
        KeepAlive(await trio.open_tcp_stream("127.0.0.1", port))
        for _ in range(KEEP_ALIVE_CONNECTIONS)
    ]
    for connection in connections:
        response = await connection.get("/healthz")
        assert response is not None
        assert response.status_code == 200
        assert not closes(response)

    ws_url = server.url.replace("http://", "ws://") + "/api/v1/ws"
    close_codes: list[int] = []
    ready_statuses: list[int] = []
    answered_after_sigterm: list[h11.Response] = []
    kept_open: list[h11.Response] = []
    async with open_websocket_url(ws_url, extra_headers=[(b"Origin", server.url.encode())]) as ws:
        await server.send_sigterm()
        signalled_at = trio.current_time()
        with trio.fail_after(15):  # a hang guard, not a timing assertion
            async with trio.open_nursery() as nursery:

                async def readiness() -> None:
                    # A fresh connection per probe: it is answered until the listener closes.
                    while True:
                        try:
                            probe = KeepAlive(await trio.open_tcp_stream("127.0.0.1", port))
                        except OSError:
                            return
                        response = await probe.get("/readyz")
                        await probe.stream.aclose()
                        if response is None:
                            return
                        ready_statuses.append(response.status_code)
                        if response.status_code == 503:
                            return
                        await trio.sleep(0.02)

                async def keep_asking(connection: KeepAlive) -> None:
                    # Every request is answered until one says the connection closes, and the
                    # server then closes it (or closes it idle before reading a request). A
                    # process that has not heard of the SIGTERM yet (a child hears it from its
                    # parent) answers as usual, which the count of such answers shows.
                    while (response := await connection.get("/healthz")) is not None:
                        if closes(response):
                            answered_after_sigterm.append(response)
                            assert await connection.stream.receive_some() == b""
                            break
                        kept_open.append(response)
                        await trio.sleep(0.05)
                    await connection.stream.aclose()

                async def websocket() -> None:
                    try:
                        while True:
                            json.loads(await ws.get_message())
                    except ConnectionClosed as closed:
                        close_codes.append(closed.reason.code if closed.reason else 1006)

                nursery.start_soon(readiness)
                for connection in connections:
                    nursery.start_soon(keep_asking, connection)
                nursery.start_soon(websocket)
        exit_code = await server.wait_exit(20)
        drain_s = trio.current_time() - signalled_at

    print(
        f"after SIGTERM: /readyz {ready_statuses}, {len(answered_after_sigterm)} keep-alive "
        f"answers with Connection: close, {len(kept_open)} before the process heard of it, "
        f"WebSocket closed {close_codes}, "
        f"exit {exit_code} after {drain_s:.2f} s"
    )
    assert ready_statuses
    assert ready_statuses[-1] == 503
    assert len(answered_after_sigterm) <= KEEP_ALIVE_CONNECTIONS
    assert close_codes == [1012]
    assert exit_code == 0


async def test_readyz_of_an_api_says_when_no_worker_consumes(
    config: Config, tmp_path: Path, processes: list[ServerProcess]
) -> None:
    api = ServerProcess(config, tmp_path, role="api")
    worker = ServerProcess(config, tmp_path, role="worker")
    processes.extend([api, worker])
    api.start()
    worker.start()
    await worker.wait_ready()
    await api.wait_ready()  # /readyz 200: the worker consumes
    worker.kill()
    async with httpx.AsyncClient(base_url=api.url) as client:
        with trio.fail_after(20):  # a hang guard
            while (response := await client.get("/readyz")).status_code == 200:
                await trio.sleep(0.1)
    body = response.json()
    print("/readyz with the worker killed:", response.status_code, body["reasons"])
    assert response.status_code == 503
    assert body["unconsumed_queues"] == [config.amqp.queue]
    assert f"no worker consumes {config.amqp.queue}" in body["reasons"]
