"""The server side's handle on a `benchmarks.loadgen` process: one JSON line each way."""

from __future__ import annotations

import json
import subprocess
import sys
from functools import partial
from typing import Any

import trio

LOADGEN = [sys.executable, "-m", "benchmarks.loadgen"]


class LoadGenerator:
    """A running `benchmarks.loadgen` process; stderr passes through to ours."""

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
                raise RuntimeError(f"the load generator exited ({await self.process.wait()})")
            self.buffer += chunk
        line, _, rest = bytes(self.buffer).partition(b"\n")
        self.buffer[:] = rest
        answer: dict[str, Any] = json.loads(line)
        return answer


async def start_load_generator(nursery: trio.Nursery, job: dict[str, Any]) -> LoadGenerator:
    process = await nursery.start(
        partial(trio.run_process, LOADGEN, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    )
    generator = LoadGenerator(process)
    await generator.send(job)
    return generator


async def run_load_generator(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job to its single answer (the HTTP jobs)."""
    async with trio.open_nursery() as nursery:
        generator = await start_load_generator(nursery, job)
        return await generator.receive()
