"""`scoreboard loadtest` through its real entry point against the real app on port 0: a short run
on the real backends and on the embedded ones, with limits off. Asserts that the run is correct
and that every figure is produced, never a timing."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from scoreboard.config import Config
from scoreboard.loadtest.options import add_arguments
from scoreboard.server import ServerHandle

RUN_TIMEOUT_S = 120


@pytest.fixture
def app_config(config: Config) -> Config:
    """Limits off and caps raised, as a load test needs; access tokens short enough that the
    load test must refresh them (and re-authenticate its open sockets) during the run."""
    return config.replace(
        limits={"enabled": False},
        websocket={"max_connections_per_ip": 10_000, "max_connections_per_user": 1_000},
        auth={"access_token_ttl_s": 8},
    )


async def run_loadtest(server: ServerHandle, tmp_path: Path, *args: str) -> tuple[int, str, str]:
    assert server.url is not None
    assert server.services is not None
    command = [
        sys.executable,
        "-m",
        "scoreboard",
        "loadtest",
        "--url",
        server.url,
        "--origin",
        server.services.public_origin,
        "--server-pid",
        str(os.getpid()),  # the app runs in this test's process
        "--quiet",
        *args,
    ]
    with trio.fail_after(RUN_TIMEOUT_S):
        done = await trio.run_process(
            command, capture_stdout=True, capture_stderr=True, check=False
        )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def assert_measured(summary: dict[str, Any]) -> None:
    assert summary["count"] > 0, summary
    for key in ("p50", "p95", "p99", "max"):
        assert summary[key] is not None, (key, summary)


@pytest.mark.parametrize("backend_mode", ["real", "embedded"], indirect=True)
async def test_a_short_mixed_run_is_correct_and_produces_every_figure(
    backend_mode: str, server: ServerHandle, tmp_path: Path
) -> None:
    json_path, chart_path = tmp_path / "result.json", tmp_path / "chart.html"
    code, stdout, stderr = await run_loadtest(
        server,
        tmp_path,
        *("--users", "6", "--leaders", "2", "--clients", "8", "--client-processes", "2"),
        *("--rate", "20", "--leader-rate", "10", "--duration", "4", "--transport", "mixed"),
        *("--json", str(json_path), "--chart", str(chart_path)),
    )
    assert code == 0, stdout + stderr
    result = json.loads(json_path.read_text())
    assert json.loads(stdout.strip().splitlines()[-1]) == result  # the JSON line on stdout
    assert re.search(r"^  correctness +PASS$", stdout, re.MULTILINE), stdout

    correctness = result["correctness"]
    assert correctness["ok"], correctness
    assert {check["name"] for check in correctness["checks"]} >= {
        "every action answered",
        "every accepted action processed",
        "score increase = sum of completed deltas",
        "counted exactly once",
    }

    actions = result["actions"]
    assert actions["sent"] == actions["accepted"] == actions["processed"] == 80
    assert actions["accepted_in_window_per_s"] > 0
    assert actions["processed_in_window_per_s"] >= 0
    assert actions["processed_per_s"] > 0
    assert actions["drained"]
    assert set(actions["answers"]) == {"http 202", "ws accepted"}
    assert actions["unmatched_results"] == 0

    latency = result["latency_ms"]
    assert_measured(latency["http_accept"])
    assert_measured(latency["ws_accept"])
    assert_measured(latency["action_to_screen"])
    assert_measured(latency["update_lag"])
    assert_measured(latency["update_gap"])
    a2s = latency["action_to_screen"]
    assert a2s["pairs"] == a2s["tracked_actions"] * a2s["tracked_clients"]
    assert a2s["tracked_clients"] == 8
    assert a2s["tracked_actions"] == 40  # --leader-rate 10 of 20/s

    clients = result["clients"]
    assert clients["connected"] == 8
    assert clients["processes"] == 2
    assert clients["refused"] == {}
    assert clients["dropped"] == {}
    assert clients["on_final_board"] == 8
    assert result["players"]["token_refreshes"] > 0  # 8 s tokens: refreshed, sockets kept
    assert result["players"]["socket_reconnects"] == result["players"]["socket_drops"] == 0
    assert re.search(r"dropped 0 times and reconnected 0 times", stdout)
    assert result["updates"]["per_client_per_s_mean"] > 0
    assert result["updates"]["malformed"] == 0

    server_figures = result["server"]
    assert server_figures["measured"]
    assert server_figures["limits_enabled"] is False
    for key in ("cpu_cores", "rss_mib_max", "kib_per_client", "rss_mib_before"):
        assert server_figures[key] is not None, key
    assert result["load_generator"]["cpu_cores_main"] is not None
    assert_measured(result["load_generator"]["read_delay_ms"])
    assert re.search(r"^ +watchers read their sockets p50 .* after arrival$", stdout, re.MULTILINE)
    assert len(result["load_generator"]["cpu_cores_workers"]) == 2
    assert result["machine"]["busy"] is not None

    chart = chart_path.read_text()
    assert chart.count("<svg") == 4
    assert "<script" not in chart
    charts = chart.split("<svg", 1)[1].split("<details>")[0]
    assert "http" not in charts.replace('xmlns="http://www.w3.org/2000/svg"', "")


async def test_players_are_reused_on_a_second_run(server: ServerHandle, tmp_path: Path) -> None:
    args = ("--users", "3", "--leaders", "1", "--clients", "2", "--rate", "10", "--duration", "1")
    first_json, second_json = tmp_path / "first.json", tmp_path / "second.json"
    code, stdout, stderr = await run_loadtest(
        server, tmp_path, *args, "--json", str(first_json), "--no-chart"
    )
    assert code == 0, stdout + stderr
    code, stdout, stderr = await run_loadtest(
        server, tmp_path, *args, "--json", str(second_json), "--no-chart"
    )
    assert code == 0, stdout + stderr
    first, second = json.loads(first_json.read_text()), json.loads(second_json.read_text())
    assert (first["players"]["created"], second["players"]["reused"]) == (3, 3)
    assert second["correctness"]["ok"]


async def test_help_documents_every_option() -> None:
    done = await trio.run_process(
        [sys.executable, "-m", "scoreboard", "loadtest", "--help"], capture_stdout=True
    )
    text = " ".join(done.stdout.decode().split())
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    options = [action for action in parser._actions if action.dest != "help"]
    assert len(options) >= 20
    for action in options:
        for flag in action.option_strings:
            assert flag in text, flag
        assert len(action.help or "") > 20, action.option_strings
