"""``wagate serve --demo`` in a terminal: readable lines instead of JSON, the dashboard's
polling out of the way (DEBUG), and the dashboard's address first (issue 12, item 14)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from gateway.cli.ownership import sweep_owned
from gateway.cli.run_state import read_record
from tests.integration.harness import (
    FAST,
    _die_with_parent,
    _toml,
    free_port,
    stop_on_termination,
    wait_for,
)

REPO = Path(__file__).resolve().parents[2]
POLL = "query Sessions { whatsAppSessions { session state } }"


class Demo:
    """``wagate serve --demo`` on free loopback ports, its terminal output in a file."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data_dir = root / "data"
        self.port, self.admin_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = root / "gateway.toml"
        self.config.write_text(_toml({**FAST, "storage": {"data_dir": str(self.data_dir)}}))
        self.output = root / "terminal.log"
        stop_on_termination()
        with open(self.output, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "serve", "--demo", "--config",
                 str(self.config), "--port", str(self.port), "--admin-port",
                 str(self.admin_port)], cwd=REPO, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO)},
                preexec_fn=_die_with_parent(os.getpid()))

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"wagate serve --demo exited:\n{self.text()}")
        try:
            return requests.get(self.url + "/readyz", timeout=2,
                                headers={"Connection": "close"}).status_code == 200
        except requests.RequestException:
            return False

    def post(self, query: str, name: str) -> dict:
        return requests.post(self.url + "/graphql", json={"query": query, "operationName": name},
                             timeout=30, headers={"Connection": "close"}).json()

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)

    def cleanup(self) -> str:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        record = read_record(self.data_dir)
        return "clean" if record is None else sweep_owned(record.mark, settle=0.5, grace=3)


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    running = Demo(tmp_path)
    try:
        yield running
    finally:
        assert running.cleanup() == "clean", "processes of the demo survived"


def test_the_demo_logs_for_a_person_at_a_terminal(demo: Demo) -> None:
    wait_for(demo.ready, 60, 0.1, "the demo gateway to be ready")
    wait_for(lambda: "wagate is serving" in demo.text(), 10, 0.1, "the start banner")
    # What an open dashboard tab does, again and again: all of it reads.
    for _ in range(3):
        assert requests.get(demo.url + "/static/app.js", timeout=10).status_code == 200
        assert "errors" not in demo.post(POLL, "Sessions")
    # What changes something, or fails, is still worth a line.
    assert demo.post("mutation Connect { whatsAppConnect }", "Connect")["data"]
    assert demo.post('query Broken { whatsAppStatus(session: "no way!") { state } }',
                     "Broken")["errors"]
    assert demo.stop() == 0
    lines = demo.text().splitlines()

    assert lines and not [line for line in lines if line.lstrip().startswith("{")], \
        "JSON lines on the demo's terminal:\n" + "\n".join(lines[:5])
    banner = next(line for line in lines if "wagate is serving" in line)
    dashboard = banner.find(f"{demo.url}/")
    assert dashboard != -1 and dashboard < banner.find("/graphql"), banner
    requests_logged = [line for line in lines if " request " in f" {line} " or
                       "[info     ] request" in line]
    assert not [line for line in requests_logged if "Sessions" in line or "app.js" in line], \
        "polling logged at INFO:\n" + "\n".join(requests_logged)
    assert [line for line in requests_logged if "operation=Connect" in line], lines
    assert [line for line in requests_logged if "operation=Broken" in line], lines
