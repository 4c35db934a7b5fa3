"""The project as an operator installs it: a wheel (not an editable install) in a fresh virtual
environment, `scoreboard serve` from an empty directory, in embedded mode, until `/readyz`
answers 200. The defaults and the catalogue come from inside the package; an operator's
configuration directory overrides them.

Offline: the wheel is built with the project's own setuptools (no build isolation) and installed
with `--no-index --no-deps`; the new environment finds the dependencies through a `.pth` file
naming the project's virtual environment's site-packages (whose own editable-install hook is
not run, so `scoreboard` can only come from the wheel)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import httpx
import pytest
import trio

from tests.e2e.processes import free_port

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 60
# What a wheel is built from; the rest (.venv, .git, caches, var/) is left out of the copy.
SOURCE_ENTRIES = ("pyproject.toml", "README.md", "scoreboard", "config")


def run(*command: str | Path, cwd: Path | None = None) -> str:
    result = subprocess.run(
        [str(part) for part in command], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the project installed from its wheel: its bin/."""
    work = tmp_path_factory.mktemp("packaging")
    source = work / "source"
    source.mkdir()
    for entry in SOURCE_ENTRIES:
        if (ROOT / entry).is_dir():
            shutil.copytree(
                ROOT / entry,
                source / entry,
                symlinks=True,
                ignore=shutil.ignore_patterns("__pycache__"),
            )
        else:
            shutil.copy2(ROOT / entry, source / entry)
    wheels = work / "wheels"
    run(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
        "--wheel-dir", wheels, source,
    )  # fmt: skip
    (wheel,) = wheels.glob("scoreboard-*.whl")
    venv = work / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    site_packages = Path(
        run(
            venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"
        ).strip()
    )
    (site_packages / "project-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    run(
        sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install",
        "--no-deps", "--no-index", wheel,
    )  # fmt: skip
    return venv / "bin"


def operator_environment() -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if not name.startswith("SCOREBOARD_")}


def test_the_wheel_ships_the_defaults_and_imports_from_itself(installed: Path) -> None:
    # Not from the checkout: `python -c` puts its working directory first on sys.path.
    outside = installed.parent
    where = run(
        installed / "python", "-c", "import scoreboard; print(scoreboard.__file__)", cwd=outside
    )
    assert where.startswith(str(installed.parent)), where
    script = (
        "import importlib.resources as r;"
        "d = r.files('scoreboard') / 'defaults';"
        "print(sorted(p.name for p in d.iterdir()), (d / 'default.toml').is_file())"
    )
    listing = run(installed / "python", "-c", script, cwd=outside)
    assert "['actions.toml', 'default.toml']" in listing, listing
    assert "True" in listing  # a real file in the wheel, not a link into the checkout


async def serve_until_ready(installed: Path, cwd: Path, env: dict[str, str]) -> httpx.Response:
    port = free_port()
    log_path = cwd.parent / f"{cwd.name}-serve.log"
    with log_path.open("wb") as log:
        process = await trio.lowlevel.open_process(
            [installed / "scoreboard", "serve", "--port", str(port)],
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            with trio.fail_after(READY_TIMEOUT_S):
                while True:
                    assert process.poll() is None, log_path.read_text(errors="replace")
                    try:
                        if (await client.get("/readyz")).status_code == 200:
                            return await client.get("/api/v1/actions/types")
                    except httpx.TransportError:
                        pass
                    await trio.sleep(0.2)
    finally:
        process.terminate()
        with trio.fail_after(20):
            await process.wait()
        assert "Traceback" not in log_path.read_text(errors="replace")


async def test_serve_from_an_empty_directory_answers_readyz(
    installed: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    types = await serve_until_ready(installed, empty, operator_environment())
    names = [entry["action_type"] for entry in types.json()["action_types"]]
    assert names == ["complete_task", "win_match", "daily_login", "collect_item"]
    assert (empty / "var").is_dir()  # embedded mode's data, in the working directory


async def test_an_operator_config_directory_overrides_the_packaged_defaults(
    installed: Path, tmp_path: Path
) -> None:
    operator = tmp_path / "etc-scoreboard"
    operator.mkdir()
    (operator / "actions.toml").write_text(
        '[solve_puzzle]\npoints = 7\ncooldown_s = 1\nfields = { puzzle_id = "string" }\n'
    )
    (operator / "default.toml").write_text('[embedded]\ndata_dir = "state"\n')
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = {**operator_environment(), "SCOREBOARD_CONFIG_DIR": str(operator)}
    types = await serve_until_ready(installed, cwd, env)
    assert types.json()["action_types"] == [
        {"action_type": "solve_puzzle", "points": 7, "cooldown_s": 1,
         "fields": {"puzzle_id": "string"}, "rules": {}}
    ]  # fmt: skip
    assert (cwd / "state").is_dir()
    assert not (cwd / "var").exists()
