"""The asyncio bridge: results, errors, cancellation both ways, and shutdown."""

from __future__ import annotations

import asyncio
import functools
import threading

import pytest
import trio

from scoreboard.adapters.interfaces import BackendUnavailable
from scoreboard.bridge import Bridge, BridgeClosed, Crossing, open_bridge


class Boom(Exception):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


async def echo(value: str) -> str:
    await asyncio.sleep(0)
    return value


async def wait_in_thread(event: threading.Event) -> None:
    assert await trio.to_thread.run_sync(event.wait, 10), "the asyncio side never got there"


async def test_the_result_comes_back_from_the_bridge_thread() -> None:
    async def add(a: int, b: int) -> tuple[int, str]:
        await asyncio.sleep(0)
        return a + b, threading.current_thread().name

    async with open_bridge() as bridge:
        assert await bridge.run(add, 2, 3) == (5, "asyncio-bridge")


async def test_an_exception_comes_back_as_it_was_raised() -> None:
    async def fail() -> None:
        await asyncio.sleep(0)
        raise Boom("details kept")

    async with open_bridge() as bridge:
        with pytest.raises(Boom) as caught:
            await bridge.run(fail)
    assert caught.value.detail == "details kept"


async def test_many_concurrent_calls_each_get_their_own_result() -> None:
    async def echo_later(value: int) -> int:
        await asyncio.sleep(0.001 * (value % 7))
        return value

    results: dict[int, int] = {}

    async def call(bridge: Bridge, value: int) -> None:
        results[value] = await bridge.run(echo_later, value)

    async with open_bridge() as bridge, trio.open_nursery() as nursery:
        for value in range(200):
            nursery.start_soon(call, bridge, value)
    assert results == {value: value for value in range(200)}


async def test_a_trio_timeout_cancels_the_asyncio_task_and_waits_until_it_has_unwound() -> None:
    started = threading.Event()
    unwound = threading.Event()

    async def slow_to_stop() -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            await asyncio.sleep(0.2)  # cleanup that itself takes a while, like a ROLLBACK
            unwound.set()
            raise

    async with open_bridge() as bridge:
        began = trio.current_time()
        with trio.move_on_after(0.1) as scope:
            await bridge.run(slow_to_stop)
        assert scope.cancelled_caught
        assert started.is_set()
        assert unwound.is_set()
        assert trio.current_time() - began >= 0.3
        assert await bridge.run(echo, "still usable") == "still usable"


async def test_cancelling_one_call_leaves_the_others_running() -> None:
    async def sleep_then(value: str, seconds: float) -> str:
        await asyncio.sleep(seconds)
        return value

    async with open_bridge() as bridge:
        async with trio.open_nursery() as nursery:
            other: list[str] = []

            async def call_other() -> None:
                other.append(await bridge.run(sleep_then, "other", 0.3))

            nursery.start_soon(call_other)
            with trio.move_on_after(0.05):
                await bridge.run(sleep_then, "cancelled", 60)
        assert other == ["other"]


async def test_the_asyncio_side_hands_values_to_trio_without_blocking() -> None:
    send, receive = trio.open_memory_channel[int](10)

    async def produce(bridge: Bridge) -> None:
        for value in range(3):
            bridge.to_trio_nowait(send.send_nowait, value)
            await asyncio.sleep(0)

    async with open_bridge() as bridge:
        await bridge.run(produce, bridge)
        assert [await receive.receive() for _ in range(3)] == [0, 1, 2]


async def test_calls_after_close_raise_bridge_closed() -> None:
    async with open_bridge() as bridge:
        pass
    with pytest.raises(BridgeClosed):
        await bridge.run(asyncio.sleep, 0)


async def test_shutdown_cancels_calls_in_flight_and_stops_the_loop() -> None:
    started = threading.Event()
    unwound = threading.Event()
    outcome: list[BaseException] = []

    async def forever() -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        finally:
            unwound.set()

    async def call_forever(bridge: Bridge) -> None:
        try:
            await bridge.run(forever)
        except BridgeClosed as exc:
            outcome.append(exc)

    async with trio.open_nursery() as nursery, open_bridge() as bridge:
        nursery.start_soon(call_forever, bridge)
        await wait_in_thread(started)

    assert unwound.is_set()
    assert len(outcome) == 1
    assert bridge.loop.is_closed()
    assert not any(thread.name == "asyncio-bridge" for thread in threading.enumerate())


async def test_shutdown_while_the_trio_side_is_cancelled_still_stops_the_loop() -> None:
    started = threading.Event()

    async def forever() -> None:
        started.set()
        await asyncio.sleep(60)

    with trio.CancelScope() as trio_side:
        async with open_bridge() as bridge, trio.open_nursery() as nursery:
            nursery.start_soon(bridge.run, forever)
            await trio.to_thread.run_sync(started.wait)
            trio_side.cancel()
    assert bridge.loop.is_closed()


async def test_hand_offs_to_trio_all_arrive_in_order_however_they_bunch_up() -> None:
    arrived: list[int] = []
    done = trio.Event()
    total = 10_000

    def note(value: int) -> None:
        arrived.append(value)
        if value == total - 1:
            done.set()

    async with open_bridge() as bridge:

        async def flood() -> None:
            for value in range(total):
                bridge.to_trio_nowait(note, value)
                if value % 1000 == 0:
                    await asyncio.sleep(0)  # let trio drain part of it meanwhile

        await bridge.run(flood)
        with trio.fail_after(10):
            await done.wait()
    assert arrived == list(range(total))


async def test_calls_started_together_all_run_once_and_answer_their_caller() -> None:
    started: list[int] = []

    async def note(value: int) -> int:
        started.append(value)
        await asyncio.sleep(0)
        return value * 2

    async with open_bridge() as bridge:
        results: dict[int, int] = {}

        async def call(value: int) -> None:
            results[value] = await bridge.run(note, value)

        async with trio.open_nursery() as nursery:
            for value in range(2000):
                nursery.start_soon(call, value)
    assert sorted(started) == list(range(2000))
    assert results == {value: value * 2 for value in range(2000)}


async def test_a_cancelled_caller_leaves_a_detached_task_running_to_its_end() -> None:
    release = asyncio.Event()
    reached, finished = threading.Event(), threading.Event()

    async def rpc() -> str:
        reached.set()
        await release.wait()
        finished.set()
        return "answer nobody reads"

    async with open_bridge() as bridge:
        with trio.move_on_after(5) as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(functools.partial(bridge.run, rpc, detached=True))
                await wait_in_thread(reached)
                nursery.cancel_scope.cancel()
        assert not scope.cancelled_caught
        assert not finished.is_set()
        bridge.to_asyncio_nowait(release.set)
        await wait_in_thread(finished)


async def test_calls_handed_to_the_loop_without_waiting_run_in_order() -> None:
    seen: list[int] = []
    done = threading.Event()

    async def last() -> None:
        done.set()

    async with open_bridge() as bridge:
        for value in range(50):
            bridge.to_asyncio_nowait(seen.append, value)
        await bridge.run(last)
        await wait_in_thread(done)
    assert seen == list(range(50))


async def test_a_crossing_answers_its_backends_transport_errors_as_unavailable() -> None:
    async def refused() -> None:
        raise ConnectionRefusedError("connection refused")

    async def broken() -> None:
        raise Boom("not a transport error")

    async with open_bridge() as bridge:
        crossing = Crossing(bridge, "somedb", (OSError,))
        with pytest.raises(BackendUnavailable, match="somedb: ConnectionRefusedError"):
            await crossing(refused)
        with pytest.raises(Boom):
            await crossing(broken)
