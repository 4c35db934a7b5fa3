"""The load test runs against the real application that the HTTP tests start."""

from tests.http.conftest import server

__all__ = ["server"]
