"""Attempt windows (test_attempts.py) against the in-memory guard of embedded mode."""

from __future__ import annotations

from tests.adapters.test_attempts import (
    test_a_refused_attempt_is_not_counted,
    test_attempts_are_a_sliding_minute_per_key,
)
from tests.adapters.test_embedded_board import backend

__all__ = [
    "backend",
    "test_a_refused_attempt_is_not_counted",
    "test_attempts_are_a_sliding_minute_per_key",
]
