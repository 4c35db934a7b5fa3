"""A server whose caps refuse the load test's sockets: the load test says which setting to
raise and measures nothing, instead of measuring fewer clients than asked."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import trio

from scoreboard.config import Config
from scoreboard.server import ServerHandle

EXIT_REFUSED = 3
CAPS = {
    "per_ip": ({"max_connections_per_ip": 4}, "SCOREBOARD_WEBSOCKET_MAX_CONNECTIONS_PER_IP"),
    "per_user": ({"max_connections_per_user": 2}, "SCOREBOARD_WEBSOCKET_MAX_CONNECTIONS_PER_USER"),
}


@pytest.fixture(params=sorted(CAPS))
def cap(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def app_config(config: Config, cap: str) -> Config:
    websocket = {"max_connections_per_ip": 10_000, "max_connections_per_user": 1_000}
    websocket.update(CAPS[cap][0])
    return config.replace(limits={"enabled": False}, websocket=websocket)


async def test_refused_sockets_name_the_setting_to_raise(server: ServerHandle, cap: str) -> None:
    assert server.url is not None
    assert server.services is not None
    # 2 players (1 leader): 1 player socket each, then 4 watchers as the one other player
    command = [
        *(sys.executable, "-m", "scoreboard", "loadtest", "--url", server.url),
        *("--origin", server.services.public_origin, "--quiet", "--no-chart"),
        *("--users", "2", "--leaders", "1", "--clients", "4", "--rate", "0", "--duration", "1"),
    ]
    with trio.fail_after(120):
        done = await trio.run_process(
            command, capture_stdout=True, capture_stderr=True, check=False
        )
    stderr = done.stderr.decode()
    assert done.returncode == EXIT_REFUSED, stderr
    assert CAPS[cap][1] in stderr
    assert "refused" in stderr
    assert done.stdout == b""  # no figures for a run that did not happen as asked


class TestRateLimits:
    @pytest.fixture
    def app_config(self, config: Config) -> Config:
        return config.replace(
            limits={"enabled": True},
            websocket={"max_connections_per_ip": 10_000, "max_connections_per_user": 1_000},
        )

    async def test_rate_limited_actions_are_counted_and_named(
        self, server: ServerHandle, tmp_path: Path
    ) -> None:
        assert server.url is not None
        assert server.services is not None
        json_path = tmp_path / "result.json"
        command = [
            *(sys.executable, "-m", "scoreboard", "loadtest", "--url", server.url),
            *("--origin", server.services.public_origin, "--quiet", "--no-chart"),
            *("--users", "2", "--leaders", "1", "--clients", "1", "--rate", "10"),
            *("--duration", "2", "--json", str(json_path)),
        ]
        with trio.fail_after(120):
            done = await trio.run_process(
                command, capture_stdout=True, capture_stderr=True, check=False
            )
        assert done.returncode == 0, done.stderr.decode()
        result = json.loads(json_path.read_text())
        assert result["server"]["limits_enabled"] is True
        assert result["actions"]["rate_limited"] > 0  # cooldowns: 5 s between two of a type
        assert any("SCOREBOARD_LIMITS_ENABLED=false" in w for w in result["warnings"])
        assert result["correctness"]["ok"]  # refused actions never change a score
