"""`python -m benchmarks.fanout`: the broadcast path alone, at thousands of WebSockets.

The server runs in this process on the embedded backends (the fan-out does not touch them),
with the GC tuned as `scoreboard serve` tunes it; the watchers run in separate processes
(`benchmarks.fanout_clients`, lean raw sockets). For each client count it measures the server's
memory per idle authenticated socket, then feeds the hub a new top 10 `--hz` times a second for
`--seconds` (the events actor's way in, so only the fan-out is measured) and reports the
deliveries, the server's CPU per delivery and the delivery latency (the snapshot's timestamp,
taken as it is handed to the hub, to its receipt by a client; with the hub's tick shorter than
the feed's interval, each snapshot goes out as it arrives).
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import logging
import math
import subprocess
import sys
import tempfile
import time
from typing import Any

import trio

from benchmarks.figures import MachineCpu, Table, cpu_seconds, fmt, resident_kib
from scoreboard.actors import hub
from scoreboard.auth.tokens import issue_access_token
from scoreboard.config import Config, load_config
from scoreboard.records import LeaderboardChanged, RankedEntry
from scoreboard.server import GC_THRESHOLDS, ServerHandle, run_server

CLIENTS_PER_PROCESS = 2500
IDLE_SETTLE_S = 2.0
DRAIN_S = 1.0


class ClientProcess:
    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.buffer = bytearray()

    async def send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(json.dumps(message).encode() + b"\n")

    async def receive(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        while b"\n" not in self.buffer:
            chunk = await self.process.stdout.receive_some()
            if not chunk:
                raise RuntimeError("a client process exited")
            self.buffer += chunk
        line, _, rest = bytes(self.buffer).partition(b"\n")
        self.buffer[:] = rest
        answer: dict[str, Any] = json.loads(line)
        return answer


def board(round_number: int) -> tuple[RankedEntry, ...]:
    return tuple(
        RankedEntry(
            rank, 1000 + rank, f"player-{rank:02d}-{'x' * 20}", 10_000 * round_number - rank
        )
        for rank in range(1, 11)
    )


def broadcast_count(server: ServerHandle) -> int:
    """Snapshots the hub sent to every socket (-1 where the hub does not count them)."""
    assert server.services is not None
    stats = getattr(server.services, "broadcast", None)
    return -1 if stats is None else int(stats.broadcasts)


async def feed(server: ServerHandle, hz: float, seconds: float) -> int:
    assert server.services is not None
    rounds = round(hz * seconds)
    start = trio.current_time()
    for n in range(1, rounds + 1):
        await trio.sleep_until(start + n / hz)
        await hub.notify(server.services.hub, LeaderboardChanged(board(n), int(time.time() * 1000)))
    return rounds


async def measure(
    server: ServerHandle, clients: int, arguments: argparse.Namespace, table: Table
) -> None:
    assert server.services is not None
    assert server.url is not None
    services = server.services
    tokens = [
        issue_access_token(
            services.keyring,
            config=services.config,
            user_id=100_000 + n,
            client_id="scoreboard-web",
            scope="read",
        )[0]
        for n in range(clients)
    ]
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    gc.collect()
    rss_before = resident_kib()
    async with trio.open_nursery() as nursery:
        processes: list[ClientProcess] = []
        for start in range(0, clients, CLIENTS_PER_PROCESS):
            process = await nursery.start(
                functools.partial(
                    trio.run_process,
                    [sys.executable, "-m", "benchmarks.fanout_clients"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                )
            )
            client = ClientProcess(process)
            await client.send(
                {
                    "host": host.strip("[]"),
                    "port": int(port),
                    "origin": services.public_origin,
                    "tokens": tokens[start : start + CLIENTS_PER_PROCESS],
                    "deflate": arguments.deflate,
                }
            )
            processes.append(client)
        readies = [await client.receive() for client in processes]
        authenticated = sum(ready["authenticated"] for ready in readies)
        await trio.sleep(IDLE_SETTLE_S)
        gc.collect()
        rss_after = resident_kib()
        for client in processes:
            await client.send({"window": "open"})
        machine = MachineCpu()
        cpu_before = cpu_seconds()
        began = trio.current_time()
        broadcasts_before = broadcast_count(server)
        rounds = await feed(server, arguments.hz, arguments.seconds)
        broadcasts = broadcast_count(server) - broadcasts_before
        await trio.sleep(DRAIN_S)
        elapsed = trio.current_time() - began
        server_cpu = cpu_seconds() - cpu_before
        busy = machine.busy()
        results = []
        for client in processes:
            await client.send({"stop": True})
            results.append(await client.receive())
    deliveries = sum(result["updates"] for result in results)
    samples = sorted(ms for result in results for ms in result["latencies_sample"])
    closed: dict[str, int] = {}
    for result in results:
        for reason, count in result["closed"].items():
            closed[reason] = closed.get(reason, 0) + count

    def pct(p: float) -> float:
        return samples[max(0, math.ceil(p / 100 * len(samples)) - 1)] if samples else math.nan

    table.add(
        clients,
        authenticated,
        fmt((rss_after - rss_before) / max(1, authenticated)),
        rounds,
        deliveries,
        f"{deliveries / (rounds * clients):.0%}",
        broadcasts,
        fmt(deliveries / elapsed, 0),
        f"{server_cpu / elapsed:.0%}",
        fmt(server_cpu / max(1, deliveries) * 1e6),
        fmt(pct(50)),
        fmt(pct(99)),
        fmt(samples[-1] if samples else math.nan),
        f"{sum(r['cpu_s'] for r in results) / elapsed:.0%}",
        f"{busy:.0%}",
        json.dumps(closed) if closed else "-",
    )


async def main(arguments: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as data_dir:
        config: Config = load_config(environ={}).replace(
            server={"port": 0, "max_connections": 100_000},
            embedded={"data_dir": data_dir},
            websocket={
                "max_connections_per_ip": 100_000,
                "max_connections_per_user": 10,
                "min_update_interval_s": arguments.tick,
            },
        )
        table = Table(
            f"Fan-out: N idle-then-watching WebSockets, a new top 10 {arguments.hz:g} times a "
            f"second for {arguments.seconds:g} s"
            + (" (clients offer permessage-deflate)" if arguments.deflate else ""),
            [
                "clients",
                "authed",
                "KiB/idle socket",
                "snapshots",
                "deliveries",
                "delivered",
                "broadcasts",
                "deliveries/s",
                "server CPU",
                "CPU µs/delivery",
                "p50 ms",
                "p99 ms",
                "max ms",
                "client CPU",
                "machine CPU",
                "closed",
            ],
        )
        async with trio.open_nursery() as nursery:
            server: ServerHandle = await nursery.start(run_server, config)
            gc.collect()
            gc.freeze()
            for clients in arguments.clients:
                await measure(server, clients, arguments, table)
            await server.supervisor.shutdown()
            server.request_shutdown()
    print(table.render())


def run() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fanout", description=__doc__)
    parser.add_argument("--clients", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--hz", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--deflate", action="store_true", help="clients offer permessage-deflate")
    parser.add_argument(
        "--tick",
        type=float,
        default=0.05,
        help="the hub's websocket.min_update_interval_s: below 1/hz, each snapshot goes out as "
        "it arrives, so the latency is the fan-out's alone (default 0.05)",
    )
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    gc.set_threshold(*GC_THRESHOLDS)
    trio.run(main, arguments)


if __name__ == "__main__":
    run()
