"""`/api/v1/actions/*` against the real server: every malformed request of contract §2 with its
status and body, idempotency, the three rate limits, `Prefer: wait`, and the broker's 503."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import pytest
import trio

from scoreboard.config import Config
from scoreboard.server import ServerHandle, run_server
from tests.http.conftest import Player, action, issue_token, new_player

PERFORM = "/api/v1/actions/perform"
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
ACTION_FIELDS = {
    "action_id",
    "action_type",
    "status",
    "score_delta",
    "new_score",
    "error",
    "created_at",
    "processed_at",
}


def _b64json(value: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


def assert_invalid_request(response: httpx.Response, status: int = 400) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["success"] is False, body
    assert body["error"] == "invalid_request", body
    assert isinstance(body["message"], str), body
    assert body["message"], body
    assert set(body) == {"success", "error", "message"}, body


def assert_invalid_token(response: httpx.Response) -> None:
    assert response.status_code == 401, (response.status_code, response.text)
    assert response.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')
    body = response.json()
    assert body["success"] is False
    assert body["error"] == "invalid_token"


def assert_rate_limited(response: httpx.Response, max_retry_after: int) -> int:
    assert response.status_code == 429, (response.status_code, response.text)
    body = response.json()
    retry_after = body["retry_after"]
    assert body == {"success": False, "error": "rate_limit_exceeded", "retry_after": retry_after}
    assert isinstance(retry_after, int), body
    assert 1 <= retry_after <= max_retry_after, body
    assert response.headers["Retry-After"] == str(retry_after)
    return retry_after


def assert_accepted(response: httpx.Response, *, replayed: bool = False) -> str:
    assert response.status_code == 202, (response.status_code, response.text)
    body = response.json()
    action_id = body["action_id"]
    assert UUID_RE.match(action_id), body
    status = body["status"]
    assert body == {"success": True, "action_id": action_id, "status": status}
    assert response.headers["Location"] == f"/api/v1/actions/{action_id}"
    if replayed:
        # A replay answers with the first action's current status.
        assert status in ("accepted", "completed", "rejected", "failed"), body
        assert response.headers["Idempotent-Replayed"] == "true"
    else:
        assert status == "accepted", body
        assert "Idempotent-Replayed" not in response.headers
    return str(action_id)


def assert_rfc3339(value: Any) -> datetime:
    assert isinstance(value, str), value
    assert RFC3339.match(value), value
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def wait_for_status(
    client: httpx.AsyncClient, player: Player, action_id: str, status: str
) -> dict[str, Any]:
    with trio.fail_after(10):
        while True:
            response = await client.get(f"/api/v1/actions/{action_id}", headers=player.auth)
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            if body["status"] == status:
                return body
            assert body["status"] == "accepted", body
            await trio.sleep(0.02)


async def score_of(client: httpx.AsyncClient, player: Player) -> int:
    response = await client.get("/api/v1/leaderboard/me", headers=player.auth)
    assert response.status_code == 200, response.text
    score: int = response.json()["score"]
    return score


# Authentication and authorization


async def test_perform_without_a_usable_bearer_token_is_401(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    player = await new_player(client, server)
    body = action()
    assert_invalid_token(await client.post(PERFORM, json=body))
    assert_invalid_token(
        await client.post(PERFORM, json=body, headers={"Authorization": "Bearer not.a.jwt"})
    )
    assert_invalid_token(await client.post(PERFORM, json=body, headers={"Authorization": "Bearer"}))
    assert_invalid_token(
        await client.post(PERFORM, json=body, headers={"Authorization": f"Basic {player.token}"})
    )
    # A token signed by a key the server does not have (another server's keyring is not at
    # hand: flip a signature character instead).
    head, payload, signature = player.token.split(".")
    flipped = signature[:-2] + ("AA" if not signature.endswith("AA") else "BB")
    assert_invalid_token(
        await client.post(
            PERFORM, json=body, headers={"Authorization": f"Bearer {head}.{payload}.{flipped}"}
        )
    )
    # Forged headers whose parts the refusal may repeat: the WWW-Authenticate header stays
    # well-formed (RFC 6750 §3: no quote, backslash, control or non-ASCII character).
    for header in (
        {"alg": 'RS"256', "typ": "at+jwt", "kid": "k"},
        {"alg": "€", "typ": "at+jwt", "kid": "k"},
        {"alg": "RS256", "typ": 'a\\"\r\nSet-Cookie: x=1', "kid": "k"},
        {"alg": "RS256", "typ": "at+jwt", "kid": "k", 'x"\r\nX-Injected: 1': 1},
    ):
        forged = f"{_b64json(header)}.{_b64json({'sub': str(player.user_id)})}.c2ln"
        response = await client.post(
            PERFORM, json=body, headers={"Authorization": f"Bearer {forged}"}
        )
        assert_invalid_token(response)
        challenge = response.headers["WWW-Authenticate"]
        assert re.fullmatch(
            r'Bearer error="invalid_token", error_description="[\x20\x21\x23-\x5b\x5d-\x7e]*"',
            challenge,
        ), challenge
        assert "X-Injected" not in response.headers
        assert "Set-Cookie" not in response.headers
    # An expired token (well past the verifier's leeway).
    expired = issue_token(server, player.user_id, ttl_s=-120)
    assert_invalid_token(
        await client.post(PERFORM, json=body, headers={"Authorization": f"Bearer {expired}"})
    )
    # Tokens never travel in the URL: refused even when the header is there too.
    assert_invalid_token(await client.post(f"{PERFORM}?access_token={player.token}", json=body))
    assert_invalid_token(
        await client.post(f"{PERFORM}?access_token={player.token}", json=body, headers=player.auth)
    )
    # Nothing of this was an action: the nonce is still free.
    assert_accepted(await client.post(PERFORM, json=body, headers=player.auth))


async def test_a_revoked_token_is_refused_at_its_next_request(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    # The process keeps tokens it has verified; the deny-list is checked on every request.
    player = await new_player(client, server)
    assert_accepted(await client.post(PERFORM, json=action(), headers=player.auth))
    revoked = await client.post("/api/v1/oauth/revoke", data={"token": player.token})
    assert revoked.status_code == 200, revoked.text
    response = await client.post(PERFORM, json=action(), headers=player.auth)
    assert_invalid_token(response)
    assert "revoked" in response.json()["message"]


async def test_perform_with_a_read_only_token_is_403_insufficient_scope(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    player = await new_player(client, server, scope="read")
    response = await client.post(PERFORM, json=action(), headers=player.auth)
    assert response.status_code == 403, response.text
    body = response.json()
    assert body["success"] is False
    assert body["error"] == "insufficient_scope"
    assert response.headers["WWW-Authenticate"].startswith('Bearer error="insufficient_scope"')


# The body: media type, size, JSON


async def test_perform_with_a_body_that_is_not_json_is_415(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    player = await new_player(client, server)
    raw = httpx.Request("POST", "http://x", json=action()).content
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "application/xml"):
        response = await client.post(
            PERFORM, content=raw, headers={**player.auth, "Content-Type": content_type}
        )
        assert_invalid_request(response, 415)
    response = await client.post(PERFORM, content=raw, headers=player.auth)  # no Content-Type
    assert_invalid_request(response, 415)
    response = await client.post(PERFORM, data={"nonce": "abcdefgh"}, headers=player.auth)  # a form
    assert_invalid_request(response, 415)
    # With parameters the media type is still JSON.
    response = await client.post(
        PERFORM,
        content=raw,
        headers={**player.auth, "Content-Type": "application/json; charset=utf-8"},
    )
    assert_accepted(response)


async def test_perform_with_a_body_over_4_kib_is_413(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    player = await new_player(client, server)
    headers = {**player.auth, "Content-Type": "application/json"}
    body = action()

    def padded(size: int, body: dict[str, Any] = body) -> bytes:
        # Whitespace keeps the JSON valid: only the size is wrong.
        raw = httpx.Request("POST", "http://x", json=body).content
        return raw[:-1] + b" " * (size - len(raw)) + b"}"

    assert len(padded(4097)) == 4097
    response = await client.post(PERFORM, content=padded(4097), headers=headers)
    assert_invalid_request(response, 413)
    response = await client.post(PERFORM, content=padded(64 * 1024), headers=headers)
    assert_invalid_request(response, 413)

    async def chunked(data: bytes) -> AsyncIterator[bytes]:
        for start in range(0, len(data), 1000):
            yield data[start : start + 1000]

    # Without Content-Length (chunked transfer encoding) the cap still holds.
    request = client.build_request("POST", PERFORM, content=chunked(padded(8192)), headers=headers)
    assert "Content-Length" not in request.headers
    assert request.headers["Transfer-Encoding"] == "chunked"
    assert_invalid_request(await client.send(request), 413)
    # Exactly 4 KiB is allowed, with and without Content-Length.
    response = await client.post(PERFORM, content=padded(4096), headers=headers)
    assert_accepted(response)
    second = action(action_type="win_match")
    request = client.build_request(
        "POST", PERFORM, content=chunked(padded(4096, second)), headers=headers
    )
    assert_accepted(await client.send(request))


async def test_perform_with_a_body_that_is_not_an_action_is_400(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    player = await new_player(client, server)
    headers = {**player.auth, "Content-Type": "application/json"}
    for raw in (b"", b"{", b'{"nonce": "abcdefgh",}', b"\xff\xfe{}", b"nul", b"{'a': 1}", b"NaN"):
        assert_invalid_request(await client.post(PERFORM, content=raw, headers=headers))
    # Valid JSON that is not an object.
    # JSON is UTF-8 here; a valid action in UTF-16 is not accepted, nor NaN in a value.
    utf16 = json.dumps(action()).encode("utf-16")
    assert_invalid_request(await client.post(PERFORM, content=utf16, headers=headers))
    nan = json.dumps(action(action_type="collect_item", quantity=float("nan"))).encode()
    assert_invalid_request(await client.post(PERFORM, content=nan, headers=headers))
    infinite = json.dumps(action(action_type="collect_item", quantity=float("inf"))).encode()
    assert_invalid_request(await client.post(PERFORM, content=infinite, headers=headers))
    # A byte-order mark, a lone surrogate, an integer past 64 bits (it would decode as a float).
    bom = b"\xef\xbb\xbf" + json.dumps(action()).encode()
    assert_invalid_request(await client.post(PERFORM, content=bom, headers=headers))
    lone = json.dumps(action(task_id="\ud800")).encode()
    assert b"\\ud800" in lone
    assert_invalid_request(await client.post(PERFORM, content=lone, headers=headers))
    huge = json.dumps(action(action_type="collect_item", quantity=2**64)).encode()
    assert_invalid_request(await client.post(PERFORM, content=huge, headers=headers))
    # A repeated key keeps its last value, as the standard library reads it: the nonce below
    # is the valid second one, so the action is accepted, once.
    first, last = uuid.uuid4().hex, uuid.uuid4().hex
    login = action(nonce=first, action_type="daily_login")
    repeated = json.dumps(login)[:-1] + f', "nonce": "{last}"}}'
    accepted = await client.post(PERFORM, content=repeated.encode(), headers=headers)
    assert_accepted(accepted)
    replay = await client.post(PERFORM, json={**login, "nonce": last}, headers=player.auth)
    assert replay.json()["action_id"] == accepted.json()["action_id"]
    for raw in (b"[]", b"null", b"true", b"17", b'"complete_task"'):
        assert_invalid_request(await client.post(PERFORM, content=raw, headers=headers))
    assert_invalid_request(await client.post(PERFORM, json=[action()], headers=player.auth))
    good: dict[str, Any] = action()
    not_actions: list[dict[str, Any]] = [
        # The client never sends a score or a delta; nor any field the contract does not list.
        {**good, "score": 1000},
        {**good, "score_delta": 1000},
        {**good, "points": 10},
        {**good, "user_id": 1},
        {**good, "type": "action"},
        # Missing fields.
        {},
        {k: v for k, v in good.items() if k != "nonce"},
        {k: v for k, v in good.items() if k != "action_type"},
        {k: v for k, v in good.items() if k != "action_data"},
        # Bad nonces.
        {**good, "nonce": "a" * 7},
        {**good, "nonce": "a" * 65},
        {**good, "nonce": "abcdefg!"},
        {**good, "nonce": "abcd efgh"},
        {**good, "nonce": "abcdéfgh"},
        {**good, "nonce": "abcdefgh\n"},
        {**good, "nonce": ""},
        {**good, "nonce": 12345678},
        {**good, "nonce": None},
        # Unknown or malformed action types.
        {**good, "action_type": "hack_score"},
        {**good, "action_type": "Complete_Task"},
        {**good, "action_type": ""},
        {**good, "action_type": 1},
        {**good, "action_type": None},
        # Bad action data.
        {**good, "action_data": None},
        {**good, "action_data": []},
        {**good, "action_data": "t-1"},
        {**good, "action_data": {}},
        {**good, "action_data": {"task_id": "t-1"}},
        {**good, "action_data": {**good["action_data"], "points": 100}},
        {**good, "action_data": {**good["action_data"], "task_id": 17}},
        {**good, "action_data": {**good["action_data"], "task_id": ""}},
        {**good, "action_data": {**good["action_data"], "task_id": "x" * 201}},
        {**good, "action_data": {**good["action_data"], "completion_time": "now"}},
        {**good, "action_data": {**good["action_data"], "completion_time": 1.5}},
        {**good, "action_data": {**good["action_data"], "completion_time": True}},
        {**good, "action_data": {**good["action_data"], "completion_time": -1}},
        {**good, "action_data": {**good["action_data"], "completion_time": 2**31}},
        action(action_type="collect_item", quantity="1"),
        action(action_type="collect_item", quantity=None),
    ]
    for body in not_actions:
        response = await client.post(PERFORM, json=body, headers=player.auth)
        assert response.status_code == 400, body
        assert_invalid_request(response)
    # Order of checks: an unknown field is refused even with a nonce that is already taken.
    assert_accepted(await client.post(PERFORM, json=good, headers=player.auth))
    response = await client.post(PERFORM, json={**good, "score": 5}, headers=player.auth)
    assert_invalid_request(response)
    # None of the refusals touched a limit: the user limit (10) and the win_match cooldown
    # still admit an action.
    assert_accepted(
        await client.post(PERFORM, json=action(action_type="win_match"), headers=player.auth)
    )


# Acceptance, status, idempotency


async def test_an_accepted_action_is_202_and_its_status_progresses_to_completed(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    player = await new_player(client, server)
    before = time.time()
    response = await client.post(PERFORM, json=action(), headers=player.auth)
    action_id = assert_accepted(response)
    status = await client.get(response.headers["Location"], headers=player.auth)
    assert status.status_code == 200, status.text
    first = status.json()
    assert set(first) >= ACTION_FIELDS, first
    assert first["action_id"] == action_id
    assert first["action_type"] == "complete_task"
    assert first["status"] in ("accepted", "completed")
    created_at = assert_rfc3339(first["created_at"])
    assert before - 1 <= created_at.timestamp() <= time.time() + 1
    done = await wait_for_status(client, player, action_id, "completed")
    assert done["score_delta"] == 10
    assert done["new_score"] == 10
    assert done["error"] is None
    assert done["action_type"] == "complete_task"
    # created_at is the acceptance, pending or scored.
    assert done["created_at"] == first["created_at"]
    assert assert_rfc3339(done["processed_at"]) >= created_at
    assert await score_of(client, player) == 10


class TestWithoutAWorker:
    """An API-only server: accepted actions wait in the queue until a worker starts."""

    @pytest.fixture
    def app_config(self, config: Config) -> Config:
        return config.replace(websocket={"auth_timeout_s": 1.0}, server={"role": "api"})

    async def test_the_status_is_accepted_until_a_worker_scores_it(
        self,
        server: ServerHandle,
        client: httpx.AsyncClient,
        app_config: Config,
        nursery: trio.Nursery,
    ) -> None:
        player = await new_player(client, server)
        response = await client.post(PERFORM, json=action(), headers=player.auth)
        action_id = assert_accepted(response)
        # Prefer: wait answers 202 when the outcome is not ready in time.
        waited = await client.post(
            PERFORM,
            json=action(action_type="win_match"),
            headers={**player.auth, "Prefer": "wait=1"},
        )
        waited_id = assert_accepted(waited)
        pending = await client.get(f"/api/v1/actions/{action_id}", headers=player.auth)
        assert pending.status_code == 200, pending.text
        body = pending.json()
        assert body == {
            "action_id": action_id,
            "action_type": "complete_task",
            "status": "accepted",
            "score_delta": None,
            "new_score": None,
            "error": None,
            "created_at": body["created_at"],
            "processed_at": None,
        }
        assert_rfc3339(body["created_at"])
        other = await new_player(client, server)
        response = await client.get(f"/api/v1/actions/{action_id}", headers=other.auth)
        assert response.status_code == 404, response.text
        # A worker starts: the queued actions are scored.
        with trio.fail_after(60):
            await nursery.start(run_server, app_config.replace(server={"role": "worker"}))
        done = await wait_for_status(client, player, action_id, "completed")
        assert done["score_delta"] == 10
        assert (await wait_for_status(client, player, waited_id, "completed"))["new_score"] == 35


async def test_get_action_is_for_its_owner_only(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    owner = await new_player(client, server)
    other = await new_player(client, server)
    action_id = assert_accepted(await client.post(PERFORM, json=action(), headers=owner.auth))
    url = f"/api/v1/actions/{action_id}"
    # Another user's action does not exist for them, before and after it is scored.
    response = await client.get(url, headers=other.auth)
    assert response.status_code == 404, response.text
    assert response.json()["error"] == "not_found"
    await wait_for_status(client, owner, action_id, "completed")
    response = await client.get(url, headers=other.auth)
    assert response.status_code == 404, response.text
    assert response.json() == {"success": False, "error": "not_found", "message": "no such action"}
    # An unknown id.
    response = await client.get(f"/api/v1/actions/{uuid.uuid4()}", headers=owner.auth)
    assert response.status_code == 404, response.text
    # A malformed id.
    for bad in ("not-a-uuid", "1234", f"{action_id}0"):
        assert_invalid_request(await client.get(f"/api/v1/actions/{bad}", headers=owner.auth))
    # No token, or a token in the URL.
    assert_invalid_token(await client.get(url))
    assert_invalid_token(await client.get(f"{url}?access_token={owner.token}"))
    # A read-only token may read.
    reader = issue_token(server, owner.user_id, scope="read")
    response = await client.get(url, headers={"Authorization": f"Bearer {reader}"})
    assert response.status_code == 200
    assert response.json()["status"] == "completed"


async def test_a_replayed_nonce_answers_the_first_action(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    player = await new_player(client, server)
    other = await new_player(client, server)
    body = action()
    action_id = assert_accepted(await client.post(PERFORM, json=body, headers=player.auth))
    replay = await client.post(PERFORM, json=body, headers=player.auth)
    assert assert_accepted(replay, replayed=True) == action_id
    # The same nonce with other data is still the first action, never a second effect.
    changed = action(body["nonce"], action_type="win_match")  # type: ignore[arg-type]
    replay = await client.post(PERFORM, json=changed, headers=player.auth)
    assert assert_accepted(replay, replayed=True) == action_id
    # After scoring, the replay still answers 202 as the first did, with the current status.
    await wait_for_status(client, player, action_id, "completed")
    replay = await client.post(PERFORM, json=body, headers=player.auth)
    assert replay.status_code == 202, replay.text
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json()["action_id"] == action_id
    assert replay.headers["Location"] == f"/api/v1/actions/{action_id}"
    # Nonces are per user: another user's same nonce is a new action.
    assert assert_accepted(await client.post(PERFORM, json=body, headers=other.auth)) != action_id
    assert await score_of(client, player) == 10


async def test_prefer_wait_answers_200_with_the_outcome_and_a_replay_answers_the_same(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    player = await new_player(client, server)
    body = action()
    headers = {**player.auth, "Prefer": "wait=5"}
    response = await client.post(PERFORM, json=body, headers=headers)
    assert response.status_code == 200, response.text
    outcome = response.json()
    action_id = outcome["action_id"]
    assert UUID_RE.match(action_id)
    assert outcome == {
        "success": True,
        "action_id": action_id,
        "score_delta": 10,
        "new_score": 10,
        "message": outcome["message"],
    }
    assert isinstance(outcome["message"], str)
    assert outcome["message"]
    assert "Idempotent-Replayed" not in response.headers
    # A replay answers 200 like the first, with or without Prefer.
    for replay_headers in (headers, player.auth):
        replay = await client.post(PERFORM, json=body, headers=replay_headers)
        assert replay.status_code == 200, replay.text
        assert replay.headers["Idempotent-Replayed"] == "true"
        assert replay.json() == outcome
    # Other spellings of the preference (RFC 7240), and a wait beyond 10 s is capped.
    second = await client.post(
        PERFORM,
        json=action(action_type="win_match"),
        headers={**player.auth, "Prefer": 'respond-async, wait="30"'},
    )
    assert second.status_code == 200, second.text
    assert second.json()["new_score"] == 35
    assert await score_of(client, player) == 35


async def test_prefer_wait_with_an_action_the_worker_rejects_is_422_invalid_action(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    player = await new_player(client, server)
    body = action(completion_time=int(time.time()) + 3600)
    headers = {**player.auth, "Prefer": "wait=5"}
    response = await client.post(PERFORM, json=body, headers=headers)
    assert response.status_code == 422, response.text
    refusal = response.json()
    action_id = refusal["action_id"]
    assert refusal == {
        "success": False,
        "action_id": action_id,
        "error": "invalid_action",
        "message": refusal["message"],
    }
    assert "future" in refusal["message"]
    stored = await wait_for_status(client, player, action_id, "rejected")
    assert stored["error"] == "invalid_action"
    assert stored["score_delta"] == 0
    # The replay answers 422 like the first.
    replay = await client.post(PERFORM, json=body, headers=headers)
    assert replay.status_code == 422, replay.text
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json()["action_id"] == action_id
    assert replay.json()["error"] == "invalid_action"
    assert await score_of(client, player) == 0


# Rate limits


async def test_the_cooldown_is_429_with_retry_after(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    player = await new_player(client, server)
    assert_accepted(await client.post(PERFORM, json=action(), headers=player.auth))
    response = await client.post(PERFORM, json=action(), headers=player.auth)
    assert_rate_limited(response, 5)
    # Another type has its own cooldown.
    assert_accepted(
        await client.post(PERFORM, json=action(action_type="daily_login"), headers=player.auth)
    )


class TestUserLimit:
    @pytest.fixture
    def app_config(self, config: Config) -> Config:
        return config.replace(
            websocket={"auth_timeout_s": 1.0}, limits={"user_actions_per_minute": 3}
        )

    async def test_the_per_user_limit_is_429_and_a_replay_is_still_answered(
        self, server: ServerHandle, client: httpx.AsyncClient
    ) -> None:
        player = await new_player(client, server)
        first = action(action_type="complete_task")
        first_id = assert_accepted(await client.post(PERFORM, json=first, headers=player.auth))
        for action_type in ("win_match", "daily_login"):
            assert_accepted(
                await client.post(
                    PERFORM, json=action(action_type=action_type), headers=player.auth
                )
            )
        response = await client.post(
            PERFORM, json=action(action_type="collect_item"), headers=player.auth
        )
        assert_rate_limited(response, 60)
        # A replay is answered before any limit.
        replay = await client.post(PERFORM, json=first, headers=player.auth)
        assert assert_accepted(replay, replayed=True) == first_id
        # Another user is not limited by this one.
        other = await new_player(client, server)
        assert_accepted(await client.post(PERFORM, json=action(), headers=other.auth))


class TestIpLimit:
    @pytest.fixture
    def app_config(self, config: Config) -> Config:
        return config.replace(
            websocket={"auth_timeout_s": 1.0}, limits={"ip_requests_per_minute": 7}
        )

    async def test_every_api_request_of_an_address_counts_across_users(
        self, server: ServerHandle, client: httpx.AsyncClient
    ) -> None:
        players = [await new_player(client, server) for _ in range(4)]  # 4 requests
        first = action()
        response = await client.post(PERFORM, json=first, headers=players[0].auth)
        assert_accepted(response)
        assert response.headers["RateLimit-Policy"] == '"ip";q=7;w=60'
        assert response.headers["RateLimit"].startswith('"ip";r=2;t=')
        for player in players[1:3]:
            assert_accepted(await client.post(PERFORM, json=action(), headers=player.auth))
        response = await client.post(PERFORM, json=action(), headers=players[3].auth)
        assert_rate_limited(response, 60)
        assert response.headers["RateLimit"].startswith('"ip";r=0;t=')
        # Without trusted proxies, X-Forwarded-For is the client's word: not believed.
        response = await client.post(
            PERFORM,
            json=action(),
            headers={**players[3].auth, "X-Forwarded-For": "203.0.113.9"},
        )
        assert_rate_limited(response, 60)
        # Every endpoint of the API counts, a replay and a read too; health does not.
        assert_rate_limited(await client.post(PERFORM, json=first, headers=players[0].auth), 60)
        assert_rate_limited(await client.get("/api/v1/leaderboard"), 60)
        for path in ("/healthz", "/readyz"):
            response = await client.get(path)
            assert response.status_code == 200, response.text
            assert "RateLimit" not in response.headers

    async def test_refused_requests_count_too(
        self, server: ServerHandle, client: httpx.AsyncClient
    ) -> None:
        for _ in range(7):
            response = await client.post(PERFORM, json=action())  # no token: 401
            assert response.status_code == 401, response.text
        assert_rate_limited(await client.post(PERFORM, json=action()), 60)


class TestIpLimitBehindATrustedProxy:
    @pytest.fixture
    def app_config(self, config: Config) -> Config:
        return config.replace(
            websocket={"auth_timeout_s": 1.0},
            limits={"ip_requests_per_minute": 3},
            server={"trusted_proxies": ["127.0.0.1/32", "::1/128"]},
        )

    async def test_the_client_ip_is_the_last_untrusted_hop(
        self, server: ServerHandle, client: httpx.AsyncClient
    ) -> None:
        # The proxy's own address (no X-Forwarded-For) has its limit: three registrations.
        players = [await new_player(client, server) for _ in range(3)]
        assert_rate_limited(await client.get("/api/v1/leaderboard"), 60)

        def via(player: Player, forwarded: str) -> dict[str, str]:
            return {**player.auth, "X-Forwarded-For": forwarded}

        for _ in range(3):
            response = await client.get(
                "/api/v1/leaderboard", headers=via(players[0], "198.51.100.1")
            )
            assert response.status_code == 200, response.text
        # Another client behind the same proxy has its own limit.
        response = await client.post(
            PERFORM, json=action(), headers=via(players[1], "198.51.100.2")
        )
        assert_accepted(response)
        # A hop the client wrote itself before the real one changes nothing.
        response = await client.post(
            PERFORM, json=action(), headers=via(players[2], "192.0.2.77, 198.51.100.1")
        )
        assert_rate_limited(response, 60)


# The broker cannot confirm


def _delete_queue(config: Config) -> None:
    ctl = shutil.which("rabbitmqctl")
    assert ctl is not None, "rabbitmqctl is needed to delete the test's queue"
    vhost = unquote(urlsplit(config.amqp.url).path.lstrip("/")) or "/"
    subprocess.run(
        [ctl, "-q", "delete_queue", "-p", vhost, config.amqp.queue],
        check=True,
        capture_output=True,
        timeout=60,
    )


def _refuse_publishes(config: Config, refuse: bool) -> None:
    """A policy that makes the broker nack every publish to the test's queue (or lifts it)."""
    ctl = shutil.which("rabbitmqctl")
    assert ctl is not None, "rabbitmqctl is needed to set a policy"
    vhost = unquote(urlsplit(config.amqp.url).path.lstrip("/")) or "/"
    name = f"refuse-{config.amqp.queue}"
    if refuse:
        command = [
            "set_policy",
            "-p",
            vhost,
            "--apply-to",
            "queues",
            name,
            f"^{re.escape(config.amqp.queue)}$",
            '{"max-length": 0, "overflow": "reject-publish"}',
        ]
    else:
        command = ["clear_policy", "-p", vhost, name]
    subprocess.run([ctl, "-q", *command], check=True, capture_output=True, timeout=60)
    # The broker applies a policy asynchronously; the queue's own process reports the policy it
    # applied, so once the listing shows the change, publishes see it too.
    deadline = time.monotonic() + 20
    while True:
        listing = subprocess.run(
            [ctl, "-q", "list_queues", "-p", vhost, "name", "policy"],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        policies = {
            queue: policy.strip()
            for queue, _, policy in (line.partition("\t") for line in listing.splitlines())
        }
        if (policies.get(config.amqp.queue) == name) == refuse:
            return
        assert time.monotonic() < deadline, f"the policy {name} was not applied: {listing!r}"
        time.sleep(0.05)


async def test_503_when_the_broker_cannot_confirm_then_the_same_nonce_is_accepted(
    server: ServerHandle, client: httpx.AsyncClient, app_config: Config
) -> None:
    assert server.services is not None
    player = await new_player(client, server)
    body = action()
    await trio.to_thread.run_sync(_refuse_publishes, app_config, True)
    response = await client.post(PERFORM, json=body, headers=player.auth)
    assert response.status_code == 503, response.text
    refusal = response.json()
    assert refusal["success"] is False
    assert refusal["error"] == "unavailable"
    assert isinstance(refusal["retry_after"], int)
    assert refusal["retry_after"] >= 1
    assert set(refusal) <= {"success", "error", "retry_after", "message", "outcome"}
    assert refusal["outcome"] == "not_queued"  # the queue refused it: no doubt about it
    assert response.headers["Retry-After"] == str(refusal["retry_after"])
    # Nothing was accepted: neither the nonce nor the cooldown is taken once the queue is back.
    await trio.to_thread.run_sync(_refuse_publishes, app_config, False)
    response = await client.post(PERFORM, json=body, headers=player.auth)
    action_id = assert_accepted(response)
    assert "Idempotent-Replayed" not in response.headers
    replay = await client.post(PERFORM, json=body, headers=player.auth)
    assert assert_accepted(replay, replayed=True) == action_id


async def test_actions_are_scored_again_once_a_deleted_queue_is_back(
    server: ServerHandle, client: httpx.AsyncClient, app_config: Config
) -> None:
    assert server.services is not None
    player = await new_player(client, server)
    await trio.to_thread.run_sync(_delete_queue, app_config)
    await server.services.broker.declare_topology()
    action_id = assert_accepted(await client.post(PERFORM, json=action(), headers=player.auth))
    with trio.move_on_after(5):
        await wait_for_status(client, player, action_id, "completed")
        return
    pytest.fail("the action was never consumed")


async def test_action_types_is_the_catalogue(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    response = await client.get("/api/v1/actions/types")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "action_types": [
            {
                "action_type": "complete_task",
                "points": 10,
                "cooldown_s": 5,
                "fields": {"task_id": "string", "completion_time": "unix_seconds"},
                "rules": {"unique": ["task_id"], "max_age_s": 86400},
            },
            {
                "action_type": "win_match",
                "points": 25,
                "cooldown_s": 5,
                "fields": {"match_id": "string", "opponent_id": "string"},
                "rules": {"unique": ["match_id", "opponent_id"]},
            },
            {
                "action_type": "daily_login",
                "points": 5,
                "cooldown_s": 5,
                "fields": {"day": "string"},
                "rules": {"unique": ["utc_day"]},
            },
            {
                "action_type": "collect_item",
                "points": 2,
                "cooldown_s": 5,
                "fields": {"item_id": "string", "quantity": "integer"},
                "rules": {"ranges": {"quantity": {"min": 1, "max": 1000}}},
            },
        ]
    }
