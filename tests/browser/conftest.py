"""Browser tests: Playwright drives Debian's headless Chromium against real gateways.

``scripts/system-deps`` installs Chromium (Playwright never downloads a browser here).
Every page may reach only the gateway under test: a request to any other address is
refused and fails the test, and so does a script error or a Content-Security-Policy
violation in the page. Screenshots of each step go to a new temporary directory of the
run's own (``wagate-screenshots-*``, named at the end of the run and kept: they are what
the run produced to look at; not pytest's basetemp, which concurrent runs rotate away),
or to ``WAGATE_SCREENSHOTS`` when that is set:
``WAGATE_SCREENSHOTS=shots python -m pytest tests/browser``.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Route, expect, sync_playwright

from tests.integration.conftest import make_gateway  # noqa: F401 (a fixture, used by name)
from tests.integration.harness import Gateway

SCREENSHOTS_ENV = "WAGATE_SCREENSHOTS"
_screenshots: list[Path] = []  # the run's screenshot directory, once made
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "[::1]", "::1"}
# Chromium reports an HTTP error answer as a console error; the 401/403 of a wrong
# token or role are expected (the page shows their message), anything else is not.
EXPECTED_CONSOLE = re.compile(r"Failed to load resource: the server responded with a "
                              r"status of 40[13]")
# Shrunk pairing timings: the code rotates within seconds and the window closes after
# 4 + 3 + 3 = 10 s, so a test sees rotation and QR_EXPIRED quickly.
FAST_QR = {"qr": {"first_seconds": 4.0, "next_seconds": 3.0, "codes": 3}}

expect.set_options(timeout=15_000)


def chromium_path() -> str:
    found = os.environ.get("WAGATE_CHROMIUM") or shutil.which("chromium")
    if not found:
        pytest.fail("Chromium is missing: run scripts/system-deps (as root), or set "
                    "WAGATE_CHROMIUM to a Chromium binary")
    return found


def screenshot_dir() -> Path:
    """Where this run's screenshots go: ``WAGATE_SCREENSHOTS``, or a new temporary
    directory, made at the first screenshot (a run that takes none leaves none)."""
    if not _screenshots:
        chosen = os.environ.get(SCREENSHOTS_ENV)
        directory = (Path(chosen).resolve() if chosen
                     else Path(tempfile.mkdtemp(prefix="wagate-screenshots-")))
        directory.mkdir(parents=True, exist_ok=True)
        _screenshots.append(directory)
    return _screenshots[0]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _screenshots:
        terminalreporter.write_line(f"dashboard screenshots: {_screenshots[0]}")


def shot(page: Page, name: str, full_page: bool = True) -> Path:
    """Save a screenshot of the page as a test artifact; returns its path."""
    directory = screenshot_dir()
    path = directory / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


def _descendant_table() -> list[tuple[int, str]]:
    """(pid, command name) of this test process's live descendants (Linux /proc)."""
    parents: dict[int, int] = {}
    names: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name_end = stat.rindex(")")
        fields = stat[name_end + 2:].split()
        if fields[0] == "Z":
            continue
        parents[int(entry.name)] = int(fields[1])
        names[int(entry.name)] = stat[stat.index("(") + 1:name_end]
    found: list[tuple[int, str]] = []
    frontier = {os.getpid()}
    while frontier:
        children = {pid for pid, parent in parents.items() if parent in frontier}
        found += [(pid, names[pid]) for pid in children]
        frontier = children
    return found


def _descendants() -> list[str]:
    """Command names of this test process's descendants."""
    return [name for _pid, name in _descendant_table()]


def _descendants_pids(prefixes: tuple[str, ...]) -> list[int]:
    """Pids of this test process's descendants whose command name contains one of
    ``prefixes`` (the browser: "chrom", "node")."""
    return [pid for pid, name in _descendant_table() if any(p in name for p in prefixes)]


@pytest.fixture
def browser(request: pytest.FixtureRequest) -> Iterator[Browser]:
    """Headless Chromium for one test; closed (with Playwright's driver) at its end.

    It sets up after ``make_gateway`` so that it is closed before the gateways stop: an
    open keep-alive connection would slow their graceful stop down."""
    request.getfixturevalue("make_gateway")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), headless=True)
        try:
            yield browser
        finally:
            browser.close()
    deadline = time.monotonic() + 10
    while (left := [n for n in _descendants() if "chrom" in n or n.startswith("node")]) and (
            time.monotonic() < deadline):
        time.sleep(0.1)
    assert not left, f"browser processes left running: {left}"


@pytest.fixture
def open_page(browser: Browser) -> Iterator[Callable[..., Page]]:
    """``open_page(gw, viewport=DESKTOP)``: a fresh browser context (own session
    storage) on the dashboard of ``gw``. At the end every context is closed, and any
    script error, CSP violation or request outside the gateway fails the test."""
    contexts = []
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error" and not EXPECTED_CONSOLE.search(message.text):
            problems.append(f"console error: {message.text}")

    def open_(gw: Gateway, viewport: dict[str, int] | None = None) -> Page:
        context = browser.new_context(viewport=viewport or DESKTOP, base_url=gw.url,
                                      service_workers="block")
        contexts.append(context)
        gateway_origin = urlsplit(gw.url).netloc

        def guard(route: Route) -> None:
            url = urlsplit(route.request.url)
            if url.netloc == gateway_origin and url.hostname in LOOPBACK_HOSTS:
                route.continue_()
            else:
                problems.append(f"request outside the gateway: {route.request.url}")
                route.abort()

        context.route("**/*", guard)
        page = context.new_page()
        page.on("console", on_console)
        page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
        page.goto("/")
        return page

    yield open_
    for context in contexts:
        context.close()
    assert not problems, "\n".join(problems)
