"""CPU per `POST /api/v1/actions/perform`, in process: `python -m benchmarks.perform_cpu`.

Runs the API role of the real application (no worker) on backends of its own
(`benchmarks.isolation`), or the embedded backends (`--embedded`, worker included), and answers
perform requests the way the listener's lean loop does (`http/perform_loop.py`): the request head
parsed, `perform` with the body, the answer encoded; only the socket is left out. A few requests
run at once, as keep-alive connections would. Printed: CPU of the serving (trio) thread per
request, in µs, and of the whole process (the asyncio thread of the adapters included). With
`--profile FILE`, a cProfile of the serving thread is written there and its top functions printed.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import pstats
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import httpx
import trio

from benchmarks.isolation import isolated_backends
from scoreboard.auth.tokens import issue_access_token
from scoreboard.config import Config, load_config
from scoreboard.http.action_route import encode_answer, perform
from scoreboard.http.perform_loop import encode, parse_head
from scoreboard.http.services import Services
from scoreboard.server import ServerHandle, run_server

PASSWORD = "correct horse battery"


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.perform_cpu", description=__doc__)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=16, help="requests at once")
    parser.add_argument("--embedded", action="store_true", help="the embedded backends")
    parser.add_argument("--profile", type=Path, help="write a cProfile of the serving thread")
    return parser.parse_args(argv)


@contextlib.asynccontextmanager
async def configuration(embedded: bool, tmp: Path) -> AsyncIterator[Config]:
    if embedded:
        yield load_config(environ={}).replace(
            server={"port": 0},
            embedded={"path": str(tmp / "scoreboard.db")},
            limits={"enabled": False},
        )
        return
    async with isolated_backends() as backends:
        yield backends.config.replace(server={"role": "api"})


def request_bytes(token: str, user_agent: str) -> bytes:
    body = (
        b'{"action_type":"complete_task","action_data":{"task_id":"t-%s","completion_time":%d},'
        b'"nonce":"%s"}'
        % (uuid.uuid4().hex[:8].encode(), int(time.time()), uuid.uuid4().hex.encode())
    )
    head = (
        b"POST /api/v1/actions/perform HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Authorization: Bearer %s\r\nContent-Type: application/json\r\n"
        b"User-Agent: %s\r\nAccept: */*\r\nAccept-Encoding: gzip, deflate\r\n"
        b"Content-Length: %d\r\n\r\n" % (token.encode(), user_agent.encode(), len(body))
    )
    return head + body


async def one_request(svc: Services, raw: bytes) -> int:
    head = parse_head(raw)
    assert head is not None
    body = raw[head.size :]

    async def read_body() -> bytes:
        return body

    answer = await perform(svc, head.headers, head.query, "127.0.0.1", read_body)
    content, headers = encode_answer(answer)
    encode(answer.status, headers, content, client_closes=False)
    return answer.status


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="perform-cpu-") as tmp:
        async with (
            configuration(args.embedded, Path(tmp)) as config,
            trio.open_nursery() as nursery,
        ):
            handle: ServerHandle = await nursery.start(run_server, config)
            svc = handle.services
            assert svc is not None
            assert handle.url is not None
            async with httpx.AsyncClient(base_url=handle.url) as client:
                name = f"cpu{uuid.uuid4().hex[:10]}"
                created = await client.post(
                    "/api/v1/users",
                    json={"username": name, "email": f"{name}@example.com", "password": PASSWORD},
                )
                created.raise_for_status()
            token, _ = issue_access_token(
                svc.keyring,
                config=svc.config,
                user_id=created.json()["user_id"],
                client_id="scoreboard-web",
                scope="read write",
            )
            requests = [request_bytes(token, "perform-cpu/1.0") for _ in range(args.requests)]
            for raw in requests[:200]:  # warm up: caches, connections, the first batches
                assert await one_request(svc, raw) == 202
            measured = requests[200:]
            statuses: list[int] = []
            profiler = cProfile.Profile(time.thread_time) if args.profile else None

            async def client_task(share: list[bytes]) -> None:
                for raw in share:
                    statuses.append(await one_request(svc, raw))

            thread0, process0 = time.thread_time(), time.process_time()
            wall0 = time.perf_counter()
            if profiler:
                profiler.enable()
            async with trio.open_nursery() as clients:
                for index in range(args.concurrency):
                    clients.start_soon(client_task, measured[index :: args.concurrency])
            if profiler:
                profiler.disable()
            wall = time.perf_counter() - wall0
            thread = time.thread_time() - thread0
            process = time.process_time() - process0
            count = len(measured)
            assert statuses.count(202) == count, {s: statuses.count(s) for s in set(statuses)}
            print(
                f"{count} requests, {args.concurrency} at once, "
                f"{'embedded' if args.embedded else 'real'} backends: "
                f"serving thread {thread / count * 1e6:.0f} µs/request, "
                f"process {process / count * 1e6:.0f} µs/request, "
                f"{count / wall:.0f} requests/s"
            )
            if profiler and args.profile:
                profiler.dump_stats(args.profile)
                pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
            nursery.cancel_scope.cancel()


def main(argv: Sequence[str] | None = None) -> None:
    trio.run(run, parse_arguments(argv))


if __name__ == "__main__":
    main()
