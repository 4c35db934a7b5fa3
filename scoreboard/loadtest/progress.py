"""A one-line progress bar on stderr, repainted a few times a second; silent unless stderr is a
terminal (and not --quiet). Messages printed with `say` go to stderr always."""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable

import trio

REPAINT_S = 0.25
BAR_WIDTH = 24


class Progress:
    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.phase = ""
        self.done = 0.0
        self.total = 0.0
        self.detail: Callable[[], str] = lambda: ""
        self.started = time.monotonic()
        self._painted = False

    def stage(
        self, phase: str, total: float = 0.0, detail: Callable[[], str] | None = None
    ) -> None:
        self.phase = phase
        self.total = total
        self.done = 0.0
        self.detail = detail or (lambda: "")
        self.say(phase, quiet_on_terminal=True)

    def say(self, message: str, *, quiet_on_terminal: bool = False) -> None:
        """A line on stderr (above the bar on a terminal); stage names only when there is no
        bar, so that a log file shows where a run is."""
        if self.enabled:
            if quiet_on_terminal:
                return
            self._clear()
        print(f"loadtest: {message}", file=sys.stderr, flush=True)

    def _clear(self) -> None:
        if self._painted:
            sys.stderr.write("\r\x1b[K")
            self._painted = False

    def paint(self) -> None:
        if not self.enabled:
            return
        width = shutil.get_terminal_size((100, 20)).columns
        if self.total > 0:
            share = min(1.0, self.done / self.total)
            filled = int(share * BAR_WIDTH)
            bar = f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {self.done:,.0f}/{self.total:,.0f}"
        else:
            bar = ""
        line = f"{self.phase} {bar} {self.detail()}".strip()
        sys.stderr.write("\r\x1b[K" + line[: width - 1])
        sys.stderr.flush()
        self._painted = True

    def finish(self) -> None:
        if self.enabled:
            self._clear()
            sys.stderr.flush()

    async def repaint_forever(self) -> None:
        while True:
            self.paint()
            await trio.sleep(REPAINT_S)
