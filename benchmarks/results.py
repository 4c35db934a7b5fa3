"""The benchmark's files: the dated JSON and the markdown table."""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.scenarios import Outcome


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        memory_kib = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal:")
        )
    except (OSError, StopIteration):
        memory_kib = 0
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(memory_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def git_commit() -> str:
    done = subprocess.run(
        ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() or "unknown"


def _ms(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if value >= 10 else f"{value:.1f}"


def _latency(summary: dict[str, Any], bound_s: float) -> str:
    if not summary["count"] and not summary["missing"]:
        return "—"
    never = f">{bound_s:g}s"
    parts = [summary["p50"], summary["p99"]]
    text = " / ".join(never if value is None else _ms(value) for value in parts)
    return f"{text} / {_ms(summary['max'])}"


def row(outcome: Outcome) -> list[str]:
    scenario = outcome.scenario
    result = outcome.result
    head = [scenario.name, f"{scenario.clients:,}", f"{scenario.rate:g}"]
    if result is None:
        first_line = (outcome.error or "").splitlines()[0].removeprefix("scoreboard loadtest: ")
        return [*head, f"failed: {first_line[:100]}"] + [""] * 11
    actions = result["actions"]
    latency = result["latency_ms"]
    server = result["server"]
    clients = result["clients"]
    a2s = latency["action_to_screen"]
    bound_s = result["options"]["screen_bound_s"]
    not_on_screen = f"{a2s['not_within_bound'] / a2s['pairs']:.1%}" if a2s["pairs"] else "—"
    updates = result["updates"]["per_client_per_s_mean"]
    kib = server.get("kib_per_client")
    drained = (
        f"{actions['drain_s']:.1f}"
        if actions["drained"] and actions["drain_s"] is not None
        else ("no" if not actions["drained"] else "—")
    )
    return [
        *head,
        f"{actions['accepted_in_window_per_s']:,.0f}",
        "—" if actions["processed_per_s"] is None else f"{actions['processed_per_s']:,.0f}",
        drained,
        str(actions["unavailable"]),
        _latency(latency["http_accept"], bound_s),
        _latency(a2s, bound_s),
        not_on_screen,
        "—" if updates is None else f"{updates:.1f}",
        _latency(latency["update_lag"], bound_s),
        "—" if server.get("cpu_cores") is None else f"{server['cpu_cores']:.2f}",
        "—" if kib is None else f"{kib:,.0f}",
        ("PASS" if result["correctness"]["ok"] else "FAIL")
        + ("" if clients["connected"] == clients["asked"] else " (clients missing)"),
    ]


COLUMNS = [
    "run",
    "clients",
    "offered/s",
    "accepted/s",
    "processed/s",
    "drain s",
    "503",
    "HTTP accept p50 / p99 / max ms",
    "action→screen p50 / p99 / max ms",
    "not on screen in 5 s",
    "updates /client/s",
    "update lag p50 / p99 / max ms",
    "server CPU cores",
    "server KiB /socket",
    "correct",
]


def markdown(outcomes: Sequence[Outcome], header: dict[str, Any], adapters: Sequence[str]) -> str:
    lines = [
        f"# Benchmark {header['date']}",
        "",
        f"- command: `{header['command']}` ({header['total_s']:.0f} s)",
        f"- commit: `{header['commit']}`",
        f"- machine: {header['machine']['cpus']} CPUs ({header['machine']['cpu_model']}), "
        f"{header['machine']['memory_gib']} GiB, Linux {header['machine']['kernel']}, "
        f"Python {header['machine']['python']}; load average at start "
        f"{header['load_before']:.2f}, at end {header['load_after']:.2f}",
        f"- server: `{' '.join(header['server_command'])}` per run, real PostgreSQL, Redis and "
        "RabbitMQ on this machine, limits off, WebSocket caps raised; "
        f"{header['server_processes']}",
        "- load: `scoreboard loadtest` on the same machine (HTTP actions, sockets offering "
        "permessage-deflate), per run: fresh database, Redis prefix and queues",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    lines += ["| " + " | ".join(row(outcome)) + " |" for outcome in outcomes]
    lines += [
        "",
        "accepted/s: accepted while sending, per second of sending; processed/s: actions "
        "processed (outcome known: `action_result` on the player's socket, or "
        "`GET /api/v1/actions/<id>` timed by its `processed_at`) per second from the first due "
        "time to the last outcome; drain s: from the end of sending to the last outcome ('no': "
        "not every accepted action processed within the drain timeout); action→screen: from "
        "the moment a leader's action was due "
        "until each client received the snapshot showing it (p99 '>5s' when more than 1 % never "
        "did within 5 s); update lag: the snapshot's `timestamp` to its arrival; server KiB "
        "/socket: server RSS growth while the clients connected, per client.",
    ]
    failures = [o for o in outcomes if o.error]
    if failures:
        lines += ["", "## Failed runs", ""]
        for outcome in failures:
            lines += [f"- {outcome.scenario.name}:", "", "```", outcome.error or "", "```"]
    warned = [o for o in outcomes if o.result and o.result["warnings"]]
    if warned:
        lines += ["", "## Warnings", ""]
        for outcome in warned:
            assert outcome.result is not None
            for warning in outcome.result["warnings"]:
                lines.append(f"- {outcome.scenario.name}: {warning}")
    if adapters:
        lines += ["", "## Adapters", "", "```", *adapters, "```"]
    return "\n".join(lines) + "\n"
