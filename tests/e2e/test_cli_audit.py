"""`scoreboard audit U` through the real console script, next to a running server, on both
backends: the user's attempts newest first, pages with `--cursor`, and clear refusals of bad
arguments."""

from __future__ import annotations

import json

import httpx
import pytest

from scoreboard.config import Config
from scoreboard.server import ServerHandle
from tests.e2e.test_cli_oauth import cli
from tests.http.conftest import action, new_player
from tests.http.test_audit_api import PERFORM, bearer, new_admin, trail_until


@pytest.fixture(params=["real", "embedded"])
def backend_mode(request: pytest.FixtureRequest) -> str:
    mode: str = request.param
    return mode


@pytest.fixture
def app_config(config: Config) -> Config:
    return config.replace(limits={"enabled": False})


async def test_audit_lists_a_users_attempts_and_pages_through_them(
    server: ServerHandle, client: httpx.AsyncClient, config: Config
) -> None:
    player = await new_player(client, server)
    done = action()
    answered = await client.post(PERFORM, json=done, headers=bearer(player, Prefer="wait=5"))
    assert answered.status_code == 200, answered.text
    for _ in range(2):
        bad = {**action(), "action_data": {}}
        assert (await client.post(PERFORM, json=bad, headers=bearer(player))).status_code == 400
    await trail_until(client, await new_admin(client, server), player.username, 3)

    listed = await cli(config, "audit", player.username)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert len(lines) == 3
    assert [line.split()[1] for line in lines] == ["refused", "refused", "completed"]
    assert f"nonce={done['nonce']}" in lines[2]
    assert "delta=10" in lines[2]

    first = await cli(config, "audit", player.username, "--limit", "2", "--json")
    assert first.returncode == 0, first.stderr
    assert [json.loads(line)["outcome"] for line in first.stdout.splitlines()] == [
        "refused",
        "refused",
    ]
    cursor = first.stderr.strip().removeprefix("more: --cursor ")
    rest = await cli(config, "audit", player.username, "--json", "--cursor", cursor)
    [last] = [json.loads(line) for line in rest.stdout.splitlines()]
    assert (last["outcome"], last["nonce"], last["user_agent"]) == (
        "completed",
        done["nonce"],
        "audit-test/1.0",
    )
    assert rest.stderr == ""

    later = await cli(config, "audit", player.username, "--since", "4102444800")
    assert (later.returncode, later.stdout) == (0, "")


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["nobody-at-all"], "no user nobody-at-all"),
        (["{user}", "--limit", "0"], "limit is a whole number"),
        (["{user}", "--since", "yesterday"], "since is unix seconds"),
        (["{user}", "--cursor", "x"], "cursor is not one this server gave out"),
    ],
)
async def test_audit_refuses_bad_arguments_clearly(
    server: ServerHandle, client: httpx.AsyncClient, config: Config, args: list[str], said: str
) -> None:
    player = await new_player(client, server)
    refused = await cli(config, "audit", *[a.format(user=player.username) for a in args])
    assert refused.returncode == 1
    assert said in refused.stderr
    assert "Traceback" not in refused.stderr
