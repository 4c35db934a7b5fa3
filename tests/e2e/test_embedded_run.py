"""`just run` in a fresh directory with none of the three backend URLs set: the embedded backends
serve the page's URL and score actions, say so, create a demo user, and `scoreboard verify`
checks the SQLite file. Nothing here touches PostgreSQL, Redis or RabbitMQ."""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio

from scoreboard.adapters.sqlite import database_path
from scoreboard.auth.keys import load_or_create_keyring
from scoreboard.auth.tokens import issue_access_token
from scoreboard.backends import open_backends
from scoreboard.config import load_config
from tests.e2e.processes import free_port
from tests.http.conftest import PASSWORD, action

pytestmark = pytest.mark.timeout(180)

CHECKOUT = Path(__file__).resolve().parents[2]
SCOREBOARD = Path(sys.executable).parent / "scoreboard"


def clean_environment() -> dict[str, str]:
    """This environment without any SCOREBOARD_* setting: the three URLs are unset."""
    return {name: value for name, value in os.environ.items() if not name.startswith("SCOREBOARD_")}


class JustRun:
    """`just run --port N` from `directory`, as a person trying Scoreboard would start it."""

    def __init__(self, directory: Path, port: int):
        just = shutil.which("just")
        assert just is not None, "`just` is needed (pip install rust-just)"
        self.url = f"http://127.0.0.1:{port}"
        self.output = directory.parent / f"just-run-{port}-{os.getpid()}.out"
        with self.output.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    just,
                    "--justfile",
                    str(CHECKOUT / "justfile"),
                    "--working-directory",
                    str(directory),
                    "run",
                    "--port",
                    str(port),
                ],
                env=clean_environment(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a signal to just and the server it started
            )

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    async def wait_ready(self) -> None:
        with trio.fail_after(120):
            async with httpx.AsyncClient(base_url=self.url) as client:
                while True:
                    assert self.process.poll() is None, self.text()
                    try:
                        if (await client.get("/readyz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await trio.sleep(0.2)
            while "Scoreboard is running" not in self.text():
                await trio.sleep(0.05)

    async def stop(self) -> None:
        """Ctrl-C: the server drains and exits 0 (just itself answers 130 for the signal)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
        with trio.fail_after(30):
            while self.process.poll() is None:
                await trio.sleep(0.05)
        output = self.text()
        assert "received SIGINT: draining" in output, output
        assert "Traceback" not in output, output


async def scoreboard(directory: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    result = await trio.run_process(
        [str(SCOREBOARD), *args],
        cwd=directory,
        env={**clean_environment(), **env},
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
    )


async def test_just_run_in_a_fresh_directory_serves_and_scores(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    port = free_port()
    run = JustRun(fresh, port)
    try:
        await run.wait_ready()
        output = run.text()
        first_log_line = next(line for line in output.splitlines() if " INFO " in line)
        assert "embedded mode" in first_log_line, output
        assert f"Scoreboard is running: {run.url}/" in output
        demo = re.search(r"Demo user: demo / (\S+)", output)
        assert demo is not None, output

        config = load_config(environ={}).replace(
            server={"port": port}, embedded={"data_dir": str(fresh / "var")}
        )
        async with open_backends(config, exclusive=False) as backends:
            keyring = await load_or_create_keyring(backends.store)
        async with httpx.AsyncClient(base_url=run.url, timeout=30) as client:
            assert (await client.get("/")).status_code in (200, 404)  # the page: a later issue
            response = await client.post(
                "/api/v1/users",
                json={"username": "ada", "email": "ada@example.com", "password": PASSWORD},
            )
            assert response.status_code == 201, response.text
            user_id = response.json()["user_id"]
            token, _ = issue_access_token(
                keyring,
                config=config,
                user_id=user_id,
                client_id="scoreboard-web",
                scope="read write",
            )
            response = await client.post(
                "/api/v1/actions/perform",
                json=action(),
                headers={"Authorization": f"Bearer {token}", "Prefer": "wait=10"},
            )
            assert response.status_code == 200, response.text
            assert response.json()["new_score"] == 10
            top = (await client.get("/api/v1/leaderboard")).json()["leaderboard"]
            assert [(e["username"], e["score"]) for e in top] == [("ada", 10)]

        # verify reads the same SQLite file while the server runs.
        result = await scoreboard(fresh, "verify")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "OK" in result.stdout
        # A second server on the same data directory is refused.
        second = await scoreboard(fresh, "serve", "--port", str(free_port()))
        assert second.returncode != 0
        assert "another scoreboard server uses" in second.stderr
        await run.stop()
    finally:
        if run.process.poll() is None:
            os.killpg(run.process.pid, signal.SIGKILL)

    connection = sqlite3.connect(database_path(fresh / "var"))
    with connection:
        connection.execute("UPDATE users SET score = score + 5 WHERE id = ?", (user_id,))
    connection.close()
    result = await scoreboard(fresh, "verify")
    assert result.returncode == 1
    assert f"user {user_id}: score 15 != sum of completed deltas 10" in result.stdout

    # Started again: the board comes back from SQLite, and the demo user is not created twice.
    again = JustRun(fresh, port)
    try:
        await again.wait_ready()
        assert "Demo user: demo exists; create another with: curl" in again.text()
        async with httpx.AsyncClient(base_url=again.url) as client:
            top = (await client.get("/api/v1/leaderboard")).json()["leaderboard"]
        assert [(e["username"], e["score"]) for e in top] == [("ada", 15)]
        await again.stop()
    finally:
        if again.process.poll() is None:
            os.killpg(again.process.pid, signal.SIGKILL)


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"SCOREBOARD_DATABASE_URL": "postgresql://db/x"}, "SCOREBOARD_REDIS_URL"),
        (
            {"SCOREBOARD_REDIS_URL": "redis://r/0", "SCOREBOARD_AMQP_URL": "amqp://q/"},
            "SCOREBOARD_DATABASE_URL",
        ),
        ({"SCOREBOARD_SERVER_ROLE": "worker"}, "server.role 'worker'"),
    ],
)
async def test_a_mixed_choice_of_backends_is_a_clear_error(
    tmp_path: Path, settings: dict[str, str], named: str
) -> None:
    result = await scoreboard(tmp_path, "serve", **settings)
    assert result.returncode == 2
    assert "configuration error" in result.stderr
    assert named in result.stderr
    assert not (tmp_path / "var").exists()
