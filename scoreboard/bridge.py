"""The one door between trio and the asyncio-only clients (asyncpg, redis.asyncio, aio-pika).

An asyncio event loop (uvloop where installed) runs in a thread of its own. Trio code calls
`await bridge.run(coro_fn, *args)`: the coroutine runs as an asyncio task on that loop and its
result or exception comes back to trio. A trio cancellation cancels the asyncio task and waits,
shielded, until the task has unwound, so a pool is never left holding a half-used connection.

Only adapter modules use this, and only through its four doors: `Crossing` (a backend's calls,
its transport errors answered as `BackendUnavailable`), `Bridge.run` (a call that maps its own
errors), `Bridge.to_trio_nowait` (asyncio callbacks handing work to trio) and
`Bridge.to_asyncio_nowait` (trio handing a quick call to the loop without waiting); nothing else
touches the loop. Cross once per unit of work: write each multi-step job as one coroutine inside
the adapter.

A loop in a thread beats trio-asyncio here: measured on two cores, trio-asyncio ran Postgres
inserts at half of plain asyncio's rate and Redis pipelines and AMQP confirms at 0.35-0.4 of it,
where the thread matched or beat plain asyncio (uvloop); and trio-asyncio does not import on
Python 3.14.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import outcome
import trio

from scoreboard import metrics
from scoreboard.adapters.interfaces import BackendUnavailable

T = TypeVar("T")
log = logging.getLogger(__name__)

LOOP_SHUTDOWN_TIMEOUT_S = 10.0


class BridgeClosed(RuntimeError):
    """The asyncio loop is gone, or it cancelled the task itself while shutting down."""


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


class Bridge:
    """Runs asyncio coroutines on the bridge loop on behalf of trio tasks."""

    def __init__(self, loop: asyncio.AbstractEventLoop, trio_token: trio.lowlevel.TrioToken):
        self._loop = loop
        self.trio_token = trio_token
        self._closed = False
        # Hand-offs each way wait in a queue; one wake-up of the other side runs all that
        # gathered meanwhile (each wake-up is a write to a socket or an eventfd).
        self._to_trio: collections.deque[tuple[Callable[..., object], tuple[Any, ...]]] = (
            collections.deque()
        )
        self._drain_scheduled = False
        self._to_asyncio: collections.deque[Callable[[], object]] = collections.deque()
        self._asyncio_drain_scheduled = False
        # Detached tasks outlive their trio callers; the loop keeps only weak references.
        self._detached: set[asyncio.Future[Any]] = set()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    async def run(self, fn: Callable[..., Awaitable[T]], *args: Any, detached: bool = False) -> T:
        """Run `fn(*args)` on the asyncio loop and return its result to the calling trio task.

        A trio cancellation cancels the asyncio task and waits until it has unwound; with
        `detached`, it leaves the task running to its end instead (its result is dropped), so
        no RPC in it is cut off half-way."""
        if self._closed:
            raise BridgeClosed("the asyncio bridge is closed")
        done = trio.Event()
        result: list[outcome.Outcome[T]] = []
        tasks: list[asyncio.Future[T]] = []

        def deliver(value: outcome.Outcome[T]) -> None:
            result.append(value)
            done.set()

        def on_task_done(task: asyncio.Future[T]) -> None:
            value: outcome.Outcome[T]
            if task.cancelled():
                value = outcome.Error(BridgeClosed("the asyncio task was cancelled"))
            elif (error := task.exception()) is not None:
                value = outcome.Error(error)
            else:
                value = outcome.Value(task.result())
            with contextlib.suppress(trio.RunFinishedError):
                self.to_trio_nowait(deliver, value)

        def start() -> None:
            task: asyncio.Future[T] = asyncio.ensure_future(fn(*args), loop=self._loop)
            if detached:
                self._detached.add(task)
                task.add_done_callback(self._forget_detached)
                task = asyncio.shield(task)
            tasks.append(task)
            task.add_done_callback(on_task_done)

        def cancel() -> None:
            if tasks:
                tasks[0].cancel()

        started = time.perf_counter()
        self._start_in_asyncio(start)
        try:
            await done.wait()
        except trio.Cancelled:
            self._loop.call_soon_threadsafe(cancel)
            with trio.CancelScope(shield=True):
                await done.wait()
            raise
        metrics.BRIDGE_CALL_LATENCY.observe(time.perf_counter() - started)
        return result[0].unwrap()

    def _forget_detached(self, task: asyncio.Future[Any]) -> None:
        self._detached.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: its caller may have left

    def to_asyncio_nowait(self, fn: Callable[..., object], *args: Any) -> None:
        """From trio: run a quick synchronous `fn(*args)` on the loop soon, never waiting; in
        order with the calls `run` starts."""
        self._start_in_asyncio(functools.partial(fn, *args))

    def _start_in_asyncio(self, fn: Callable[[], object]) -> None:
        """Run `fn()` on the loop soon, in order; one `call_soon_threadsafe` for a whole run."""
        self._to_asyncio.append(fn)
        if not self._asyncio_drain_scheduled:
            self._asyncio_drain_scheduled = True
            try:
                self._loop.call_soon_threadsafe(self._drain_to_asyncio)
            except RuntimeError as exc:
                self._to_asyncio.clear()
                self._asyncio_drain_scheduled = False
                raise BridgeClosed("the asyncio bridge is closed") from exc

    def _drain_to_asyncio(self) -> None:
        self._asyncio_drain_scheduled = False  # first: see `_drain_to_trio`
        while self._to_asyncio:
            self._to_asyncio.popleft()()

    def to_trio_nowait(self, fn: Callable[..., object], *args: Any) -> None:
        """From the asyncio thread: run a quick synchronous `fn(*args)` in trio, never blocking.

        Calls keep their order. Each `run_sync_soon` wakes trio with a write to its wake-up
        socket; under load results and deliveries come faster than trio drains them, so only
        the first of a run schedules a drain and the drain runs every call queued by then."""
        self._to_trio.append((fn, args))
        if not self._drain_scheduled:
            self._drain_scheduled = True
            self.trio_token.run_sync_soon(self._drain_to_trio)

    def _drain_to_trio(self) -> None:
        # Cleared before draining: a call queued after the last pop schedules a drain of its
        # own, so none is left behind (under the GIL, deque and flag updates are atomic).
        self._drain_scheduled = False
        while self._to_trio:
            fn, args = self._to_trio.popleft()
            fn(*args)


class Crossing:
    """How one backend's adapter crosses the bridge: `await crossing(fn, *args)` runs `fn(*args)`
    on the loop (as `Bridge.run`, `detached` if the backend's RPCs must not be cut off) and
    answers the backend's transport errors (`unavailable`) as `BackendUnavailable`, naming it."""

    def __init__(
        self,
        bridge: Bridge,
        backend: str,
        unavailable: tuple[type[BaseException], ...],
        *,
        detached: bool = False,
    ) -> None:
        self.bridge = bridge
        self._backend = backend
        self._unavailable = unavailable
        self._detached = detached

    async def __call__(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        try:
            return await self.bridge.run(fn, *args, detached=self._detached)
        except self._unavailable as exc:
            raise BackendUnavailable(f"{self._backend}: {exc!r}") from exc


async def _cancel_leftovers() -> None:
    current = asyncio.current_task()
    leftovers = [task for task in asyncio.all_tasks() if task is not current]
    for task in leftovers:
        task.cancel()
    await asyncio.gather(*leftovers, return_exceptions=True)
    await asyncio.get_running_loop().shutdown_asyncgens()


def _stop_loop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    try:
        asyncio.run_coroutine_threadsafe(_cancel_leftovers(), loop).result(LOOP_SHUTDOWN_TIMEOUT_S)
    except Exception:
        log.exception("asyncio bridge: tasks did not unwind cleanly")
    loop.call_soon_threadsafe(loop.stop)
    thread.join(LOOP_SHUTDOWN_TIMEOUT_S)
    if not thread.is_alive():
        loop.close()


@contextlib.asynccontextmanager
async def open_bridge() -> AsyncIterator[Bridge]:
    """Start the asyncio loop thread; on exit cancel what is left on it and stop it."""
    loop = _new_loop()
    thread = threading.Thread(target=loop.run_forever, name="asyncio-bridge", daemon=True)
    thread.start()
    bridge = Bridge(loop, trio.lowlevel.current_trio_token())
    try:
        yield bridge
    finally:
        bridge._closed = True
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(_stop_loop, loop, thread)
