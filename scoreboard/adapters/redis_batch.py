"""The edge guard's per-request scripts, sent to Redis in batches (part of the Redis adapter).

Every `POST /api/v1/actions/perform` runs the claim script, and with limits on, every API request
runs the request-count script first. Sent one at a time, each is a bridge crossing and a Redis
round trip of its own. `run` is a small trio actor that works like the publisher
(`actors/publisher.py`): it waits for one call, takes whatever else is already waiting (up to
`MAX_BATCH`; no added delay, so under light load a batch is one call) and sends the batch as one
pipeline without MULTI, one `EVALSHA` per call, in one bridge crossing. Up to
`MAX_BATCHES_IN_FLIGHT` batches are out at once, so a call that arrives just after a batch left
does not wait for that batch's round trip; calls pile up, and batches grow, only when every slot
is taken.

The request count is not folded into the claim script, even for the perform route: it is taken
by `http/ip_limit.py` for every API request before the application reads the body or the token
(a 401 or a 422 counts, an address over its limit is answered 429 with the `RateLimit` headers
before any work), while the claim comes after both. Merging them would move the count after
authentication and change what is counted and answered. Batched, the counts and the claims of
concurrent requests share crossings and pipelines anyway.

Each call is still one script, atomic on its own: batching changes nothing of what a claim sees
or records. Redis runs a pipeline's entries in order, so of two claims of one nonce in one batch
the first is `Accepted` and the second `Replayed`, as if they had come one after the other.

Each caller gets its own answer: its entry's reply, or the `ResponseError` Redis answered for
that entry alone. An entry answered `NOSCRIPT` (the server lost its script cache: a restart, a
`SCRIPT FLUSH`) did not run; its script is loaded and those entries are sent again. A batch that
fails as a whole (a transport error after the client's own retries, as a single call would, or
no answer within `BATCH_TIMEOUT_S`) answers each of its callers `BackendUnavailable`; a caller
whose call could not be handed over (the adapter is closing) gets the same.

A caller that gives up (its timeout, its client gone) leaves its call behind:
- before its batch left, the call is skipped and nothing runs, as with an `EVALSHA` never sent;
- after, the batch goes on for the others, and the call runs (or fails) with them. That is what
  a caller cancelled after its own `EVALSHA` reached Redis got before batching. For a claim:
  the nonce is bound to the action id in `PUBLISHING` and the limits count it, but nothing was
  published and the request was never answered 202, so nothing is lost or doubled. A retry with
  the same nonce is `Replayed` with `PUBLISHING` and publishes that action id (`intake.py`); a
  client that never retries leaves a claim that only counts against its limits until the nonce
  expires. A request count whose caller left is a request counted, as before.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import outcome
import redis.asyncio
import redis.exceptions
import trio
from redis.commands.core import AsyncScript
from redis.typing import EncodableT

from scoreboard import metrics
from scoreboard.actors import inbox as inboxes
from scoreboard.adapters.interfaces import BackendUnavailable
from scoreboard.bridge import Crossing

log = logging.getLogger(__name__)

INBOX_SIZE = 1024  # calls waiting while every batch slot is out; past it, callers wait
# Enough to amortise a crossing and a round trip over a burst of requests; Redis runs a batch's
# scripts one after the other, so a larger one would only delay its first callers' answers.
MAX_BATCH = 256
MAX_BATCHES_IN_FLIGHT = 4
# Redis has no read timeout here: a batch it never answers must not hold its slot for ever.
BATCH_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class ScriptCall:
    """Run `script` on `keys` and `args`; answer `reply` (capacity ≥ 1) with the reply or the
    error. A reply channel whose receiver is closed means the caller gave up: the call is not
    sent."""

    script: AsyncScript
    keys: Sequence[str]
    args: Sequence[EncodableT]
    reply: trio.MemorySendChannel[outcome.Outcome[Any]]


ScriptsHandle = trio.MemorySendChannel[ScriptCall]
"""How the edge guard reaches the batcher: the sending end of its inbox."""


def open_inbox() -> tuple[ScriptsHandle, trio.MemoryReceiveChannel[ScriptCall]]:
    return trio.open_memory_channel[ScriptCall](INBOX_SIZE)


async def call(
    scripts: ScriptsHandle, script: AsyncScript, keys: Sequence[str], args: Sequence[EncodableT]
) -> Any:
    """Run `script` in the batcher's next batch: its reply, or raise its error (`ResponseError`
    for this call alone, `BackendUnavailable` for the batch)."""
    try:
        answer = await inboxes.call(scripts, functools.partial(ScriptCall, script, keys, args))
    except (trio.ClosedResourceError, trio.BrokenResourceError, trio.EndOfChannel) as exc:
        raise BackendUnavailable("redis: the adapter is closed") from exc
    return answer.unwrap()


async def run(
    inbox: trio.MemoryReceiveChannel[ScriptCall], *, crossing: Crossing, client: redis.asyncio.Redis
) -> None:
    """Until the inbox is closed (then the batches out are finished first) or until cancelled;
    either way every call taken in is answered, or its reply channel closed. `open_redis` runs
    it as a trio system task: a nursery held across its `yield` would tie every user of the
    adapter to its cancel scopes. A system task must never raise, so a bug here is logged, and
    the calls after it are answered `BackendUnavailable`."""
    free_slots = trio.Semaphore(MAX_BATCHES_IN_FLIGHT)
    try:
        async with trio.open_nursery() as nursery:
            while True:
                await free_slots.acquire()
                try:
                    batch = await inboxes.receive_batch(inbox, MAX_BATCH)
                except trio.EndOfChannel:
                    return
                nursery.start_soon(_send_in_slot, crossing, client, batch, free_slots)
    except Exception:
        log.critical("redis: the edge guard's batcher failed", exc_info=True)
    finally:
        # Calls still queued get no answer: closing their replies tells their callers.
        with inbox:
            while True:
                try:
                    inbox.receive_nowait().reply.close()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break


async def _send_in_slot(
    crossing: Crossing, client: redis.asyncio.Redis, batch: list[ScriptCall], slot: trio.Semaphore
) -> None:
    try:
        wanted = [request for request in batch if not inboxes.gone(request.reply)]
        if wanted:
            await _send(crossing, client, wanted)
    finally:
        for request in batch:
            request.reply.close()  # after its answer, if it got one; else the caller hears
        slot.release()


async def _send(crossing: Crossing, client: redis.asyncio.Redis, batch: list[ScriptCall]) -> None:
    metrics.BATCH_SIZE.labels("redis").observe(len(batch))
    entries = [(request.script, request.keys, request.args) for request in batch]
    try:
        with trio.fail_after(BATCH_TIMEOUT_S):
            replies = await crossing(_evaluate, client, entries)
    except (BackendUnavailable, trio.TooSlowError) as exc:
        failure = repr(exc)
    except Exception as exc:
        log.exception("redis: a batch of %d scripts failed", len(batch))
        failure = repr(exc)
    else:
        for request, reply in zip(batch, replies, strict=True):
            answer = outcome.Error(reply) if isinstance(reply, Exception) else outcome.Value(reply)
            inboxes.reply(request.reply, answer)
        return
    for request in batch:
        # An exception of its own for each caller: each raises it, with a traceback of its own.
        inboxes.reply(request.reply, outcome.Error(BackendUnavailable(f"redis: {failure}")))


Entry = tuple[AsyncScript, Sequence[str], Sequence[EncodableT]]


async def _evaluate(client: redis.asyncio.Redis, entries: list[Entry]) -> list[Any]:
    """On the bridge loop: each entry's reply, or the `ResponseError` Redis answered for it. The
    entries answered NOSCRIPT did not run: their scripts are loaded and they are sent again
    (the script objects' own fallback, without their SCRIPT EXISTS before each pipeline)."""
    replies = await _pipeline(client, entries)
    lost = [
        i for i, reply in enumerate(replies) if isinstance(reply, redis.exceptions.NoScriptError)
    ]
    if lost:
        for script in {entries[i][0].sha: entries[i][0] for i in lost}.values():
            script.sha = await client.script_load(script.script)
        again = await _pipeline(client, [entries[i] for i in lost])
        for i, reply in zip(lost, again, strict=True):
            replies[i] = reply
    return replies


async def _pipeline(client: redis.asyncio.Redis, entries: list[Entry]) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    for script, keys, args in entries:
        pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
    return await pipe.execute(raise_on_error=False)
