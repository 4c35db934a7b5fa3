"""How the server serves the page: cache headers, the Content Security Policy, the assets."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from tests.browser.conftest import ServerThread

ASSET = re.compile(r'(?:src|href)="(/static/([0-9a-f]{16})/[^"]+)"')
IMPORT = re.compile(r'from "\./([\w-]+\.js)"')


@pytest.fixture
def http(server: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def expected_csp(server: ServerThread) -> str:
    socket_origin = server.url.replace("http://", "ws://", 1)
    return (
        "default-src 'self'; script-src 'self'; style-src 'self'; "
        f"connect-src 'self' {socket_origin}; img-src 'self' data:; frame-ancestors 'none'; "
        "base-uri 'none'; form-action 'self'"
    )


def assert_hardened(response: httpx.Response, server: ServerThread) -> None:
    assert response.headers["Content-Security-Policy"] == expected_csp(server)
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"


def test_the_page_is_revalidated_and_hardened(server: ServerThread, http: httpx.Client) -> None:
    page = http.get("/")
    assert page.status_code == 200
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert page.headers["Cache-Control"] == "no-cache"
    assert_hardened(page, server)
    assert "<script>" not in page.text  # no inline script: the CSP would refuse it
    assert " style=" not in page.text

    again = http.get("/", headers={"If-None-Match": page.headers["ETag"]})
    assert again.status_code == 304
    callback = http.get("/callback", params={"code": "c", "state": "s"})
    assert callback.status_code == 200
    assert callback.text == page.text
    assert_hardened(callback, server)


def test_versioned_assets_are_immutable_and_every_module_is_there(
    server: ServerThread, http: httpx.Client
) -> None:
    index = http.get("/").text
    found = ASSET.findall(index)
    assert {path.rsplit("/", 1)[1] for path, _ in found} == {"icon.svg", "app.css", "main.js"}
    version = found[0][1]

    modules, seen = ["main.js"], set()
    while modules:
        name = modules.pop()
        if name in seen:
            continue
        seen.add(name)
        response = http.get(f"/static/{version}/{name}")
        assert response.status_code == 200, name
        assert response.headers["Content-Type"] == "text/javascript; charset=utf-8"
        assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        assert_hardened(response, server)
        modules.extend(IMPORT.findall(response.text))
    assert len(seen) > 5

    css = http.get(f"/static/{version}/app.css")
    assert css.headers["Content-Type"] == "text/css; charset=utf-8"
    # An old page asking for an old version gets today's file, not cached as the old one.
    stale = http.get("/static/0000000000000000/main.js")
    assert stale.status_code == 200
    assert stale.headers["Cache-Control"] == "no-cache"
    assert http.get(f"/static/{version}/missing.js").status_code == 404
    assert http.get(f"/static/{version}/index.html").status_code == 404  # only at / itself
