"""OTP's restart intensity: more than `intensity` restarts within `period` seconds and the
supervisor gives up. Shared by the supervisors of actors (`supervisor.py`, `dynamic.py`) and of
processes (`processes.py`); times are trio's clock."""

from __future__ import annotations

from collections import deque


class RestartIntensity:
    def __init__(self, intensity: int, period: float) -> None:
        if intensity < 0 or period <= 0:
            raise ValueError("intensity must be >= 0 and period > 0")
        self.intensity = intensity
        self.period = period
        self._restarts: deque[float] = deque()

    def exceeded_by_one_more(self, now: float) -> bool:
        """Count a restart at `now`; True when it makes more than `intensity` in `period`."""
        self._restarts.append(now)
        while self._restarts[0] <= now - self.period:
            self._restarts.popleft()
        return len(self._restarts) > self.intensity

    def clear(self) -> None:
        self._restarts.clear()
