"""The web page (issue 5): `/`, `/callback` and the static assets under `scoreboard/static/`.

The page is a handful of ES modules, read once from the package. Their URLs carry a version, the
digest of every static file (`/static/<version>/main.js`), so assets are cached for a year as
immutable and a new release is fetched at once: `index.html` (also served at `/callback`, where
the OAuth redirect lands) is `no-cache`, and names the current version. The modules import each
other by relative URL, so they inherit the version without a build step.

Every response of this blueprint carries a strict Content Security Policy: scripts and styles
from this origin only (no inline code), connections to this origin and its WebSocket, no
framing, no `<base>`, forms posting only here.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import mimetypes
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from urllib.parse import urlsplit

from quart import Blueprint, Response, abort, request

from scoreboard.http.services import current_services

blueprint = Blueprint("pages", __name__)

ASSETS_PLACEHOLDER = b"%ASSETS%"
IMMUTABLE = "public, max-age=31536000, immutable"
# The browser may keep the page but must ask (If-None-Match) before using it again.
REVALIDATE = "no-cache"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str


@dataclass(frozen=True, slots=True)
class Site:
    version: str
    index: bytes
    index_etag: str
    assets: dict[str, Asset]


def _files(root: Traversable, prefix: str = "") -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for entry in root.iterdir():
        name = prefix + entry.name
        if entry.is_dir():
            found.update(_files(entry, name + "/"))
        elif not entry.name.startswith("."):
            found[name] = entry.read_bytes()
    return found


def _content_type(name: str) -> str:
    suffix = name[name.rfind(".") :] if "." in name else ""
    return CONTENT_TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"


@functools.cache
def load_site() -> Site:
    """The page and its assets, read from the package once per process."""
    files = _files(importlib.resources.files("scoreboard") / "static")
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name] + b"\0")
    version = digest.hexdigest()[:16]
    index = files.pop("index.html").replace(ASSETS_PLACEHOLDER, f"/static/{version}".encode())
    return Site(
        version=version,
        index=index,
        index_etag=hashlib.sha256(index).hexdigest()[:16],
        assets={name: Asset(body, _content_type(name)) for name, body in files.items()},
    )


def content_security_policy(public_origin: str) -> str:
    parts = urlsplit(public_origin)
    socket_origin = f"{'wss' if parts.scheme == 'https' else 'ws'}://{parts.netloc}"
    return "; ".join(
        (
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            f"connect-src 'self' {socket_origin}",
            "img-src 'self' data:",
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "form-action 'self'",
        )
    )


@blueprint.after_request
async def security_headers(response: Response) -> Response:
    svc = current_services()
    response.headers["Content-Security-Policy"] = content_security_policy(svc.public_origin)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@blueprint.get("/")
@blueprint.get("/callback")
async def index() -> Response:
    site = load_site()
    if site.index_etag in request.if_none_match:
        response = Response(b"", status=304)
    else:
        response = Response(site.index, content_type=CONTENT_TYPES[".html"])
    response.set_etag(site.index_etag)
    response.headers["Cache-Control"] = REVALIDATE
    return response


@blueprint.get("/static/<version>/<path:name>")
async def asset(version: str, name: str) -> Response:
    site = load_site()
    found = site.assets.get(name)
    if found is None:
        abort(404)
    response = Response(found.body, content_type=found.content_type)
    # An old page asking for an old version gets today's file, which must not be kept as if it
    # were the old one.
    response.headers["Cache-Control"] = IMMUTABLE if version == site.version else REVALIDATE
    return response
