"""Redis behind the `Board` and `EdgeGuard` protocols (redis.asyncio on the bridge loop).

Every protocol method is one bridge crossing and, where it reads or writes more than one key,
one Lua script, so that several API and worker processes see each step as atomic. The two
scripts every request runs (the claim, the request count) are the exception: concurrent calls
share one crossing and one pipeline (`redis_batch.py`), each still its own atomic script.

Key layout, all under `RedisConfig.prefix` (`P`):

- `P{board}`           sorted set: score, member `"{MAX_MS - reached_ms:013d}:{user_id}"`
- `P{board}:member`    hash user_id -> that member (to find and replace a user's entry)
- `P{board}:name`      hash user_id -> username
- `P{board}:meta`      hash `updated_at` -> ms; its presence says "the board was built"

The board's keys carry the hash tag `{board}`, so that they share one Redis Cluster slot and its
scripts run on a cluster. A board written by an older version under `P board` is left behind
(delete it at leisure): the new keys start missing and are rebuilt from PostgreSQL.

Writes are conditional: `apply` never replaces a score with a lower one, or with the same one
reached no earlier (scores only grow in PostgreSQL), and the keeper swaps a rebuilt board in only
while the board is missing; when another worker rebuilt it meanwhile, the keeper applies its
entries instead, so its older read never overwrites a newer score.
- `P{edge}:nonce:{user}:{nonce}`   "{action_id} {status}", 24 h; the status is how the first
                                  request was answered, or `PUBLISHING` / `OUTCOME_UNKNOWN`
- `P{edge}:limit:ip:{ip}`         sorted set of action ids by claim time (60 s sliding window)
- `P{edge}:limit:user:{user}`     the same per user
- `P{edge}:cooldown:{user}:{type}` "{until_ms} {action_id}"
- `P{edge}:action:{action_id}`    hash of a claimed action (`pending_action`), lives as its nonce
- `P{auth}:attempts:{key}`        sorted set of attempt ids by time (sign-in, token, registration)
- `P{auth}:failures:{key}`        hash `count`, `last` (ms): failed sign-ins per username and IP

Redis Cluster runs a script only when its keys share one slot, so the keys carry hash tags:
`{board}`, `{edge}` and `{auth}`, each a slot of its own. A claim checks a user's nonce, window
and cooldown and an address's window at once; that atomicity is worth more than spreading the
edge guard over the cluster's nodes (each tag's keys live on one node, which serves hundreds of
thousands of these scripts a second).

Equal scores must rank by who reached the score first, and Redis orders equal scores by member
bytes; ZREVRANGE reverses that order too, so the member starts with the reach time subtracted
from a constant, fixed width: the earlier reach gives the larger prefix and ranks higher.
"""

from __future__ import annotations

import contextlib
import math
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import redis.asyncio
import redis.exceptions
import trio
from redis.typing import EncodableT

from scoreboard.adapters import redis_batch
from scoreboard.adapters.interfaces import (
    FAILURE_DELAY_BASE_MS,
    FAILURE_DELAY_MAX_DOUBLINGS,
    OUTCOME_UNKNOWN,
    PUBLISHING,
    Accepted,
    BoardMissing,
    Claim,
    FailureDelay,
    Limited,
    MeView,
    PendingAction,
    Replayed,
    RequestCount,
)
from scoreboard.bridge import Bridge, Crossing
from scoreboard.config import RedisConfig
from scoreboard.records import BoardEntry, RankChange, RankedEntry

T = TypeVar("T")

MAX_MS = 10**13 - 1  # 13 digits of milliseconds last until the year 2286
REACH_DIGITS = 13
LIMIT_WINDOW_MS = 60_000
NONCE_TTL_MS = 24 * 3600 * 1000
ACCEPTED_STATUS = 202
REBUILD_CHUNK = 1000
# Temporary rebuild keys expire on their own if the process dies before the final RENAME.
REBUILD_TTL_MS = 3600 * 1000
CONNECT_TIMEOUT_S = 5.0
TRANSPORT_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


def board_keys(prefix: str) -> tuple[str, str, str, str]:
    """The board's sorted set, member hash, name hash and meta hash. The hash tag `{board}` puts
    them (and the rebuild's temporary keys, named after them) in one Redis Cluster slot, so that
    the scripts using several of them run on a cluster."""
    board = f"{prefix}{{board}}"
    return board, f"{board}:member", f"{board}:name", f"{board}:meta"


def edge_prefixes(prefix: str) -> tuple[str, str]:
    """Where the edge guard's keys start: nonces, rate-limit windows, cooldowns and claimed
    actions under the hash tag `{edge}`, sign-in attempts and failures under `{auth}`. A claim
    checks a user's keys and an address's window in one script, so they must share a slot."""
    return f"{prefix}{{edge}}:", f"{prefix}{{auth}}:"


def board_member(entry: BoardEntry) -> str:
    """The sorted-set member of an entry: reversed reach time, then the user id."""
    return f"{MAX_MS - entry.score_reached_at_ms:0{REACH_DIGITS}d}:{entry.user_id}"


def _user_of_member(member: str) -> int:
    return int(member[REACH_DIGITS + 1 :])


# Shared Lua: the entries of ranks [start, stop] (0-based) as {member, score, name, ...}.
_RANGE_WITH_NAMES = """
local function range_with_names(board, names, start, stop)
  local flat = redis.call('ZREVRANGE', board, start, stop, 'WITHSCORES')
  local out = {}
  for i = 1, #flat, 2 do
    local user = string.match(flat[i], ':(.*)$')
    out[#out + 1] = flat[i]
    out[#out + 1] = flat[i + 1]
    out[#out + 1] = redis.call('HGET', names, user) or ''
  end
  return out
end
"""

# KEYS: board, member hash, name hash, meta. ARGV: top_n, then per entry: user_id, score,
# member, username. Answers nil when the board was never built (or lost part of itself), else
# {{user, old rank or -1, new rank}..., top entries}. Ranks are 0-based here.
_APPLY = (
    _RANGE_WITH_NAMES
    + """
if redis.call('EXISTS', KEYS[4]) == 0
   or redis.call('ZCARD', KEYS[1]) ~= redis.call('HLEN', KEYS[2]) then
  return false
end
local users, old_ranks = {}, {}
for i = 2, #ARGV, 4 do
  local user = ARGV[i]
  if old_ranks[user] == nil then
    users[#users + 1] = user
    local member = redis.call('HGET', KEYS[2], user)
    old_ranks[user] = member and redis.call('ZREVRANK', KEYS[1], member) or -1
  end
end
local changed = false
for i = 2, #ARGV, 4 do
  local user, score, member = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  local old_member = redis.call('HGET', KEYS[2], user)
  local old_score = old_member and redis.call('ZSCORE', KEYS[1], old_member)
  local stale = false
  if old_score then
    -- Postgres scores only grow; a lower score, or the same one reached no earlier, is old news.
    old_score = tonumber(old_score)
    local reach_key = tonumber(string.match(member, '^%d+'))
    local old_reach_key = tonumber(string.match(old_member, '^%d+'))
    stale = score < old_score or (score == old_score and reach_key <= old_reach_key)
  end
  if not stale then
    if old_member then redis.call('ZREM', KEYS[1], old_member) end
    -- The score as sent: a Lua number would be formatted with 14 significant digits.
    redis.call('ZADD', KEYS[1], ARGV[i + 1], member)
    redis.call('HSET', KEYS[2], user, member)
    redis.call('HSET', KEYS[3], user, ARGV[i + 3])
    changed = true
  end
end
if changed then
  local now = redis.call('TIME')
  redis.call('HSET', KEYS[4], 'updated_at', now[1] * 1000 + math.floor(now[2] / 1000))
end
local changes = {}
for _, user in ipairs(users) do
  local rank = redis.call('ZREVRANK', KEYS[1], redis.call('HGET', KEYS[2], user))
  changes[#changes + 1] = {user, old_ranks[user], rank}
end
local top_n = tonumber(ARGV[1])
local top = {}
if top_n > 0 then top = range_with_names(KEYS[1], KEYS[3], 0, top_n - 1) end
return {changes, top}
"""
)

# KEYS: board, member hash, name hash, meta. ARGV: user ids. Answers false when the board is
# missing, else true.
_REMOVE = """
if redis.call('EXISTS', KEYS[4]) == 0 then
  return false
end
local changed = false
for _, user in ipairs(ARGV) do
  local member = redis.call('HGET', KEYS[2], user)
  if member then
    redis.call('ZREM', KEYS[1], member)
    redis.call('HDEL', KEYS[2], user)
    redis.call('HDEL', KEYS[3], user)
    changed = true
  end
end
if changed then
  local now = redis.call('TIME')
  redis.call('HSET', KEYS[4], 'updated_at', now[1] * 1000 + math.floor(now[2] / 1000))
end
return true
"""

# KEYS: temporary board, member hash, name hash; board, member hash, name hash, meta.
# ARGV: "1" when the temporary keys hold entries; "1" to swap only if the board is missing.
# Swaps the new board in as one step; answers whether it did.
_SWAP_IN = """
if ARGV[2] == '1' and redis.call('EXISTS', KEYS[7]) == 1 then
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
  return false
end
for i = 1, 3 do
  if ARGV[1] == '1' then
    redis.call('RENAME', KEYS[i], KEYS[i + 3])
    redis.call('PERSIST', KEYS[i + 3])
  else
    redis.call('DEL', KEYS[i + 3])
  end
end
local now = redis.call('TIME')
redis.call('HSET', KEYS[7], 'updated_at', now[1] * 1000 + math.floor(now[2] / 1000))
return true
"""

# KEYS: board, name hash, meta. ARGV: limit. Answers {updated_at, entries}; updated_at is 0 when
# the board is missing (the meta key is written with every build and update).
_TOP = (
    _RANGE_WITH_NAMES
    + """
local updated_at = tonumber(redis.call('HGET', KEYS[3], 'updated_at') or '0')
local limit = tonumber(ARGV[1])
if limit <= 0 then return {updated_at, {}} end
return {updated_at, range_with_names(KEYS[1], KEYS[2], 0, limit - 1)}
"""
)

# KEYS: board, member hash, name hash, meta. ARGV: user_id, radius. Answers 'missing' when the
# board is, nil when the user is not on it, else {first rank, user's rank, entries}.
_AROUND = (
    _RANGE_WITH_NAMES
    + """
if redis.call('EXISTS', KEYS[4]) == 0 then return 'missing' end
local member = redis.call('HGET', KEYS[2], ARGV[1])
local rank = member and redis.call('ZREVRANK', KEYS[1], member)
if not rank then return false end
local first = math.max(0, rank - tonumber(ARGV[2]))
return {first, rank, range_with_names(KEYS[1], KEYS[3], first, rank + tonumber(ARGV[2]))}
"""
)

# KEYS: nonce, IP window, user window, cooldown, pending action.
# ARGV: action_id, now_ms, cooldown_ms, user limit, IP limit, limits enabled ("1"/"0"),
# window ms, the nonce's value, the nonce's lifetime ms, user_id, action_type, nonce.
# Answers {"replayed", stored value}, {"limited", wait ms} or {"accepted"}.
_CLAIM = """
local known = redis.call('GET', KEYS[1])
if known then return {'replayed', known} end
local action_id, now = ARGV[1], tonumber(ARGV[2])
if ARGV[6] == '1' then
  local window, wait = tonumber(ARGV[7]), 0
  -- How long until `key`'s sliding window has room for one more, 0 when it has room now.
  local function window_wait(key, limit)
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
    local count = redis.call('ZCARD', key)
    if count < limit then return 0 end
    local leaving = redis.call('ZRANGE', key, count - limit, count - limit, 'WITHSCORES')
    return tonumber(leaving[2]) + window - now
  end
  wait = math.max(window_wait(KEYS[2], tonumber(ARGV[5])),
                  window_wait(KEYS[3], tonumber(ARGV[4])))
  local cooldown = redis.call('GET', KEYS[4])
  if cooldown then
    wait = math.max(wait, tonumber(string.match(cooldown, '^%d+')) - now)
  end
  if wait > 0 then return {'limited', wait} end
  for key = 2, 3 do
    redis.call('ZADD', KEYS[key], now, action_id)
    redis.call('PEXPIRE', KEYS[key], window)
  end
  local cooldown_ms = tonumber(ARGV[3])
  if cooldown_ms > 0 then
    redis.call('SET', KEYS[4], (now + cooldown_ms) .. ' ' .. action_id, 'PX', cooldown_ms)
  end
end
redis.call('SET', KEYS[1], ARGV[8], 'PX', ARGV[9])
redis.call('HSET', KEYS[5], 'user_id', ARGV[10], 'action_type', ARGV[11], 'nonce', ARGV[12],
           'created_at_ms', ARGV[2])
redis.call('PEXPIRE', KEYS[5], ARGV[9])
return {'accepted'}
"""

# KEYS: nonce, user window, cooldown, pending action. ARGV: action_id, the PUBLISHING status.
# Undoes what the claim of this action recorded, and nothing that a later claim did; nothing at
# all once a replay got the action queued (the nonce is no longer publishing).
# The IP window keeps the entry: the request was made, and the IP limit counts requests.
_RELEASE = """
local action_id = ARGV[1]
local nonce = redis.call('GET', KEYS[1])
if nonce and string.sub(nonce, 1, #action_id) == action_id then
  if nonce ~= action_id .. ' ' .. ARGV[2] then return false end
  redis.call('DEL', KEYS[1])
end
redis.call('ZREM', KEYS[2], action_id)
local cooldown = redis.call('GET', KEYS[3])
if cooldown and string.sub(cooldown, -#action_id) == action_id then redis.call('DEL', KEYS[3]) end
redis.call('DEL', KEYS[4])
return true
"""

# KEYS: nonce. ARGV: status code. Keeps the action id and the nonce's remaining lifetime.
_SET_FIRST_STATUS = """
local known = redis.call('GET', KEYS[1])
if not known then return false end
redis.call('SET', KEYS[1], string.match(known, '^%S+') .. ' ' .. ARGV[1], 'KEEPTTL')
return true
"""

# KEYS: nonces. ARGV: the nonce lifetime ms, the accepted status, the statuses it replaces, then
# each nonce's action id. A nonce of that action still publishing (or unknown) becomes accepted;
# a missing one (released while a replay republished the action) is bound to it again.
_MARK_QUEUED = """
for i, key in ipairs(KEYS) do
  local action_id = ARGV[i + 4]
  local accepted = action_id .. ' ' .. ARGV[2]
  local known = redis.call('GET', key)
  if not known then
    redis.call('SET', key, accepted, 'PX', ARGV[1])
  elseif known == action_id .. ' ' .. ARGV[3] or known == action_id .. ' ' .. ARGV[4] then
    redis.call('SET', key, accepted, 'KEEPTTL')
  end
end
return true
"""

# KEYS: nonce. ARGV: action id, the publishing status, the unknown status.
_MARK_OUTCOME_UNKNOWN = """
if redis.call('GET', KEYS[1]) == ARGV[1] .. ' ' .. ARGV[2] then
  redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. ARGV[3], 'KEEPTTL')
end
return true
"""

# KEYS: the attempt windows. ARGV: now_ms, window ms, a unique member for this attempt, then
# each window's limit, in the order of KEYS. Answers 0 (counted in every window) or the ms until
# every window has room (nothing counted anywhere).
_COUNT_ATTEMPTS = """
local now, window, member = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local wait = 0
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[3 + i])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  local count = redis.call('ZCARD', key)
  if count >= limit then
    local leaving = redis.call('ZRANGE', key, count - limit, count - limit, 'WITHSCORES')
    wait = math.max(wait, tonumber(leaving[2]) + window - now, 1)
  end
end
if wait > 0 then return wait end
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, now, member)
  redis.call('PEXPIRE', key, window)
end
return 0
"""

# KEYS: the request window. ARGV: now_ms, window ms, a unique member for this request, the
# limit. Answers {1, remaining, ms until the oldest request leaves} (counted) or
# {0, 0, ms until the window has room} (nothing counted).
_COUNT_REQUEST = """
local now, window, limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
if count >= limit then
  local leaving = redis.call('ZRANGE', KEYS[1], count - limit, count - limit, 'WITHSCORES')
  return {0, 0, math.max(tonumber(leaving[2]) + window - now, 1)}
end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('PEXPIRE', KEYS[1], window)
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {1, limit - count - 1, tonumber(oldest[2]) + window - now}
"""

# KEYS: a failures hash {count, last}. ARGV: now_ms, free failures, base delay ms, max delay ms,
# max doublings, forget-after ms. Answers 0 (admitted, and recorded as one more failure) or the
# ms to wait (nothing recorded). The arithmetic is `FailureDelay.wait_ms`.
_ADMIT_AFTER_FAILURES = """
local now = tonumber(ARGV[1])
local free, base, max_delay = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local count = tonumber(redis.call('HGET', KEYS[1], 'count') or '0')
if count >= free then
  local last = tonumber(redis.call('HGET', KEYS[1], 'last'))
  local delay = math.min(base * 2 ^ math.min(count - free, tonumber(ARGV[5])), max_delay)
  local wait = last + delay - now
  if wait > 0 then return wait end
end
redis.call('HSET', KEYS[1], 'count', count + 1, 'last', now)
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return 0
"""


def _ranked(flat: Sequence[Any], first_rank: int) -> list[RankedEntry]:
    """Entries from `range_with_names`; `first_rank` is the 1-based rank of the first."""
    return [
        RankedEntry(
            rank=first_rank + i,
            user_id=_user_of_member(flat[3 * i]),
            username=flat[3 * i + 2],
            score=int(float(flat[3 * i + 1])),
        )
        for i in range(len(flat) // 3)
    ]


class _RedisAdapter:
    """The shared part: one client on the bridge loop, errors mapped to `BackendUnavailable`."""

    def __init__(self, bridge: Bridge, client: redis.asyncio.Redis, prefix: str):
        self._run = Crossing(bridge, "redis", TRANSPORT_ERRORS)
        self._client = client
        self._prefix = prefix

    async def ping(self) -> None:
        await self._run(self._client.ping)


class RedisBoard(_RedisAdapter):
    """The leaderboard cache: a sorted set rebuilt from Postgres whenever it is missing."""

    def __init__(self, bridge: Bridge, client: redis.asyncio.Redis, prefix: str):
        super().__init__(bridge, client, prefix)
        self._board, self._members, self._names, self._meta = board_keys(prefix)
        self._apply_script = client.register_script(_APPLY)
        self._swap_in_script = client.register_script(_SWAP_IN)
        self._remove_script = client.register_script(_REMOVE)
        self._top_script = client.register_script(_TOP)
        self._around_script = client.register_script(_AROUND)

    async def apply(
        self, entries: Sequence[BoardEntry], top_n: int
    ) -> tuple[list[RankChange], list[RankedEntry]] | None:
        """Set absolute scores in one script; one `RankChange` per distinct user, in order of
        first appearance, with the rank before the batch and the rank after it."""
        args: list[str | int] = [top_n]
        for entry in entries:
            args += [entry.user_id, entry.score, board_member(entry), entry.username]
        keys = [self._board, self._members, self._names, self._meta]
        reply = await self._run(self._apply_script, keys, args)
        if reply is None:
            return None
        raw_changes, top = reply
        changes = [
            RankChange(user_id=int(user), old_rank=old + 1 if old >= 0 else None, new_rank=new + 1)
            for user, old, new in raw_changes
        ]
        return changes, _ranked(top, 1)

    async def remove(self, user_ids: Sequence[int]) -> bool:
        keys = [self._board, self._members, self._names, self._meta]
        return bool(await self._run(self._remove_script, keys, list(user_ids)))

    async def rebuild(self, entries: Sequence[BoardEntry]) -> None:
        await self._run(self._rebuild, list(entries), False)

    async def rebuild_if_missing(self, entries: Sequence[BoardEntry]) -> bool:
        return await self._run(self._rebuild, list(entries), True)

    async def _rebuild(self, entries: list[BoardEntry], only_if_missing: bool) -> bool:
        tag = uuid.uuid4().hex
        temporary = [f"{key}:rebuild:{tag}" for key in (self._board, self._members, self._names)]
        try:
            for start in range(0, len(entries), REBUILD_CHUNK):
                chunk = entries[start : start + REBUILD_CHUNK]
                scores: dict[str, EncodableT] = {}
                members: dict[EncodableT, EncodableT] = {}
                names: dict[EncodableT, EncodableT] = {}
                for entry in chunk:
                    member = board_member(entry)
                    scores[member] = entry.score
                    members[entry.user_id] = member
                    names[entry.user_id] = entry.username
                async with self._client.pipeline(transaction=False) as pipe:
                    pipe.zadd(temporary[0], scores)
                    pipe.hset(temporary[1], mapping=members)
                    pipe.hset(temporary[2], mapping=names)
                    for key in temporary:
                        pipe.pexpire(key, REBUILD_TTL_MS)
                    await pipe.execute()
            keys = [*temporary, self._board, self._members, self._names, self._meta]
            args = ["1" if entries else "0", "1" if only_if_missing else "0"]
            return bool(await self._swap_in_script(keys, args))
        except BaseException:
            # Drop the partial build now rather than leaving it to the TTL.
            with contextlib.suppress(*TRANSPORT_ERRORS):
                await self._client.delete(*temporary)
            raise

    async def top(self, limit: int) -> tuple[list[RankedEntry], int]:
        updated_at, flat = await self._run(
            self._top_script, [self._board, self._names, self._meta], [limit]
        )
        if not updated_at:
            raise BoardMissing("redis: the board is missing")
        return _ranked(flat, 1), int(updated_at)

    async def around(self, user_id: int, radius: int) -> MeView | None:
        keys = [self._board, self._members, self._names, self._meta]
        reply = await self._run(self._around_script, keys, [user_id, radius])
        if reply == "missing":
            raise BoardMissing("redis: the board is missing")
        if reply is None:
            return None
        first, rank, flat = reply
        entries = _ranked(flat, first + 1)
        mine = rank - first
        return MeView(
            me=entries[mine], above=tuple(entries[:mine]), below=tuple(entries[mine + 1 :])
        )

    async def scores(self) -> dict[int, int]:
        return await self._run(self._scores)

    async def _scores(self) -> dict[int, int]:
        reply = await self._client.zrange(self._board, 0, -1, withscores=True)
        flat = cast(list[tuple[str, float]], reply)
        return {_user_of_member(member): int(score) for member, score in flat}


class RedisEdgeGuard(_RedisAdapter):
    """Nonce idempotency and rate limits, checked and recorded by one script per request. The
    scripts every request runs (`claim`, `count_request`) go through the batcher `scripts`
    (`redis_batch.py`): those of concurrent requests share a pipeline and a bridge crossing."""

    def __init__(
        self,
        bridge: Bridge,
        client: redis.asyncio.Redis,
        prefix: str,
        scripts: redis_batch.ScriptsHandle,
    ):
        super().__init__(bridge, client, prefix)
        self._scripts = scripts
        self._edge, self._auth = edge_prefixes(prefix)
        self._claim_script = client.register_script(_CLAIM)
        self._release_script = client.register_script(_RELEASE)
        self._set_first_status_script = client.register_script(_SET_FIRST_STATUS)
        self._count_attempts_script = client.register_script(_COUNT_ATTEMPTS)
        self._count_request_script = client.register_script(_COUNT_REQUEST)
        self._admit_after_failures_script = client.register_script(_ADMIT_AFTER_FAILURES)
        self._mark_queued_script = client.register_script(_MARK_QUEUED)
        self._mark_outcome_unknown_script = client.register_script(_MARK_OUTCOME_UNKNOWN)

    def _nonce_key(self, user_id: int, nonce: str) -> str:
        return f"{self._edge}nonce:{user_id}:{nonce}"

    def _user_window_key(self, user_id: int) -> str:
        return f"{self._edge}limit:user:{user_id}"

    def _cooldown_key(self, user_id: int, action_type: str) -> str:
        return f"{self._edge}cooldown:{user_id}:{action_type}"

    def _action_key(self, action_id: uuid.UUID) -> str:
        return f"{self._edge}action:{action_id}"

    async def claim(
        self,
        *,
        user_id: int,
        nonce: str,
        action_id: uuid.UUID,
        action_type: str,
        ip: str,
        now_ms: int,
        cooldown_ms: int,
        user_limit_per_minute: int,
        ip_limit_per_minute: int,
        limits_enabled: bool,
    ) -> Claim:
        if limits_enabled and min(user_limit_per_minute, ip_limit_per_minute) < 1:
            raise ValueError("rate limits must admit at least one action a minute")
        keys = [
            self._nonce_key(user_id, nonce),
            f"{self._edge}limit:ip:{ip}",
            self._user_window_key(user_id),
            self._cooldown_key(user_id, action_type),
            self._action_key(action_id),
        ]
        args: list[EncodableT] = [
            str(action_id),
            now_ms,
            cooldown_ms,
            user_limit_per_minute,
            ip_limit_per_minute,
            "1" if limits_enabled else "0",
            LIMIT_WINDOW_MS,
            f"{action_id} {PUBLISHING}",
            NONCE_TTL_MS,
            user_id,
            action_type,
            nonce,
        ]
        reply = await redis_batch.call(self._scripts, self._claim_script, keys, args)
        match reply:
            case ["replayed", known]:
                first_action_id, status_code = known.split(" ")
                return Replayed(uuid.UUID(first_action_id), int(status_code))
            case ["limited", wait_ms]:
                return Limited(max(1, math.ceil(int(wait_ms) / 1000)))
            case ["accepted"]:
                return Accepted()
        raise AssertionError(f"unexpected claim reply {reply!r}")

    async def release(
        self, *, user_id: int, nonce: str, action_id: uuid.UUID, action_type: str
    ) -> None:
        keys = [
            self._nonce_key(user_id, nonce),
            self._user_window_key(user_id),
            self._cooldown_key(user_id, action_type),
            self._action_key(action_id),
        ]
        await self._run(self._release_script, keys, [str(action_id), PUBLISHING])

    async def mark_queued(self, actions: Sequence[tuple[int, str, uuid.UUID]]) -> None:
        if not actions:
            return
        keys = [self._nonce_key(user_id, nonce) for user_id, nonce, _ in actions]
        args: list[str | int] = [NONCE_TTL_MS, ACCEPTED_STATUS, PUBLISHING, OUTCOME_UNKNOWN]
        args += [str(action_id) for _, _, action_id in actions]
        await self._run(self._mark_queued_script, keys, args)

    async def mark_outcome_unknown(self, *, user_id: int, nonce: str, action_id: uuid.UUID) -> None:
        await self._run(
            self._mark_outcome_unknown_script,
            [self._nonce_key(user_id, nonce)],
            [str(action_id), PUBLISHING, OUTCOME_UNKNOWN],
        )

    async def set_first_status(self, *, user_id: int, nonce: str, status_code: int) -> None:
        await self._run(
            self._set_first_status_script, [self._nonce_key(user_id, nonce)], [status_code]
        )

    async def pending_action(self, action_id: uuid.UUID) -> PendingAction | None:
        fields = await self._run(self._pending_action, action_id)
        if not fields:
            return None
        return PendingAction(
            user_id=int(fields["user_id"]),
            action_type=fields["action_type"],
            nonce=fields["nonce"],
            created_at_ms=int(fields["created_at_ms"]),
        )

    async def count_attempts(self, limits: Sequence[tuple[str, int]], *, now_ms: int) -> int:
        if any(limit < 1 for _key, limit in limits):
            raise ValueError("a limit must admit at least one attempt a minute")
        if not limits:
            return 0
        wait_ms = await self._run(
            self._count_attempts_script,
            [f"{self._auth}attempts:{key}" for key, _limit in limits],
            [now_ms, LIMIT_WINDOW_MS, uuid.uuid4().hex, *(limit for _key, limit in limits)],
        )
        return math.ceil(int(wait_ms) / 1000)

    async def count_request(self, key: str, limit: int, *, now_ms: int) -> RequestCount:
        if limit < 1:
            raise ValueError("a limit must admit at least one request a minute")
        admitted, remaining, reset_ms = await redis_batch.call(
            self._scripts,
            self._count_request_script,
            [f"{self._prefix}requests:{key}"],
            [now_ms, LIMIT_WINDOW_MS, uuid.uuid4().hex, limit],
        )
        return RequestCount(
            admitted=bool(int(admitted)),
            remaining=int(remaining),
            reset_s=max(1, math.ceil(int(reset_ms) / 1000)),
        )

    async def admit_after_failures(self, key: str, *, now_ms: int, delay: FailureDelay) -> int:
        wait_ms = await self._run(
            self._admit_after_failures_script,
            [self._failures_key(key)],
            [
                now_ms,
                delay.free_failures,
                FAILURE_DELAY_BASE_MS,
                delay.max_delay_ms,
                FAILURE_DELAY_MAX_DOUBLINGS,
                delay.forget_after_ms,
            ],
        )
        return math.ceil(int(wait_ms) / 1000)

    async def forget_failures(self, key: str) -> None:
        await self._run(self._client.delete, self._failures_key(key))

    def _failures_key(self, key: str) -> str:
        return f"{self._auth}failures:{key}"

    async def _pending_action(self, action_id: uuid.UUID) -> dict[str, str]:
        fields = await self._client.hgetall(self._action_key(action_id))
        return cast(dict[str, str], fields)


@dataclass(frozen=True, slots=True)
class RedisBackend:
    """Both Redis adapters, sharing one connection pool."""

    board: RedisBoard
    guard: RedisEdgeGuard


async def _connect(url: str) -> redis.asyncio.Redis:
    client = redis.asyncio.Redis.from_url(
        url, decode_responses=True, socket_connect_timeout=CONNECT_TIMEOUT_S
    )
    try:
        await client.ping()
    except BaseException:
        await client.aclose()
        raise
    return client


@asynccontextmanager
async def open_redis(bridge: Bridge, config: RedisConfig) -> AsyncIterator[RedisBackend]:
    """Connect (and check that Redis answers) and start the edge guard's batcher; on exit let
    the batcher finish the batches it sent, then close the pool, even when cancelled."""
    crossing = Crossing(bridge, "redis", TRANSPORT_ERRORS)
    client = await crossing(_connect, config.url)
    scripts, scripts_inbox = redis_batch.open_inbox()
    batcher_done = trio.Event()

    async def batcher() -> None:
        try:
            await redis_batch.run(scripts_inbox, crossing=crossing, client=client)
        finally:
            batcher_done.set()

    trio.lowlevel.spawn_system_task(batcher, name="redis-batcher")
    try:
        yield RedisBackend(
            board=RedisBoard(bridge, client, config.prefix),
            guard=RedisEdgeGuard(bridge, client, config.prefix, scripts),
        )
    finally:
        scripts.close()
        with trio.CancelScope(shield=True):
            await batcher_done.wait()  # each batch out ends within `BATCH_TIMEOUT_S`
            await bridge.run(client.aclose)
