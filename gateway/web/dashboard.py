"""The operator dashboard: static files at ``/`` and ``/static/...``.

The files hold no data, so they are served without a token; everything the page
shows comes from ``POST /graphql`` with the operator's token. A strict
Content-Security-Policy keeps the page to its own origin: its own script and style
sheet, GraphQL calls to the same origin, and QR codes as ``data:`` images.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from flask import Blueprint, Response, abort, g, jsonify, request, send_from_directory

from gateway.auth.sign_in import CONFIG_FILE_ENV, browser_is_local, sign_in_hint
from gateway.core.config import Config

STATIC_FILES = frozenset({"index.html", "app.js", "style.css", "favicon.svg"})

CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "connect-src 'self'",
    "form-action 'none'",
    "frame-ancestors 'none'",
    "base-uri 'none'",
))

# No build step, so no fingerprinted file names: the browser keeps a copy but asks
# (If-None-Match) before every use, so an upgraded gateway serves its new page at once.
CACHE_CONTROL = "no-cache"

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def static_dir() -> Path:
    return Path(str(resources.files("gateway.web").joinpath("static")))


def dashboard_blueprint(config: Config, config_file: str | None = None) -> Blueprint:
    """``config_file``: the file the launcher was started with (by default from its
    environment), named in the sign-in page's token command."""
    blueprint = Blueprint("dashboard", __name__)
    directory = static_dir()
    if config_file is None:
        config_file = os.environ.get(CONFIG_FILE_ENV) or None

    @blueprint.get("/static/sign-in.json")
    def sign_in() -> Response:
        local = browser_is_local(g.get("client_ip"), request.headers)
        response = jsonify(sign_in_hint(config, config_file, local))
        response.headers["Cache-Control"] = "no-store"
        response.headers.update(SECURITY_HEADERS)
        return response

    @blueprint.get("/")
    def index() -> Response:
        return _serve(directory, "index.html")

    @blueprint.get("/static/<name>")
    def static_file(name: str) -> Response:
        if name not in STATIC_FILES:
            abort(404)
        return _serve(directory, name)

    return blueprint


def serve_file(directory: Path, name: str, security_headers: dict[str, str]) -> Response:
    """One of the gateway's own files, revalidated on every load (``no-cache``: an
    upgrade shows at once) and under the page's security headers."""
    response = send_from_directory(directory, name, max_age=0, conditional=True)
    response.headers["Cache-Control"] = CACHE_CONTROL
    response.headers.update(security_headers)
    return response


def _serve(directory: Path, name: str) -> Response:
    return serve_file(directory, name, SECURITY_HEADERS)
