"""The edge guard's batcher (`adapters/redis_batch.py`) against the real Redis, through a proxy
of the test's own: calls queued before the batcher starts are all taken into its first batch."""

from __future__ import annotations

import functools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis.exceptions
import trio
import trio.testing
from prometheus_client import REGISTRY

from scoreboard.adapters import redis_batch
from scoreboard.adapters.interfaces import (
    PUBLISHING,
    Accepted,
    BackendUnavailable,
    Claim,
    Limited,
    Replayed,
    RequestCount,
)
from scoreboard.adapters.redis import TRANSPORT_ERRORS, RedisEdgeGuard, _connect, open_redis
from scoreboard.bridge import Crossing, open_bridge
from scoreboard.config import RedisConfig
from tests.faultproxy import FaultProxy

T0 = 1_764_500_000_000
NO_HANG_S = 30  # a guard against hanging, not a timed assert


@dataclass
class Batching:
    """A guard whose batcher starts only when told, so that what was called before is one
    batch."""

    guard: RedisEdgeGuard
    inbox: trio.MemoryReceiveChannel[redis_batch.ScriptCall]
    crossing: Crossing
    client: Any
    proxy: FaultProxy
    nursery: trio.Nursery

    async def queue(self, call: Callable[[], Awaitable[object]]) -> Answer:
        """Start `call` and return once its script waits in the batcher's inbox."""
        answer = Answer()
        self.nursery.start_soon(answer.take, call)
        await trio.testing.wait_all_tasks_blocked()
        return answer

    async def start_batcher(self) -> trio.CancelScope:
        """Start the batcher; cancelling the scope returned stops it."""
        stop = trio.CancelScope()

        async def batcher() -> None:
            with stop:
                await redis_batch.run(self.inbox, crossing=self.crossing, client=self.client)

        self.nursery.start_soon(batcher)
        return stop


@dataclass(eq=False)
class Answer:
    value: object = None
    error: BaseException | None = None
    scope: trio.CancelScope | None = None
    done: trio.Event | None = None

    async def take(self, call: Callable[[], Awaitable[object]]) -> None:
        self.done = trio.Event()
        try:
            with trio.CancelScope() as self.scope:
                self.value = await call()
        except Exception as exc:
            self.error = exc
        finally:
            self.done.set()

    async def result(self) -> object:
        assert self.done is not None
        await self.done.wait()
        return self.value


@pytest.fixture
async def batching(redis_url: str, redis_prefix: str) -> AsyncIterator[Batching]:
    parts = urlsplit(redis_url)
    proxy = FaultProxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    async with open_bridge() as bridge, trio.open_nursery() as nursery:
        proxy.port = await nursery.start(proxy.serve)
        crossing = Crossing(bridge, "redis", TRANSPORT_ERRORS)
        client = await crossing(_connect, f"redis://127.0.0.1:{proxy.port}{parts.path}")
        scripts, inbox = redis_batch.open_inbox()
        guard = RedisEdgeGuard(bridge, client, redis_prefix, scripts)
        try:
            yield Batching(guard, inbox, crossing, client, proxy, nursery)
        finally:
            proxy.restore()
            with trio.CancelScope(shield=True):
                await bridge.run(client.aclose)
            nursery.cancel_scope.cancel()


def claim(
    guard: RedisEdgeGuard,
    *,
    user_id: int = 1,
    nonce: str,
    action_id: uuid.UUID | None = None,
    user_limit: int = 10,
) -> Callable[[], Awaitable[Claim]]:
    return functools.partial(
        guard.claim,
        user_id=user_id,
        nonce=nonce,
        action_id=action_id or uuid.uuid4(),
        action_type="complete_task",
        ip="203.0.113.7",
        now_ms=T0,
        cooldown_ms=0,
        user_limit_per_minute=user_limit,
        ip_limit_per_minute=100,
        limits_enabled=True,
    )


def redis_batches() -> tuple[float, float]:
    """How many batches the batchers sent, and how many calls in all."""
    labels = {"stage": "redis"}
    count = REGISTRY.get_sample_value("scoreboard_batch_size_count", labels) or 0.0
    total = REGISTRY.get_sample_value("scoreboard_batch_size_sum", labels) or 0.0
    return count, total


async def test_each_call_of_one_batch_gets_its_own_answer(batching: Batching) -> None:
    guard = batching.guard
    first = uuid.uuid4()
    accepted = [await batching.queue(claim(guard, user_id=u, nonce=f"n-{u}-0001")) for u in (1, 2)]
    # The same nonce twice in one pipeline: the second comes after the first has claimed it.
    again = [
        await batching.queue(claim(guard, user_id=3, nonce="twice-001", action_id=first)),
        await batching.queue(claim(guard, user_id=3, nonce="twice-001")),
    ]
    # One action a minute for user 4: the second claim of the batch is over the limit.
    limited = [
        await batching.queue(claim(guard, user_id=4, nonce=f"lim-{i}-0001", user_limit=1))
        for i in range(2)
    ]
    counted = await batching.queue(
        functools.partial(guard.count_request, "ip:203.0.113.9", 5, now_ms=T0)
    )
    batches_before, calls_before = redis_batches()

    with trio.fail_after(NO_HANG_S):
        await batching.start_batcher()
        assert [await a.result() for a in accepted] == [Accepted(), Accepted()]
        assert [await a.result() for a in again] == [Accepted(), Replayed(first, PUBLISHING)]
        assert [await a.result() for a in limited] == [Accepted(), Limited(60)]
        assert await counted.result() == RequestCount(admitted=True, remaining=4, reset_s=60)
    assert redis_batches() == (batches_before + 1, calls_before + 7)


async def test_a_failing_script_fails_only_its_caller_and_a_lost_one_is_loaded(
    batching: Batching,
) -> None:
    guard, client = batching.guard, batching.client
    # Scripts of this test alone: never loaded, so Redis answers their first EVALSHA NOSCRIPT.
    marker = uuid.uuid4().hex
    echo = client.register_script(f"return ARGV[1] -- {marker}")
    failing = client.register_script(f"return redis.error_reply('boom') -- {marker}")
    echoed = [
        await batching.queue(functools.partial(redis_batch.call, guard._scripts, echo, [], [i]))
        for i in range(2)
    ]
    failed = await batching.queue(
        functools.partial(redis_batch.call, guard._scripts, failing, [], [])
    )
    claimed = await batching.queue(claim(guard, nonce="beside-001"))

    with trio.fail_after(NO_HANG_S):
        await batching.start_batcher()
        assert [await a.result() for a in echoed] == ["0", "1"]
        assert await claimed.result() == Accepted()
        await failed.result()
    assert isinstance(failed.error, redis.exceptions.ResponseError)
    assert "boom" in str(failed.error)


async def test_a_batch_redis_does_not_answer_fails_each_caller_and_nothing_hangs(
    batching: Batching,
) -> None:
    guard = batching.guard
    answers = [await batching.queue(claim(guard, nonce=f"down-{i}-0001")) for i in range(3)]
    answers.append(
        await batching.queue(functools.partial(guard.count_request, "ip:x", 5, now_ms=T0))
    )
    batching.proxy.cut()  # Redis is down: connections dropped, new ones refused

    with trio.fail_after(NO_HANG_S):
        await batching.start_batcher()
        for answer in answers:
            await answer.result()
            assert isinstance(answer.error, BackendUnavailable), answer.error
        # Back up: the next call goes through.
        batching.proxy.restore()
        assert await claim(guard, nonce="back-up-001")() == Accepted()


async def test_a_caller_that_left_before_its_batch_was_sent_claims_nothing(
    batching: Batching,
) -> None:
    guard = batching.guard
    before = await batching.queue(claim(guard, nonce="stays-0001"))
    leaving = await batching.queue(claim(guard, nonce="leaves-001"))
    after = await batching.queue(claim(guard, nonce="stays-0002"))
    assert leaving.scope is not None
    leaving.scope.cancel()
    await trio.testing.wait_all_tasks_blocked()

    with trio.fail_after(NO_HANG_S):
        await batching.start_batcher()
        assert [await before.result(), await after.result()] == [Accepted(), Accepted()]
        # Its script never ran: the nonce is free.
        assert await claim(guard, nonce="leaves-001")() == Accepted()
    assert leaving.value is None
    assert leaving.error is None


async def test_a_caller_that_left_after_its_batch_was_sent_loses_nothing_for_the_others(
    batching: Batching,
) -> None:
    """The batch goes on; the claim of the caller that left is recorded (as one whose EVALSHA
    had reached Redis before it was cancelled), so a retry of its nonce is `Replayed` with
    `PUBLISHING` and publishes that very action id: nothing lost, nothing doubled."""
    guard = batching.guard
    left_id = uuid.uuid4()
    leaving = await batching.queue(claim(guard, nonce="left-0001", action_id=left_id))
    staying = await batching.queue(claim(guard, nonce="stays-0003"))
    batching.proxy.hold_replies()  # the batch reaches Redis; its replies wait in the proxy

    with trio.fail_after(NO_HANG_S):
        await batching.start_batcher()
        await trio.testing.wait_all_tasks_blocked()  # the batch is out, in the bridge crossing
        assert leaving.scope is not None
        leaving.scope.cancel()
        await leaving.result()
        batching.proxy.restore()
        assert await staying.result() == Accepted()
        assert await claim(guard, nonce="left-0001")() == Replayed(left_id, PUBLISHING)
    assert leaving.value is None
    assert leaving.error is None


async def test_a_stopped_batcher_answers_every_call_it_held(batching: Batching) -> None:
    guard = batching.guard
    held = await batching.queue(claim(guard, nonce="held-00001"))
    batching.proxy.hold_replies()
    stop = await batching.start_batcher()
    await trio.testing.wait_all_tasks_blocked()  # the batch is out, in the bridge crossing
    stop.cancel()
    with trio.fail_after(NO_HANG_S):
        await held.result()
        assert isinstance(held.error, BackendUnavailable)
        with pytest.raises(BackendUnavailable):
            await claim(guard, nonce="too-late-01")()


async def test_after_open_redis_exits_a_call_is_backend_unavailable(
    redis_url: str, redis_prefix: str
) -> None:
    with trio.fail_after(NO_HANG_S):
        async with (
            open_bridge() as bridge,
            open_redis(bridge, RedisConfig(url=redis_url, prefix=redis_prefix)) as backend,
        ):
            assert await claim(backend.guard, nonce="inside-001")() == Accepted()
        with pytest.raises(BackendUnavailable):
            await claim(backend.guard, nonce="outside-01")()
