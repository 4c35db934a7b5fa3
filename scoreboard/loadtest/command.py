"""`scoreboard loadtest`: run one load test, print the table and the JSON line, write the files."""

from __future__ import annotations

import json
import resource
import sys
from typing import Any

import trio

from scoreboard.loadtest.chart import render_html
from scoreboard.loadtest.options import Options
from scoreboard.loadtest.report import render_table
from scoreboard.loadtest.runner import LoadTest, RunRefused

EXIT_PASSED = 0
EXIT_INCORRECT = 1
EXIT_REFUSED = 3


def raise_open_files_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _refusal(group: BaseExceptionGroup[Any]) -> RunRefused | None:
    for exc in group.exceptions:
        if isinstance(exc, RunRefused):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _refusal(exc)
            if found is not None:
                return found
    return None


async def run(options: Options) -> int:
    test = LoadTest(options)
    try:
        result = await test.run()
    except RunRefused as exc:
        test.progress.finish()
        print(f"scoreboard loadtest: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except BaseExceptionGroup as group:
        refusal = _refusal(group)
        if refusal is None:
            raise
        test.progress.finish()
        print(f"scoreboard loadtest: {refusal}", file=sys.stderr)
        return EXIT_REFUSED
    chart_path = options.chart_path
    if chart_path:
        result["chart"] = str(await trio.Path(chart_path).resolve())
        await trio.Path(chart_path).write_text(render_html(result), encoding="utf-8")
    line = json.dumps(result, separators=(",", ":"))
    if options.json_path:
        await trio.Path(options.json_path).write_text(line + "\n", encoding="utf-8")
    print(render_table(result))
    print(line, flush=True)
    return EXIT_PASSED if result["correctness"]["ok"] else EXIT_INCORRECT


def main(options: Options) -> int:
    raise_open_files_limit()
    return trio.run(run, options)
