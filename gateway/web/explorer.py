"""The GraphQL explorer (GraphiQL) at ``GET /graphql``, served entirely from this package.

GraphiQL and React are vendored in ``gateway/web/graphiql/vendor/`` (pinned versions, their
licences, re-created by ``scripts/vendor-graphiql``), so the explorer works on a machine
with no internet and the page may load nothing but its own files: the
Content-Security-Policy allows this origin only. ``data:`` is allowed for fonts and
images because GraphiQL's stylesheet embeds its fonts and icons that way (no request
leaves the page for them). GraphiQL's dialogs add one ``<style>`` element (to stop the
page scrolling behind them); it carries the page's nonce, fresh for every page, which
the policy allows besides this origin's style sheets.

The files hold no data, so they need no token; the queries the page sends to
``POST /graphql`` do. With ``graphql.explorer = false`` none of this is served.
"""

from __future__ import annotations

import secrets
from functools import lru_cache
from importlib import resources
from pathlib import Path

from flask import Blueprint, Response, abort

from gateway.web.dashboard import serve_file

PAGE = "index.html"
ASSETS_PREFIX = "/graphql/assets/"
# Our own files, then the vendored ones: nothing else under the prefix is served.
OWN_FILES = frozenset({"explorer.js", "explorer.css"})
VENDOR_FILES = frozenset({"graphiql.min.js", "graphiql.min.css", "react.production.min.js",
                          "react-dom.production.min.js", "THIRD-PARTY-LICENSES.txt",
                          "MANIFEST.json"})

NONCE_MARK = "__NONCE__"  # in index.html, replaced by each page's nonce
CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "font-src 'self' data:",
    "connect-src 'self'",
    "form-action 'none'",
    "frame-ancestors 'none'",
    "base-uri 'none'",
))
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}
# The vendored files change only with a new wagate, but have no fingerprinted names:
# served like the dashboard's (serve_file: no-cache), the browser keeps them and asks
# (If-None-Match) before each use.


def page_policy(nonce: str) -> str:
    """The page's policy: the files' own, plus styles carrying this page's nonce."""
    return CONTENT_SECURITY_POLICY.replace("style-src 'self'",
                                           f"style-src 'self' 'nonce-{nonce}'")


def files_dir() -> Path:
    return Path(str(resources.files("gateway.web").joinpath("graphiql")))


def is_explorer_path(path: str) -> bool:
    """The explorer page or one of its files (public when the explorer is on)."""
    return path == "/graphql" or path.startswith(ASSETS_PREFIX)


@lru_cache(maxsize=1)
def _page_template() -> str:
    return (files_dir() / PAGE).read_text(encoding="utf-8")


def page_response() -> Response:
    """The explorer page itself (the app's ``GET /graphql`` view returns it), with a
    fresh nonce; never cached, since the nonce must not be reused."""
    nonce = secrets.token_urlsafe(18)
    response = Response(_page_template().replace(NONCE_MARK, nonce), mimetype="text/html")
    response.headers.update(SECURITY_HEADERS)
    response.headers["Content-Security-Policy"] = page_policy(nonce)
    response.headers["Cache-Control"] = "no-store"
    return response


def explorer_blueprint() -> Blueprint:
    """The explorer's files under ``/graphql/assets/``."""
    blueprint = Blueprint("explorer", __name__)
    directory = files_dir()

    @blueprint.get(ASSETS_PREFIX + "<name>")
    def asset(name: str) -> Response:
        if name in OWN_FILES:
            return _serve(directory, name)
        if name in VENDOR_FILES:
            return _serve(directory / "vendor", name)
        abort(404)

    return blueprint


def _serve(directory: Path, name: str) -> Response:
    return serve_file(directory, name, SECURITY_HEADERS)
