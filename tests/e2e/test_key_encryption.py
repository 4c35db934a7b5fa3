"""Signing keys encrypted at rest, through the real console script on both backends: what the
database holds, a start with the wrong key-encryption key refused with exit code 2, a KEK
rotation with `scoreboard keys rewrap`, plain keys of an older version encrypted at the first
start, and embedded mode's data directory readable by its owner alone."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import trio

from scoreboard.adapters.migrations import load_sqlite_migrations
from scoreboard.adapters.postgres import open_postgres_store
from scoreboard.adapters.sqlite import DATABASE_FILE, SQLiteStore, open_sqlite
from scoreboard.auth.key_encryption import EMBEDDED_KEK_FILE, kek_id, new_kek, parse_keks
from scoreboard.auth.keys import generate_signing_key
from scoreboard.bridge import open_bridge
from scoreboard.config import Config
from tests.e2e.processes import free_port, server_environment
from tests.e2e.test_cli_verify import SCOREBOARD

READY_WITHIN_S = 60
REFUSED_WITHIN_S = 60
KEK_A, KEK_B = new_kek(), new_kek()


def kek_id_of(kek: str) -> str:
    return kek_id(parse_keks(kek, "test")[0])


@pytest.fixture(params=["real", "embedded"])
def backend_mode(request: pytest.FixtureRequest) -> str:
    mode: str = request.param
    return mode


def environment(config: Config, kek: str | None) -> dict[str, str]:
    env = server_environment(config, port=free_port(), role="all", limits_enabled=True)
    if kek is not None:
        env["SCOREBOARD_AUTH_KEY_ENCRYPTION_KEY"] = kek
    return env


@contextmanager
def serving(env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`scoreboard serve` with a umask that would leave files readable by everyone."""
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [str(SCOREBOARD), "serve"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: os.umask(0o022),  # the child has no threads yet
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(30)


def text_of(path: Path) -> str:
    return path.read_text(errors="replace")


async def wait_ready(process: subprocess.Popen[bytes], log_path: Path) -> None:
    with trio.fail_after(READY_WITHIN_S):
        while "scoreboard ready" not in text_of(log_path):
            assert process.poll() is None, text_of(log_path)
            await trio.sleep(0.1)


async def serve_once(env: dict[str, str], log_path: Path) -> str:
    """Start a server, wait until it is ready, stop it; its log."""
    with serving(env, log_path) as process:
        await wait_ready(process, log_path)
        async with httpx.AsyncClient() as client:
            port = env["SCOREBOARD_SERVER_PORT"]
            jwks = (await client.get(f"http://127.0.0.1:{port}/.well-known/jwks.json")).json()
            assert [key["kid"] for key in jwks["keys"]] == ["key-1"]
    return text_of(log_path)


async def refused_start(env: dict[str, str], log_path: Path) -> str:
    with serving(env, log_path) as process:
        with trio.fail_after(REFUSED_WITHIN_S):
            while process.poll() is None:
                await trio.sleep(0.1)
        assert process.returncode == 2, text_of(log_path)
    return text_of(log_path)


async def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        [str(SCOREBOARD), *args], env=env, capture_stdout=True, capture_stderr=True, check=False
    )


async def stored_keys(config: Config) -> dict[str, str]:
    """kid -> private_pem as the database holds it."""
    if config.backend_mode == "embedded":
        connection = sqlite3.connect(Path(config.embedded.data_dir) / DATABASE_FILE)
        try:
            rows = connection.execute("SELECT kid, private_pem FROM signing_keys").fetchall()
        finally:
            connection.close()
        return dict(rows)

    async def fetch() -> list[Any]:
        conn = await asyncpg.connect(config.database.url)
        try:
            return list(await conn.fetch("SELECT kid, private_pem FROM signing_keys"))
        finally:
            await conn.close()

    async with open_bridge() as bridge:
        return {row["kid"]: row["private_pem"] for row in await bridge.run(fetch)}


async def store_a_plain_key(config: Config) -> None:
    """What a version before encryption at rest left in the database."""
    key = await trio.to_thread.run_sync(generate_signing_key, "key-1")
    if config.backend_mode == "embedded":
        data_dir = Path(config.embedded.data_dir)
        async with open_sqlite(data_dir, load_sqlite_migrations()) as database:
            await SQLiteStore(database).add_signing_key(key)
        return
    async with open_bridge() as bridge, open_postgres_store(bridge, config.database) as store:
        await store.add_signing_key(key)


def sealed_by(stored: dict[str, str]) -> set[str]:
    return {
        value.split(":")[1] if value.startswith("kek1:") else "plain" for value in stored.values()
    }


async def test_a_wrong_kek_is_refused_at_start_and_a_rotation_rewraps_the_keys(
    config: Config, tmp_path: Path
) -> None:
    await serve_once(environment(config, KEK_A), tmp_path / "first.log")
    stored = await stored_keys(config)
    assert list(stored) == ["key-1"]
    assert sealed_by(stored) == {kek_id_of(KEK_A)}
    assert "PRIVATE KEY" not in stored["key-1"]

    refusal = await refused_start(environment(config, KEK_B), tmp_path / "wrong.log")
    assert "scoreboard: configuration error: signing key key-1 is encrypted with the " in refusal
    assert f"key-encryption key {kek_id_of(KEK_A)}, which is not configured" in refusal
    assert "Traceback" not in refusal

    rewrap = await cli(environment(config, f"{KEK_B},{KEK_A}"), "keys", "rewrap")
    assert rewrap.returncode == 0, rewrap.stderr.decode()
    assert rewrap.stdout.decode().strip() == (
        f"encrypted 1 signing key(s) with the key-encryption key {kek_id_of(KEK_B)}: key-1"
    )
    assert sealed_by(await stored_keys(config)) == {kek_id_of(KEK_B)}
    await serve_once(environment(config, KEK_B), tmp_path / "rotated.log")

    again = await cli(environment(config, KEK_B), "keys", "rewrap")
    assert again.stdout.decode().strip().startswith("encrypted 0 signing key(s)")


async def test_plain_keys_of_an_older_version_are_encrypted_at_the_first_start(
    config: Config, tmp_path: Path
) -> None:
    if config.backend_mode == "embedded":
        await store_a_plain_key(config)
        # No KEK configured: embedded mode makes one of its own beside the database.
        log = await serve_once(environment(config, None), tmp_path / "serve.log")
        kek = text_of(Path(config.embedded.data_dir) / EMBEDDED_KEK_FILE).strip()
    else:
        log = await serve_once(environment(config, None), tmp_path / "plain.log")
        assert "the JWT signing keys are stored in plain text" in log
        assert sealed_by(await stored_keys(config)) == {"plain"}
        kek = KEK_A
        log = await serve_once(environment(config, kek), tmp_path / "serve.log")
    assert "encrypted the signing keys key-1 at rest" in log
    assert sealed_by(await stored_keys(config)) == {kek_id_of(kek)}


@pytest.mark.parametrize("backend_mode", ["embedded"], indirect=True)
async def test_the_embedded_data_directory_is_its_owners_alone(
    config: Config, tmp_path: Path
) -> None:
    data_dir = Path(config.embedded.data_dir)
    left_open_by_an_older_version(data_dir)

    with serving(environment(config, None), tmp_path / "serve.log") as process:
        await wait_ready(process, tmp_path / "serve.log")
        modes = modes_in(data_dir)
    assert modes.pop(".") == 0o700
    suffixes = ("", "-wal", "-shm")
    expected = {DATABASE_FILE + suffix for suffix in suffixes} | {EMBEDDED_KEK_FILE, "serve.lock"}
    assert expected <= set(modes)
    assert {name: mode for name, mode in modes.items() if mode != 0o600} == {}


def left_open_by_an_older_version(data_dir: Path) -> None:
    """A data directory and a database (in WAL mode) open to everyone."""
    data_dir.mkdir()
    data_dir.chmod(0o755)
    old = sqlite3.connect(data_dir / DATABASE_FILE)
    old.execute("PRAGMA journal_mode = WAL")
    old.close()
    (data_dir / DATABASE_FILE).chmod(0o644)


def modes_in(data_dir: Path) -> dict[str, int]:
    """The permission bits of the directory (".") and of each file in it."""
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in data_dir.iterdir()}
    return {".": stat.S_IMODE(data_dir.stat().st_mode), **modes}
