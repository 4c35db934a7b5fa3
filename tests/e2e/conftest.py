"""The end-to-end tests share the HTTP tests' application fixtures."""

from tests.http.conftest import app_config, client, server

__all__ = ["app_config", "client", "server"]
