"""The Redis adapters against the real server, each test under a key prefix of its own."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import redis
import trio
from redis.crc import key_slot

from scoreboard.adapters.interfaces import (
    OUTCOME_UNKNOWN,
    PUBLISHING,
    Accepted,
    BoardMissing,
    FailureDelay,
    Limited,
    MeView,
    PendingAction,
    Replayed,
)
from scoreboard.adapters.redis import RedisBackend, board_keys, open_redis
from scoreboard.bridge import open_bridge
from scoreboard.config import RedisConfig
from scoreboard.records import BoardEntry, RankChange, RankedEntry
from tests.rate_rules import IP_LIMIT, RATE_CASES, RateCase

T0 = 1_764_500_000_000
# A script that keeps the server busy, so that a call from the adapter is surely in flight.
BUSY_SCRIPT = """
local start = redis.call('TIME')
while true do
  local now = redis.call('TIME')
  if (now[1] - start[1]) * 1000000 + now[2] - start[2] > tonumber(ARGV[1]) then return 1 end
end
"""


@pytest.fixture
async def backend(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisBackend]:
    with trio.fail_after(30):
        async with (
            open_bridge() as bridge,
            open_redis(bridge, RedisConfig(url=redis_url, prefix=redis_prefix)) as opened,
        ):
            yield opened


@pytest.fixture
def raw(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url, decode_responses=True)


def entry(user_id: int, score: int, reached_ms: int) -> BoardEntry:
    return BoardEntry(user_id, f"user{user_id}", score, reached_ms)


def ranked(rank: int, user_id: int, score: int) -> RankedEntry:
    return RankedEntry(rank, user_id, f"user{user_id}", score)


async def claim(
    backend: RedisBackend,
    *,
    user_id: int = 1,
    nonce: str | None = None,
    action_type: str = "complete_task",
    ip: str = "203.0.113.7",
    now_ms: int = T0,
    cooldown_ms: int = 0,
    user_limit: int = 10,
    ip_limit: int = 100,
    limits_enabled: bool = True,
    action_id: uuid.UUID | None = None,
) -> Accepted | Replayed | Limited:
    return await backend.guard.claim(
        user_id=user_id,
        nonce=nonce or uuid.uuid4().hex,
        action_id=action_id or uuid.uuid4(),
        action_type=action_type,
        ip=ip,
        now_ms=now_ms,
        cooldown_ms=cooldown_ms,
        user_limit_per_minute=user_limit,
        ip_limit_per_minute=ip_limit,
        limits_enabled=limits_enabled,
    )


# The board


async def test_equal_scores_rank_by_who_reached_them_first(backend: RedisBackend) -> None:
    await backend.board.rebuild(
        [
            entry(1, 50, T0 + 300),
            entry(2, 50, T0 + 100),
            entry(3, 70, T0 + 900),
            entry(4, 50, T0 + 200),
        ]
    )
    top, updated_at = await backend.board.top(10)
    assert top == [ranked(1, 3, 70), ranked(2, 2, 50), ranked(3, 4, 50), ranked(4, 1, 50)]
    assert updated_at > 0
    assert (await backend.board.top(2))[0] == top[:2]


async def test_apply_without_a_board_answers_none_and_writes_nothing(
    backend: RedisBackend, raw: redis.Redis, redis_prefix: str
) -> None:
    assert await backend.board.apply([entry(1, 10, T0)], top_n=10) is None
    assert list(raw.scan_iter(match=f"{redis_prefix}*")) == []


async def test_apply_sets_absolute_scores_and_reports_rank_changes(backend: RedisBackend) -> None:
    await backend.board.rebuild([entry(1, 100, T0), entry(2, 50, T0)])

    result = await backend.board.apply([entry(3, 75, T0 + 1)], top_n=2)
    assert result == ([RankChange(3, None, 2)], [ranked(1, 1, 100), ranked(2, 3, 75)])

    result = await backend.board.apply([entry(2, 200, T0 + 2), entry(3, 80, T0 + 2)], top_n=10)
    assert result is not None
    changes, top = result
    assert changes == [RankChange(2, 3, 1), RankChange(3, 2, 3)]
    assert top == [ranked(1, 2, 200), ranked(2, 1, 100), ranked(3, 3, 80)]
    assert await backend.board.scores() == {1: 100, 2: 200, 3: 80}


async def test_apply_ignores_stale_entries(backend: RedisBackend) -> None:
    await backend.board.rebuild([entry(1, 100, T0 + 50), entry(2, 100, T0 + 60)])

    # Redelivered or reordered older scores of user 1: lower, or the same reached later.
    result = await backend.board.apply([entry(1, 90, T0 + 10), entry(1, 100, T0 + 70)], top_n=5)
    assert result == ([RankChange(1, 1, 1)], [ranked(1, 1, 100), ranked(2, 2, 100)])

    # The same score reached earlier than the stored time is the truth and wins the tie.
    result = await backend.board.apply([entry(2, 100, T0 + 40)], top_n=5)
    assert result == ([RankChange(2, 2, 1)], [ranked(1, 2, 100), ranked(2, 1, 100)])

    # Within one batch the newest entry of a user wins whatever the order.
    result = await backend.board.apply([entry(1, 130, T0 + 90), entry(1, 120, T0 + 80)], top_n=1)
    assert result == ([RankChange(1, 2, 1)], [ranked(1, 1, 130)])


async def test_big_score_keeps_every_digit(backend: RedisBackend) -> None:
    big = 2**52 + 1
    await backend.board.rebuild([entry(1, 1, T0)])
    await backend.board.apply([entry(1, big, T0 + 1)], top_n=1)
    assert await backend.board.scores() == {1: big}


async def test_rebuild_swaps_the_whole_board_at_once(
    backend: RedisBackend, raw: redis.Redis, redis_prefix: str
) -> None:
    old = [entry(user, 1, T0) for user in range(1, 11)]
    new = [entry(user, 5 + user % 97, T0 + user) for user in range(1001, 3501)]
    await backend.board.rebuild(old)

    old_users = {e.user_id for e in old}
    watching = trio.Event()

    async def watch() -> None:
        while True:
            top, _ = await backend.board.top(10)
            users = {e.user_id for e in top}
            assert len(top) == 10
            assert users <= old_users or users.isdisjoint(old_users), "a half-built board"
            watching.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        await watching.wait()
        await backend.board.rebuild(new)
        nursery.cancel_scope.cancel()

    top, _ = await backend.board.top(10)
    assert {e.user_id for e in top}.isdisjoint(old_users)
    assert await backend.board.scores() == {e.user_id: e.score for e in new}
    assert sorted(raw.scan_iter(match=f"{redis_prefix}*")) == sorted(board_keys(redis_prefix))
    assert raw.ttl(board_keys(redis_prefix)[0]) == -1


async def test_rebuild_with_no_entries_leaves_an_empty_built_board(backend: RedisBackend) -> None:
    await backend.board.rebuild([entry(1, 10, T0)])
    await backend.board.rebuild([])
    top, updated_at = await backend.board.top(10)
    assert (top, updated_at > 0) == ([], True)
    assert await backend.board.scores() == {}
    assert await backend.board.apply([entry(2, 5, T0)], top_n=3) == (
        [RankChange(2, None, 1)],
        [ranked(1, 2, 5)],
    )


async def test_a_missing_board_is_never_read_as_empty(backend: RedisBackend) -> None:
    for read in (backend.board.top(10), backend.board.top(0), backend.board.around(1, 5)):
        with pytest.raises(BoardMissing):
            await read
    await backend.board.rebuild([])
    assert (await backend.board.top(10))[0] == []
    assert await backend.board.around(1, 5) is None


async def test_rebuild_if_missing_never_replaces_a_board(backend: RedisBackend) -> None:
    assert await backend.board.rebuild_if_missing([entry(1, 10, T0)]) is True
    assert await backend.board.rebuild_if_missing([entry(1, 5, T0), entry(2, 7, T0)]) is False
    assert await backend.board.scores() == {1: 10}


async def test_around_gives_the_neighbours_on_each_side(backend: RedisBackend) -> None:
    await backend.board.rebuild([entry(user, 100 - user, T0) for user in range(1, 9)])

    view = await backend.board.around(4, 2)
    assert view == MeView(
        me=ranked(4, 4, 96),
        above=(ranked(2, 2, 98), ranked(3, 3, 97)),
        below=(ranked(5, 5, 95), ranked(6, 6, 94)),
    )
    first = await backend.board.around(1, 5)
    assert first is not None
    assert (first.me.rank, first.above, len(first.below)) == (1, (), 5)
    last = await backend.board.around(8, 5)
    assert last is not None
    assert last.me == ranked(8, 8, 92)
    assert ([e.rank for e in last.above], last.below) == ([3, 4, 5, 6, 7], ())
    assert await backend.board.around(99, 5) is None


async def test_ping(backend: RedisBackend) -> None:
    await backend.board.ping()
    await backend.guard.ping()


# The edge guard


async def test_a_known_nonce_is_replayed_with_its_first_answer(backend: RedisBackend) -> None:
    first = uuid.uuid4()
    assert await claim(backend, nonce="nonce-0001", action_id=first) == Accepted()
    assert await claim(backend, nonce="nonce-0001") == Replayed(first, PUBLISHING)
    await backend.guard.mark_queued([(1, "nonce-0001", first)])
    assert await claim(backend, nonce="nonce-0001") == Replayed(first, 202)
    await backend.guard.set_first_status(user_id=1, nonce="nonce-0001", status_code=200)
    assert await claim(backend, nonce="nonce-0001") == Replayed(first, 200)
    # Nonces are per user.
    assert await claim(backend, user_id=2, nonce="nonce-0001") == Accepted()
    # A status for an unknown nonce is not stored.
    await backend.guard.set_first_status(user_id=3, nonce="nonce-0001", status_code=200)
    assert await claim(backend, user_id=3, nonce="nonce-0001") == Accepted()


@pytest.mark.parametrize("case", RATE_CASES, ids=lambda case: case.name)
async def test_the_guard_passes_the_rate_cases(backend: RedisBackend, case: RateCase) -> None:
    for attempt in case.attempts:
        answer = await claim(
            backend,
            action_type=attempt.action_type,
            now_ms=T0 + attempt.after_ms,
            cooldown_ms=case.cooldown_ms(attempt.action_type),
            user_limit=case.user_limit,
            ip_limit=IP_LIMIT,
        )
        expected = Accepted() if attempt.retry_after_s is None else Limited(attempt.retry_after_s)
        assert answer == expected, attempt


async def test_user_limit_is_a_sliding_minute(backend: RedisBackend) -> None:
    for second in range(10):
        assert await claim(backend, now_ms=T0 + second * 1000) == Accepted()
    # The oldest action (T0) leaves the window at T0 + 60 s.
    assert await claim(backend, now_ms=T0 + 10_000) == Limited(50)
    assert await claim(backend, now_ms=T0 + 59_001) == Limited(1)
    assert await claim(backend, now_ms=T0 + 60_000) == Accepted()
    assert await claim(backend, now_ms=T0 + 60_001) == Limited(1)
    assert await claim(backend, now_ms=T0 + 61_000) == Accepted()
    # Another user has a window of their own.
    assert await claim(backend, user_id=2, now_ms=T0 + 61_000) == Accepted()


async def test_ip_limit_counts_every_user_from_that_ip(backend: RedisBackend) -> None:
    for user in range(1, 4):
        assert await claim(backend, user_id=user, ip_limit=3) == Accepted()
    assert await claim(backend, user_id=9, ip_limit=3, now_ms=T0 + 30_000) == Limited(30)
    assert await claim(backend, user_id=9, ip_limit=3, ip="2001:db8::1") == Accepted()
    assert await claim(backend, user_id=9, ip_limit=3, now_ms=T0 + 60_001) == Accepted()


async def test_cooldown_is_per_user_and_action_type(backend: RedisBackend) -> None:
    assert await claim(backend, cooldown_ms=5000) == Accepted()
    assert await claim(backend, cooldown_ms=5000, now_ms=T0 + 1200) == Limited(4)
    assert await claim(backend, cooldown_ms=5000, now_ms=T0 + 4999) == Limited(1)
    assert await claim(backend, cooldown_ms=5000, action_type="win_match") == Accepted()
    assert await claim(backend, cooldown_ms=5000, user_id=2) == Accepted()
    assert await claim(backend, cooldown_ms=5000, now_ms=T0 + 5000) == Accepted()


async def test_retry_after_is_the_longest_wait(backend: RedisBackend) -> None:
    assert await claim(backend, action_type="slow", cooldown_ms=90_000) == Accepted()
    for second in range(1, 10):
        got = await claim(backend, action_type=f"type{second}", now_ms=T0 + second * 1000)
        assert got == Accepted()
    # The window frees a place at T0 + 60 s, the cooldown ends at T0 + 90 s.
    assert await claim(backend, action_type="slow", now_ms=T0 + 9500) == Limited(81)
    assert await claim(backend, action_type="other", now_ms=T0 + 9500) == Limited(51)


async def test_a_refused_claim_records_nothing(backend: RedisBackend) -> None:
    assert await claim(backend, cooldown_ms=5000) == Accepted()
    assert await claim(backend, nonce="refused-1", cooldown_ms=5000, now_ms=T0 + 1000) == Limited(4)
    # The refused nonce is not claimed and the refused action is in no window.
    later = uuid.uuid4()
    assert await claim(backend, nonce="refused-1", action_id=later, now_ms=T0 + 6000) == Accepted()
    assert await claim(backend, nonce="refused-1") == Replayed(later, PUBLISHING)
    for n in range(8):
        assert await claim(backend, action_type=f"t{n}", now_ms=T0 + 7000 + n) == Accepted()
    assert await claim(backend, action_type="last", now_ms=T0 + 8000) == Limited(52)


async def test_replay_is_answered_even_when_limited(backend: RedisBackend) -> None:
    first = uuid.uuid4()
    assert await claim(backend, nonce="first-nonce", action_id=first, user_limit=1) == Accepted()
    assert await claim(backend, user_limit=1, now_ms=T0 + 1) == Limited(60)
    got = await claim(backend, nonce="first-nonce", user_limit=1, now_ms=T0 + 2)
    assert got == Replayed(first, PUBLISHING)


async def test_limits_disabled_admits_everything_but_still_replays(backend: RedisBackend) -> None:
    first = uuid.uuid4()
    for n in range(30):
        got = await claim(
            backend,
            nonce=f"nonce-{n:04d}",
            action_id=first if n == 0 else None,
            cooldown_ms=5000,
            user_limit=1,
            ip_limit=1,
            limits_enabled=False,
        )
        assert got == Accepted()
    got = await claim(backend, nonce="nonce-0000", limits_enabled=False)
    assert got == Replayed(first, PUBLISHING)


async def test_release_undoes_a_claim(backend: RedisBackend) -> None:
    action_id, retry = uuid.uuid4(), uuid.uuid4()
    got = await claim(
        backend, nonce="failed-publish", action_id=action_id, cooldown_ms=5000, user_limit=1
    )
    assert got == Accepted()
    await backend.guard.release(
        user_id=1, nonce="failed-publish", action_id=action_id, action_type="complete_task"
    )
    got = await claim(
        backend,
        nonce="failed-publish",
        action_id=retry,
        cooldown_ms=5000,
        user_limit=1,
        now_ms=T0 + 1,
    )
    assert got == Accepted()
    # Releasing an action that is no longer the holder leaves the new claim alone.
    await backend.guard.release(
        user_id=1, nonce="failed-publish", action_id=action_id, action_type="complete_task"
    )
    assert await claim(backend, nonce="failed-publish") == Replayed(retry, PUBLISHING)
    assert await claim(backend, cooldown_ms=5000, user_limit=5, now_ms=T0 + 2) == Limited(5)


async def test_a_queued_or_unknown_claim_is_never_released(backend: RedisBackend) -> None:
    queued, unknown = uuid.uuid4(), uuid.uuid4()
    for nonce, action_id in (("queued-1", queued), ("unknown-1", unknown)):
        assert await claim(backend, nonce=nonce, action_id=action_id) == Accepted()
    await backend.guard.mark_queued([(1, "queued-1", queued)])
    await backend.guard.mark_outcome_unknown(user_id=1, nonce="unknown-1", action_id=unknown)
    assert await claim(backend, nonce="unknown-1") == Replayed(unknown, OUTCOME_UNKNOWN)
    for nonce, action_id in (("queued-1", queued), ("unknown-1", unknown)):
        await backend.guard.release(
            user_id=1, nonce=nonce, action_id=action_id, action_type="complete_task"
        )
    assert await claim(backend, nonce="queued-1") == Replayed(queued, 202)
    assert await claim(backend, nonce="unknown-1") == Replayed(unknown, OUTCOME_UNKNOWN)
    # Unknown only replaces publishing: a later confirm (a replay's) is not undone.
    await backend.guard.mark_queued([(1, "unknown-1", unknown)])
    await backend.guard.mark_outcome_unknown(user_id=1, nonce="unknown-1", action_id=unknown)
    assert await claim(backend, nonce="unknown-1") == Replayed(unknown, 202)


async def test_marking_queued_binds_a_released_nonce_and_spares_others(
    backend: RedisBackend,
) -> None:
    released, other, answered = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    assert await claim(backend, nonce="released-1", action_id=released) == Accepted()
    await backend.guard.release(
        user_id=1, nonce="released-1", action_id=released, action_type="complete_task"
    )
    assert await claim(backend, nonce="other-01", action_id=other) == Accepted()
    assert await claim(backend, nonce="answered-1", action_id=answered) == Accepted()
    await backend.guard.set_first_status(user_id=1, nonce="answered-1", status_code=200)
    await backend.guard.mark_queued(
        [(1, "released-1", released), (1, "other-01", uuid.uuid4()), (1, "answered-1", answered)]
    )
    # A replay published the released action after all: its nonce is bound to it again.
    assert await claim(backend, nonce="released-1") == Replayed(released, 202)
    assert await claim(backend, nonce="other-01") == Replayed(other, PUBLISHING)
    assert await claim(backend, nonce="answered-1") == Replayed(answered, 200)
    await backend.guard.mark_queued([])


async def test_a_claimed_action_is_pending_until_released(backend: RedisBackend) -> None:
    action_id = uuid.uuid4()
    assert await backend.guard.pending_action(action_id) is None
    await claim(backend, user_id=7, nonce="pending-1", action_id=action_id, now_ms=T0 + 5)
    assert await backend.guard.pending_action(action_id) == PendingAction(
        user_id=7, action_type="complete_task", nonce="pending-1", created_at_ms=T0 + 5
    )
    # A replay or a refusal claims nothing.
    assert await claim(backend, user_id=7, nonce="pending-1", action_id=(other := uuid.uuid4()))
    assert await backend.guard.pending_action(other) is None
    await backend.guard.release(
        user_id=7, nonce="pending-1", action_id=action_id, action_type="complete_task"
    )
    assert await backend.guard.pending_action(action_id) is None


async def test_a_timeout_in_the_middle_of_a_call_leaves_the_pool_usable(
    backend: RedisBackend, raw: redis.Redis
) -> None:
    await backend.board.rebuild([entry(1, 10, T0), entry(2, 20, T0)])
    busy = raw.register_script(BUSY_SCRIPT)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.to_thread.run_sync, lambda: busy(args=[500_000]))
        await trio.sleep(0.1)  # the server is inside the busy script now
        with pytest.raises(trio.TooSlowError), trio.fail_after(0.1):
            await claim(backend, nonce="cancelled-1")
        with pytest.raises(trio.TooSlowError), trio.fail_after(0.1):
            await backend.board.top(10)
    # Replies to the cancelled calls must never reach later calls.
    with trio.fail_after(5):
        top, _ = await backend.board.top(10)
        assert top == [ranked(1, 2, 20), ranked(2, 1, 10)]
        assert await claim(backend, nonce="after-timeout") == Accepted()
        await backend.board.ping()


async def test_remove_takes_users_off_and_a_missing_board_answers_false(
    backend: RedisBackend,
) -> None:
    board = backend.board
    assert await board.remove([1]) is False
    await board.rebuild([entry(1, 30, T0), entry(2, 20, T0), entry(3, 10, T0)])
    assert await board.remove([2, 99]) is True
    assert await board.scores() == {1: 30, 3: 10}
    top, _updated_at = await board.top(10)
    assert [e.user_id for e in top] == [1, 3]
    assert await board.around(2, 5) is None
    # The board stays whole: the next write applies (an incomplete board would answer None).
    assert await board.apply([entry(2, 25, T0 + 1)], top_n=10) is not None
    assert await board.scores() == {1: 30, 2: 25, 3: 10}


def test_the_board_keys_share_one_cluster_slot() -> None:
    """Every board script uses several of these keys (and the rebuild its temporary copies,
    named after them): Redis Cluster runs a script only when all its keys are in one slot."""
    keys = [*board_keys("sb:"), *(f"{key}:rebuild:0123abcd" for key in board_keys("sb:")[:3])]
    assert len({key_slot(key.encode()) for key in keys}) == 1


async def test_the_edge_guard_keys_of_one_script_share_one_cluster_slot(
    backend: RedisBackend, raw: redis.Redis, redis_prefix: str
) -> None:
    """What each script touches, written for real, lands in the slots of the tags `{edge}`
    (claims, releases, nonces) and `{auth}` (sign-in attempts and failures) only."""
    await claim(backend, user_id=7, cooldown_ms=60_000)
    await claim(backend, user_id=8, ip="2001:db8::1", cooldown_ms=60_000)
    await backend.guard.count_attempts([("signin:user:x", 5), ("signin:ip:y", 5)], now_ms=T0)
    await backend.guard.admit_after_failures(
        "login:x:ip",
        now_ms=T0,
        delay=FailureDelay(free_failures=1, max_delay_ms=60_000, forget_after_ms=60_000),
    )
    slots: dict[str, set[int]] = {}
    for key in raw.scan_iter(match=f"{redis_prefix}*"):
        tag = key[key.index("{") : key.index("}") + 1]
        slots.setdefault(tag, set()).add(key_slot(key.encode()))
    assert slots.keys() == {"{edge}", "{auth}"}
    assert all(len(found) == 1 for found in slots.values())
