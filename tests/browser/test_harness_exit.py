"""SIGTERM to pytest's own pid (not Ctrl-C, which reaches the whole process group) left
a browser test's gateway running. A child pytest runs a browser test that starts a
gateway and Chromium, and gets SIGTERM (or SIGKILL) half-way: nothing it started may
survive."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.cli.ownership import sweep_owned
from gateway.cli.run_state import read_record
from tests.integration.harness import group_alive, wait_for

REPO = Path(__file__).resolve().parents[2]

CHILD_TEST = '''
import json, os
from pathlib import Path

from tests.browser.conftest import browser  # noqa: F401 (fixtures, used by name)
from tests.browser.conftest import _descendants_pids
from tests.integration.conftest import make_gateway  # noqa: F401
from tests.integration.harness import wait_for


def test_runs_until_stopped(make_gateway, browser):
    gw = make_gateway().start()
    page = browser.new_page()
    page.goto(gw.url + "/")
    Path(os.environ["REPORT"]).write_text(json.dumps({
        "data_dir": str(gw.data_dir), "launcher": gw.process.pid,
        "browser": _descendants_pids(("chrom", "node"))}))
    wait_for(lambda: False, 300, 0.1, "the SIGTERM")
'''


def alive(pid: int) -> bool:
    """``pid`` runs (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] != "Z"


@pytest.fixture
def child_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "child"
    directory.mkdir()
    (directory / "test_child.py").write_text(CHILD_TEST)
    yield directory


def kill_if_browser(pid: int) -> None:
    """Clean-up after a failure: SIGKILL ``pid`` if it (still) is a browser process."""
    try:
        name = Path(f"/proc/{pid}/comm").read_text()
    except OSError:
        return
    if "chrom" in name or "node" in name:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["TERM", "KILL"])
def test_a_signal_to_pytest_stops_the_gateway_and_browser_it_started(
        child_dir: Path, signum: signal.Signals) -> None:
    """SIGTERM: pytest tears its fixtures down (the gateway stops gracefully). SIGKILL,
    where nothing in pytest runs: the launcher dies with its parent (PDEATHSIG), and
    Playwright's driver with its pipe."""
    report = child_dir / "report.json"
    child = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0",
         "--basetemp", str(child_dir / "tmp"), str(child_dir / "test_child.py")],
        cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**os.environ, "REPORT": str(report), "PYTHONPATH": str(REPO)})
    started: dict[str, Any] = {}
    mark = None
    try:
        wait_for(lambda: report.exists() and report.stat().st_size > 0, 90, 0.1,
                 "the child test to start its gateway and browser")
        started = json.loads(report.read_text())
        record = read_record(Path(started["data_dir"]))
        assert record is not None
        mark = record.mark
        state = json.loads((Path(started["data_dir"]) / "run" / "gateway.json").read_text())
        groups = [int(state["actor_pgid"]), int(state["web_pgid"])]
        assert started["browser"], "the child's browser processes were not found"

        child.send_signal(signum)  # to pytest's pid only, not its group
        output = child.communicate(timeout=90)[0].decode(errors="replace")
        assert child.returncode != 0, output

        browser_pids = [int(pid) for pid in started["browser"]]
        pids = [int(started["launcher"]), *browser_pids]
        wait_for(lambda: not [p for p in pids if alive(p)], 30, 0.1,
                 f"the child's launcher and browser to be gone (pids {pids})")
        wait_for(lambda: not [g for g in groups if group_alive(g)], 30, 0.1,
                 f"the gateway's process groups {groups} to be gone")
        assert sweep_owned(mark, settle=0.5, grace=3) == "clean", \
            "processes of the child's gateway survived"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        if mark is not None:
            sweep_owned(mark, settle=0.5, grace=3)
        for pid in started.get("browser", []):
            kill_if_browser(int(pid))
