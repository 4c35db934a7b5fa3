"""The latency-over-time chart: one self-contained HTML file with inline SVG, no scripts, no
external assets."""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from typing import Any

WIDTH = 900
HEIGHT = 260
MARGIN_LEFT = 64
MARGIN_RIGHT = 16
MARGIN_TOP = 28
MARGIN_BOTTOM = 36
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")

Point = tuple[float, float | None]


def _ticks(low: float, high: float, *, log: bool) -> list[float]:
    if log:
        first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
        return [10.0**e for e in range(first, last + 1)]
    if high <= low:
        return [low]
    step = 10 ** math.floor(math.log10((high - low) / 4))
    for factor in (1, 2, 5, 10):
        if (high - low) / (step * factor) <= 6:
            step *= factor
            break
    start = math.ceil(low / step) * step
    return [start + i * step for i in range(int((high - start) / step) + 1)]


def _label(value: float) -> str:
    if value >= 1000:
        return f"{value / 1000:g}k"
    return f"{value:g}"


def line_chart(
    title: str,
    y_label: str,
    series: Sequence[tuple[str, Sequence[Point]]],
    *,
    log: bool = False,
    x_end: float | None = None,
    marks: Sequence[tuple[str, float]] = (),
) -> str:
    """An SVG line chart of (x, y) series; y None is a gap (nothing measured there)."""
    points = [(x, y) for _name, values in series for x, y in values if y is not None]
    if not points:
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="60" role="img">'
            f'<text x="8" y="24" font-weight="bold">{html.escape(title)}</text>'
            '<text x="8" y="46">nothing measured</text></svg>'
        )
    xs = [x for x, _y in points]
    ys = [y for _x, y in points] + [value for _name, value in marks]
    x_low, x_high = min(0.0, min(xs)), max(max(xs), x_end or 0.0, 1.0)
    if log:
        y_low = max(min(y for y in ys if y > 0) if any(y > 0 for y in ys) else 1.0, 0.1) / 1.5
        y_high = max(ys) * 1.5
    else:
        y_low, y_high = 0.0, max(max(ys) * 1.1, 1.0)
    plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM

    def sx(x: float) -> float:
        return MARGIN_LEFT + (x - x_low) / (x_high - x_low) * plot_w

    def sy(y: float) -> float:
        if log:
            share = (math.log10(max(y, y_low)) - math.log10(y_low)) / (
                math.log10(y_high) - math.log10(y_low)
            )
        else:
            share = (y - y_low) / (y_high - y_low)
        return MARGIN_TOP + plot_h * (1 - share)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" font-family="sans-serif" font-size="11">',
        f"<title>{html.escape(title)}</title>",
        f'<text x="{MARGIN_LEFT}" y="16" font-size="13" font-weight="bold">'
        f"{html.escape(title)}</text>",
        f'<text x="12" y="{MARGIN_TOP + plot_h / 2}" transform="rotate(-90 12 '
        f'{MARGIN_TOP + plot_h / 2})" text-anchor="middle">{html.escape(y_label)}</text>',
    ]
    for tick in _ticks(y_low if not log else max(y_low, 0.1), y_high, log=log):
        if not y_low <= tick <= y_high:
            continue
        y = sy(tick)
        parts.append(
            f'<line x1="{MARGIN_LEFT}" x2="{WIDTH - MARGIN_RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
            'stroke="#ddd"/>'
            f'<text x="{MARGIN_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_label(tick)}</text>'
        )
    for tick in _ticks(x_low, x_high, log=False):
        x = sx(tick)
        parts.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{MARGIN_TOP}" y2="{MARGIN_TOP + plot_h}" '
            'stroke="#eee"/>'
            f'<text x="{x:.1f}" y="{HEIGHT - MARGIN_BOTTOM + 14}" text-anchor="middle">'
            f"{_label(tick)}</text>"
        )
    parts.append(
        f'<text x="{MARGIN_LEFT + plot_w / 2}" y="{HEIGHT - 6}" text-anchor="middle">'
        "seconds since the first action was due</text>"
    )
    for name, value in marks:
        y = sy(value)
        parts.append(
            f'<line x1="{MARGIN_LEFT}" x2="{WIDTH - MARGIN_RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
            'stroke="#999" stroke-dasharray="4 3"/>'
            f'<text x="{WIDTH - MARGIN_RIGHT - 4}" y="{y - 4:.1f}" text-anchor="end" '
            f'fill="#666">{html.escape(name)}</text>'
        )
    legend_x = MARGIN_LEFT + 8
    for index, (name, values) in enumerate(series):
        colour = COLOURS[index % len(COLOURS)]
        segments: list[list[str]] = [[]]
        for at, measured in values:
            if measured is None:
                segments.append([])
            else:
                segments[-1].append(f"{sx(at):.1f},{sy(measured):.1f}")
        for segment in segments:
            if len(segment) == 1:
                cx, cy = segment[0].split(",")
                parts.append(f'<circle cx="{cx}" cy="{cy}" r="2" fill="{colour}"/>')
            elif segment:
                parts.append(
                    f'<polyline fill="none" stroke="{colour}" stroke-width="1.6" '
                    f'points="{" ".join(segment)}"/>'
                )
        parts.append(
            f'<rect x="{legend_x}" y="{MARGIN_TOP + 4}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{legend_x + 14}" y="{MARGIN_TOP + 13}">{html.escape(name)}</text>'
        )
        legend_x += 24 + 7 * len(name)
    parts.append("</svg>")
    return "".join(parts)


def _shifted(values: Sequence[Sequence[Any]], *, midpoint: bool = True) -> list[Point]:
    """Per-second buckets [second, value] drawn at the middle of their second."""
    offset = 0.5 if midpoint else 0.0
    return [(float(x) + offset, None if y is None else float(y)) for x, y in values]


def render_html(result: dict[str, Any]) -> str:
    timeline = result["timeline"]
    options = result["options"]
    duration = float(options["duration_s"])
    bound_ms = float(options["screen_bound_s"]) * 1000
    latency = line_chart(
        "Latency by second (action-to-screen by the second the action was due)",
        "ms (log scale)",
        [
            ("action-to-screen p50", _shifted(timeline["a2s_p50"])),
            ("action-to-screen p99", _shifted(timeline["a2s_p99"])),
            ("action-to-screen max", _shifted(timeline["a2s_max"])),
            ("HTTP accept p99", _shifted(timeline["http_p99"])),
            ("update lag p99", _shifted(timeline["update_lag_p99"])),
        ],
        log=True,
        x_end=duration,
        marks=[(f"--screen-bound {bound_ms / 1000:g} s", bound_ms)],
    )
    rates = line_chart(
        "Actions per second",
        "per second",
        [
            ("accepted", _shifted(timeline["accepted_per_s"])),
            ("processed", _shifted(timeline["processed_per_s"])),
        ],
        x_end=duration,
        marks=[(f"offered {options['rate']:g}/s", float(options["rate"]))],
    )
    updates = line_chart(
        "Leaderboard updates per client per second",
        "per client per second",
        [("received", _shifted(timeline["updates_per_client_per_s"]))],
        x_end=duration,
    )
    server_points = timeline["server"]
    server = line_chart(
        "Server",
        "% of a core / MiB",
        [
            ("CPU % of one core", [(x, cpu * 100) for x, cpu, _rss in server_points]),
            ("RSS MiB", [(x, rss) for x, _cpu, rss in server_points]),
        ],
        x_end=duration,
    )
    a2s = result["latency_ms"]["action_to_screen"]
    summary = {
        "clients": result["clients"]["connected"],
        "offered/s": options["rate"],
        "transport": options["transport"],
        "accepted/s": round(result["actions"]["accepted_in_window_per_s"], 1),
        "processed/s": round(result["actions"]["processed_in_window_per_s"], 1),
        "a2s p50/p99/max ms": f"{a2s['p50']} / {a2s['p99']} / {a2s['max']}",
        "a2s not within bound": f"{a2s['not_within_bound']} of {a2s['pairs']}",
        "correctness": "PASS" if result["correctness"]["ok"] else "FAIL",
    }
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in summary.items()
    )
    warnings = "".join(f"<li>{html.escape(w)}</li>" for w in result["warnings"])
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>scoreboard loadtest {html.escape(result['started_at'])}</title>"
        "<style>body{font-family:sans-serif;margin:1.5rem;max-width:940px}"
        "th{text-align:left;padding-right:1rem}svg{display:block;margin:1rem 0}</style>"
        "</head><body>"
        f"<h1>scoreboard loadtest</h1><p>{html.escape(result['url'])}, started "
        f"{html.escape(result['started_at'])}</p><table>{rows}</table>"
        + (f"<h2>Warnings</h2><ul>{warnings}</ul>" if warnings else "")
        + latency
        + rates
        + updates
        + server
        + "<details><summary>JSON</summary><pre>"
        + html.escape(json.dumps({k: v for k, v in result.items() if k != "timeline"}, indent=1))
        + "</pre></details></body></html>\n"
    )
