"""The human-readable table of a load test's JSON result."""

from __future__ import annotations

from typing import Any


def ms(value: float | None, *, missing: str = "-") -> str:
    if value is None:
        return missing
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def number(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def latency_line(summary: dict[str, Any], *, bound: str) -> str:
    """p50/p95/p99/max; a percentile among the values that never arrived shows as `bound`."""
    if not summary["count"] and not summary["missing"]:
        return "-"
    parts = [
        f"p50 {ms(summary['p50'], missing=bound)}",
        f"p95 {ms(summary['p95'], missing=bound)}",
        f"p99 {ms(summary['p99'], missing=bound)}",
        f"max {ms(summary['max'])}",
    ]
    return " · ".join(parts) + f" ms (n={summary['count'] + summary['missing']:,})"


def render_table(result: dict[str, Any]) -> str:
    options = result["options"]
    actions = result["actions"]
    clients = result["clients"]
    players = result["players"]
    server = result["server"]
    latency = result["latency_ms"]
    updates = result["updates"]
    generator = result["load_generator"]
    machine = result["machine"]
    a2s = latency["action_to_screen"]
    bound_s = options["screen_bound_s"]
    never = f"> {bound_s:g} s"

    rows: list[tuple[str, str]] = [
        (
            "load",
            f"{clients['asked']:,} clients ({clients['processes']} processes, deflate "
            f"{'offered' if clients['offer_deflate'] else 'not offered'}), "
            f"{players['users']} players ({players['leaders']} leaders), "
            f"{actions['offered_per_s']:g} actions/s over {actions['transport']} for "
            f"{actions['duration_s']:g} s (leaders {actions['leader_per_s']:g}/s)",
        ),
        (
            "players",
            f"{players['created']} created, {players['reused']} reused, signed in in "
            f"{players['setup_s']:.1f} s (with {players['priming_actions']} priming actions); "
            f"their sockets dropped {players['socket_drops']} times and reconnected "
            f"{players['socket_reconnects']} times",
        ),
        (
            "clients",
            f"{clients['connected']:,}/{clients['asked']:,} connected in "
            f"{number(clients['connect_s'], 1)} s ({clients['connect_retries']:,} retries after "
            "a failure in transit); dropped during the run "
            f"{clients['dropped_during_window']}; on the final board "
            f"{clients['on_final_board']:,}/{clients['connected']:,}",
        ),
        (
            "actions",
            f"sent {actions['sent']:,}, accepted {actions['accepted']:,} "
            f"({actions['accepted_in_window_per_s']:,.1f}/s while sending), processed "
            f"{actions['processed']:,} ({actions['processed_in_window_per_s']:,.1f}/s while "
            f"sending, {number(actions['processed_per_s'], 1)}/s until the last); backlog when "
            f"sending stopped {actions['backlog_at_window_end']:,}; "
            + (
                f"drained {number(actions['drain_s'], 1)} s later"
                if actions["drained"]
                else "NOT drained"
            ),
        ),
        (
            "answers",
            ", ".join(f"{k}: {v:,}" for k, v in sorted(actions["answers"].items())) or "-",
        ),
        (
            "refused",
            f"rate limited {actions['rate_limited']:,}, unavailable (503) "
            f"{actions['unavailable']:,}, not sent {actions['not_sent']:,}",
        ),
    ]
    if actions["outcomes_via"]:
        rows.append(
            (
                "outcomes",
                ", ".join(f"via {k}: {v:,}" for k, v in sorted(actions["outcomes_via"].items())),
            )
        )
    if actions["resolution"]:
        rows.append(("resolved", ", ".join(f"{k}: {v}" for k, v in actions["resolution"].items())))
    rows += [
        ("HTTP accept", latency_line(latency["http_accept"], bound=never)),
        ("WS accept", latency_line(latency["ws_accept"], bound=never)),
        (
            "action→screen",
            latency_line(a2s, bound=never)
            + f"; not on screen within {bound_s:g} s: {a2s['not_within_bound']:,} of "
            f"{a2s['pairs']:,} (action, client) pairs ({a2s['tracked_actions']:,} leader "
            f"actions x {a2s['tracked_clients']:,} clients"
            + (f", every {a2s['sampling_step']}th action" if a2s["sampling_step"] > 1 else "")
            + ")",
        ),
        (
            "updates",
            f"{number(updates['per_client_per_s_mean'], 2)} per client per s (min "
            f"{number(updates['per_client_per_s_min'], 2)}, p5 "
            f"{number(updates['per_client_per_s_p5'], 2)}); {updates['frames']:,} frames, "
            f"{updates['distinct_snapshots']:,} distinct snapshots"
            + (f", {updates['malformed']} malformed" if updates["malformed"] else ""),
        ),
        ("update lag", latency_line(latency["update_lag"], bound=never) + " (stamp → receipt)"),
        ("update gap", latency_line(latency["update_gap"], bound=never)),
    ]
    if server.get("cpu_cores") is not None or server.get("rss_mib_max") is not None:
        memory = ""
        if server.get("kib_per_client") is not None:
            memory = (
                f"RSS {server['rss_mib_before']:,.0f} → {server['rss_mib_connected']:,.0f} MiB "
                f"with the clients ({server['kib_per_client']:,.1f} KiB per client), "
            )
        rows.append(
            (
                "server",
                f"CPU {number(server.get('cpu_cores'), 2)} cores while sending; {memory}"
                f"max {number(server.get('rss_mib_max'))} MiB; "
                f"{server.get('processes', '?')} processes",
            )
        )
    else:
        rows.append(("server", "CPU and memory not measured (not on this machine?)"))
    workers = ", ".join(number(share, 2) for share in generator["cpu_cores_workers"]) or "-"
    read_delay = generator["read_delay_ms"]
    rows += [
        (
            "generator",
            f"main process {number(generator['cpu_cores_main'], 2)} cores, watcher processes "
            f"{workers} cores" + (" (SATURATED)" if generator["saturated"] else ""),
        ),
        ("", f"watchers read their sockets {latency_line(read_delay, bound=never)} after arrival"),
        (
            "machine",
            f"{machine['cpus']} CPUs, {number((machine['busy'] or 0) * 100)} % busy while "
            f"sending, load average {machine['load_average_1m']:.2f}",
        ),
    ]
    correctness = result["correctness"]
    rows.append(("correctness", "PASS" if correctness["ok"] else "FAIL"))
    for check in correctness["checks"]:
        rows.append(("", f"{'ok  ' if check['ok'] else 'FAIL'} {check['name']}: {check['detail']}"))
    for warning in result["warnings"]:
        rows.append(("warning", warning))
    if result.get("chart"):
        rows.append(("chart", result["chart"]))
    width = max(len(label) for label, _ in rows)
    header = f"scoreboard loadtest {result['url']} (started {result['started_at']})"
    return "\n".join([header, *(f"  {label.ljust(width)}  {text}" for label, text in rows)])
