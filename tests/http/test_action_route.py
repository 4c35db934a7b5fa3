"""The lean perform paths answer exactly as the Quart route does.

The server serves `POST /api/v1/actions/perform` on the listener's lean loop (plain HTTP/1.1,
as httpx sends it; `http/perform_loop.py`), else through `ActionRoute` in front of the Quart
application; here the Quart application alone is served too (on a second port, same services,
every request through Hypercorn), and the same requests go to both: statuses, bodies and headers
must agree, byte for byte where nothing differs by design (the action ids and the date).
Everything that is not that route passes through `ActionRoute` to Quart. The lean loop against
`ActionRoute`: tests/http/test_perform_loop.py.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import httpx
import pytest
import trio

from scoreboard.config import ServerConfig
from scoreboard.http.app import create_app
from scoreboard.http.listener import bind_socket, serve_http, socket_url
from scoreboard.server import ServerHandle
from tests.http.conftest import action, new_player

PERFORM = "/api/v1/actions/perform"
UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
COMPARED_HEADERS = (
    "content-type",
    "content-length",
    "location",
    "idempotent-replayed",
    "retry-after",
    "www-authenticate",
)


@pytest.fixture
async def quart_only(
    server: ServerHandle, nursery: trio.Nursery
) -> AsyncIterator[httpx.AsyncClient]:
    """The Quart application without the ASGI route in front, on a port of its own."""
    assert server.services is not None
    shutdown = trio.Event()
    with bind_socket(ServerConfig(host="127.0.0.1", port=0)) as listening:
        await nursery.start(
            partial(serve_http, lean_perform=False),
            create_app(server.services),
            server.services,
            listening,
            shutdown,
        )
        async with httpx.AsyncClient(base_url=socket_url(listening), timeout=30) as client:
            yield client
        shutdown.set()


def comparable(response: httpx.Response) -> tuple[int, bytes, dict[str, str]]:
    headers = {
        name: response.headers[name] for name in COMPARED_HEADERS if name in response.headers
    }
    if "location" in headers:
        headers["location"] = UUID.sub(b"<id>", headers["location"].encode()).decode()
    return response.status_code, UUID.sub(b"<id>", response.content), headers


async def test_every_kind_of_answer_is_the_same_from_both_layers(
    server: ServerHandle, client: httpx.AsyncClient, quart_only: httpx.AsyncClient
) -> None:
    player = await new_player(client, server)
    reader = await new_player(client, server, scope="read")
    json_headers = {**player.auth, "Content-Type": "application/json"}
    good = json.dumps(action(action_type="daily_login")).encode()
    requests: list[dict[str, Any]] = [
        {"content": good},  # no token
        {"content": good, "headers": {"Authorization": "Bearer not.a.jwt"}},
        {"content": good, "headers": {"Authorization": f"Basic {player.token}"}},
        {"content": good, "headers": reader.auth},
        {"content": good, "headers": player.auth},  # no Content-Type
        {"content": good, "headers": {**player.auth, "Content-Type": "text/plain"}},
        {"content": good + b" " * 5000, "headers": json_headers},
        {"content": b"{", "headers": json_headers},
        {"content": b"NaN", "headers": json_headers},
        {"content": b"[]", "headers": json_headers},
        {"content": json.dumps({**action(), "score": 1}).encode(), "headers": json_headers},
        {"content": json.dumps({**action(), "nonce": "short"}).encode(), "headers": json_headers},
    ]
    for request in requests:
        ours = await client.post(PERFORM, **request)
        theirs = await quart_only.post(PERFORM, **request)
        assert ours.status_code >= 400, ours.text
        assert comparable(ours) == comparable(theirs), request
    with_token_in_url = await client.post(f"{PERFORM}?access_token=x", content=good)
    assert comparable(with_token_in_url) == comparable(
        await quart_only.post(f"{PERFORM}?access_token=x", content=good)
    )

    # Accepted, then replayed on the other layer: the same answer but for the header.
    nonce = uuid.uuid4().hex
    body = action(nonce=nonce, action_type="win_match")
    accepted = await client.post(PERFORM, json=body, headers=player.auth)
    assert accepted.status_code == 202, accepted.text
    replayed = await quart_only.post(PERFORM, json=body, headers=player.auth)
    assert replayed.json()["action_id"] == accepted.json()["action_id"]
    assert replayed.headers["Idempotent-Replayed"] == "true"
    again = await client.post(PERFORM, json=body, headers=player.auth)
    # The action's status moves on between the two (accepted, then completed).
    status = re.compile(rb'"status":"[a-z]+"')
    assert status.sub(b"", comparable(again)[1]) == status.sub(b"", comparable(replayed)[1])
    for response in (again, replayed):
        del response.headers["content-length"]
    assert comparable(again)[0::2] == comparable(replayed)[0::2]

    # A cooldown refusal (429 with Retry-After) from each.
    limited = action(action_type="win_match")
    ours = await client.post(PERFORM, json=limited, headers=player.auth)
    theirs = await quart_only.post(
        PERFORM, json={**limited, "nonce": uuid.uuid4().hex}, headers=player.auth
    )
    assert ours.status_code == 429, ours.text
    assert comparable(ours)[0::2] == comparable(theirs)[0::2]


async def test_other_routes_and_methods_reach_quart(
    server: ServerHandle, client: httpx.AsyncClient, quart_only: httpx.AsyncClient
) -> None:
    for method, path in (
        ("GET", PERFORM),
        ("PUT", PERFORM),
        ("POST", PERFORM + "/"),
        ("GET", "/api/v1/actions/types"),
        ("GET", "/healthz"),
    ):
        ours = await client.request(method, path)
        theirs = await quart_only.request(method, path)
        assert (ours.status_code, ours.content) == (theirs.status_code, theirs.content), path
