"""A configuration the server cannot run with stops `scoreboard serve` at start, through the real
console script: a clear message and exit status 2, before anything listens."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import trio

from tests.e2e.test_cli_verify import SCOREBOARD

START_TIMEOUT_S = 30


async def serve_exit(tmp_path: Path, **settings: str) -> tuple[int | None, str]:
    """`scoreboard serve` in an empty directory with `settings`: its exit status (None if it was
    still running after the timeout) and its output."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("SCOREBOARD_")}
    env.update({"SCOREBOARD_SERVER_PORT": "0", **settings})
    result = None
    with trio.move_on_after(START_TIMEOUT_S):
        result = await trio.run_process(
            [str(SCOREBOARD), "serve"],
            env=env,
            cwd=tmp_path,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    if result is None:
        return None, ""
    return result.returncode, result.stdout.decode() + result.stderr.decode()


async def test_a_malformed_trusted_proxy_is_refused_at_start_with_exit_2(tmp_path: Path) -> None:
    code, output = await serve_exit(
        tmp_path, SCOREBOARD_SERVER_TRUSTED_PROXIES="10.0.0.0/8,proxy.internal"
    )
    assert code == 2, output
    assert "configuration error" in output
    assert "SCOREBOARD_SERVER_TRUSTED_PROXIES" in output
    assert "'proxy.internal' is not an IP address or network" in output
    assert "Traceback" not in output
    assert not (tmp_path / "var").exists()  # nothing was started


async def test_an_ops_port_in_use_is_refused_at_start_with_exit_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, output = await serve_exit(tmp_path, SCOREBOARD_OPS_PORT=str(port))
    assert code == 2, output
    assert f"the operations listener cannot listen on 127.0.0.1:{port}" in output
    assert "--ops-port" in output
    assert "Traceback" not in output


async def test_a_bad_ops_token_setting_is_refused_at_start_with_exit_2(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-token"
    code, output = await serve_exit(tmp_path, SCOREBOARD_OPS_TOKEN_FILE=str(missing))
    assert code == 2, output
    assert f"ops.token_file {missing}" in output
    assert "Traceback" not in output
    empty = tmp_path / "empty-token"
    empty.write_text("\n")
    code, output = await serve_exit(tmp_path, SCOREBOARD_OPS_TOKEN_FILE=str(empty))
    assert code == 2, output
    assert "is empty" in output
    code, output = await serve_exit(
        tmp_path, SCOREBOARD_OPS_TOKEN="t" * 32, SCOREBOARD_OPS_TOKEN_FILE=str(empty)
    )
    assert code == 2, output
    assert "not both" in output


async def test_an_ops_port_out_of_range_is_refused_with_exit_2(tmp_path: Path) -> None:
    env = {name: value for name, value in os.environ.items() if not name.startswith("SCOREBOARD_")}
    result = await trio.run_process(
        [str(SCOREBOARD), "serve", "--ops-port", "70000"],
        env=env,
        cwd=tmp_path,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 2
    assert b"--ops-port must be between 0 and 65535" in result.stderr
