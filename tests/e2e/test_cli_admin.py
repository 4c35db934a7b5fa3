"""`scoreboard users grant-admin|revoke-admin|suspend|unsuspend` and `scoreboard flags [clear]`
through the real console script, next to a running server, on both backends."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from scoreboard.anticheat.records import Flag, RegularityEvidence
from scoreboard.config import Config
from scoreboard.server import ServerHandle
from tests.e2e.test_cli_oauth import cli
from tests.http.conftest import issue_token, new_player
from tests.http.oauth_client import GENEROUS_LIMITS


@pytest.fixture(params=["real", "embedded"])
def backend_mode(request: pytest.FixtureRequest) -> str:
    mode: str = request.param
    return mode


@pytest.fixture
def app_config(config: Config) -> Config:
    return config.replace(oauth=GENEROUS_LIMITS)


async def test_grant_and_revoke_admin(
    server: ServerHandle, client: httpx.AsyncClient, config: Config
) -> None:
    player = await new_player(client, server)
    bearer = {"Authorization": f"Bearer {issue_token(server, player.user_id, 'read admin')}"}
    assert (await client.get("/api/v1/admin/me", headers=bearer)).status_code == 403

    granted = await cli(config, "users", "grant-admin", player.username)
    assert granted.returncode == 0, granted.stderr
    assert "may now be granted the admin scope" in granted.stdout
    assert (await client.get("/api/v1/admin/me", headers=bearer)).status_code == 200

    revoked = await cli(config, "users", "revoke-admin", player.username)
    assert revoked.returncode == 0, revoked.stderr
    assert (await client.get("/api/v1/admin/me", headers=bearer)).status_code == 403

    unknown = await cli(config, "users", "grant-admin", "nobody-here")
    assert unknown.returncode == 1
    assert "no user nobody-here" in unknown.stderr


async def test_flags_listed_and_cleared_from_the_command_line(
    server: ServerHandle, client: httpx.AsyncClient, config: Config
) -> None:
    assert server.services is not None
    player = await new_player(client, server)
    now = time.time_ns() // 1_000_000
    evidence = RegularityEvidence(20, 100_000, 5000.0, 2.0, 0.0004, 0.01)
    flag = Flag(player.user_id, "192.0.2.7", now - 100_000, now, now, evidence)
    [flag_id] = await server.services.store.add_flags([flag])

    listed = await cli(config, "flags", "--user", player.username, "--since", "1h")
    assert listed.returncode == 0, listed.stderr
    [line] = listed.stdout.splitlines()
    fields = line.split("\t")
    assert fields[0] == str(flag_id)
    assert fields[2:5] == ["regular_intervals", f"user:{player.user_id}", "standing"]
    assert json.loads(fields[5])["cv"] == 0.0004
    as_json = await cli(config, "flags", "--user", str(player.user_id), "--json")
    assert json.loads(as_json.stdout)["evidence"]["intervals"] == 20
    later = await cli(config, "flags", "--user", player.username, "--since", str(now + 1))
    assert later.stdout == ""
    assert (await cli(config, "flags", "--since", "tomorrow")).returncode == 2

    cleared = await cli(config, "flags", "clear", str(flag_id))
    assert cleared.returncode == 0, cleared.stderr
    standing = await cli(config, "flags", "--user", player.username, "--standing")
    assert standing.stdout == ""
    assert (await cli(config, "flags", "clear", "987654321")).returncode == 1
    assert (await cli(config, "flags", "--user", "nobody-here")).returncode == 1


async def test_suspend_and_unsuspend_from_the_command_line(
    server: ServerHandle, client: httpx.AsyncClient, config: Config
) -> None:
    assert server.services is not None
    player = await new_player(client, server)
    suspended = await cli(config, "users", "suspend", player.username)
    assert suspended.returncode == 0, suspended.stderr
    assert f"suspended {player.username}" in suspended.stdout
    again = await cli(config, "users", "suspend", player.username)
    assert "suspended already" in again.stdout
    user = await server.services.store.get_user(player.user_id)
    assert user is not None
    assert user.suspended
    unsuspended = await cli(config, "users", "unsuspend", player.username)
    assert unsuspended.returncode == 0, unsuspended.stderr
    user = await server.services.store.get_user(player.user_id)
    assert user is not None
    assert not user.suspended
    assert (await cli(config, "users", "suspend", "nobody-here")).returncode == 1
