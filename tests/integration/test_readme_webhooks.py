"""The README's "Webhooks in two minutes" works as written against the demo: the block
is read from the README (between its markers) and run literally by bash against a
gateway on configs/demo.toml (no tokens, loopback receivers allowed), with only the
ports and the data_dir moved to this test's. The receiver it writes must print the
message's SENT, DELIVERED and READ in that order, and the reply's message.received:
it prints only what verified, so each line is a signed event.

``wagate`` and ``python3`` in the block are this checkout's code and interpreter (bash
functions); ``wagate sim`` finds the gateway by a configs/gateway.toml in the block's
working directory, as it would from a newcomer's checkout."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from tests.integration.harness import Gateway, free_port, group_alive, wait_for

REPO = Path(__file__).resolve().parents[2]
MARKER = "<!-- webhooks-in-two-minutes -->"
END = "<!-- /webhooks-in-two-minutes -->"


def webhooks_block() -> str:
    """The sh block between the section's markers."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split(MARKER, 1)[1].split(END, 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None
    return block.group(1)


def gql_function() -> str:
    """The Quickstart's ``gql`` shell function, which the block uses."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    return next(line for line in readme.splitlines() if line.startswith("gql() {"))


@pytest.fixture
def running() -> Iterator[list[subprocess.Popen[bytes]]]:
    """The block's bash and everything it started (the receiver, in the background)
    share one new process group; it is ended here, and must be gone."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        group = process.pid  # its own group (start_new_session): nothing else is in it
        if group_alive(group):
            os.killpg(group, signal.SIGTERM)
        process.wait(10)
        wait_gone(group)


def wait_gone(group: int) -> None:
    wait_for(lambda: not group_alive(group), 10, message=f"process group {group} to end")


def link(gw: Gateway) -> None:
    """Quickstart steps 2 and 3, without a token (the demo has none)."""
    answer = requests.post(gw.url + "/graphql", timeout=30,
                           json={"query": "mutation { whatsAppConnect }"})
    assert answer.json() == {"data": {"whatsAppConnect": True}}, answer.text

    def state() -> str:
        return str(requests.post(gw.url + "/graphql", timeout=30, json={
            "query": "{ whatsAppStatus { state } }"}).json()["data"]["whatsAppStatus"]["state"])

    wait_for(lambda: state() == "QR_PENDING", 15, message="a QR code")
    gw.sim("scan")
    wait_for(lambda: state() == "CONNECTED", 15, message="the session to be linked")


def test_the_readme_webhook_walkthrough_prints_signed_events_in_order(
        make_gateway: Callable[..., Gateway], running: list[subprocess.Popen[bytes]]) -> None:
    gw = make_gateway()
    demo = (REPO / "configs" / "demo.toml").read_text(encoding="utf-8")
    gw.config_path.write_text(demo.replace('"./data-demo"', f'"{gw.data_dir}"'),
                              encoding="utf-8")
    shutil.rmtree(gw.data_dir, ignore_errors=True)
    gw.start()
    link(gw)

    work = gw.root / "newcomer"
    (work / "configs").mkdir(parents=True)
    (work / "configs" / "gateway.toml").write_text(
        f'[storage]\ndata_dir = "{gw.data_dir}"\n[actors]\nadmin_port = {gw.admin_port}\n',
        encoding="utf-8")
    receiver_port = free_port()
    block = webhooks_block()
    assert block.count("9000") == 3 and "wagate sim receipt" in block
    python = shlex.quote(sys.executable)
    script = "\n".join([
        "set -euo pipefail",
        gql_function().replace("localhost:8080", f"127.0.0.1:{gw.port}"),
        f'wagate() {{ {python} -m gateway.cli "$@"; }}',
        f'python3() {{ {python} "$@"; }}',
        block.replace("9000", str(receiver_port)),
    ])
    out = gw.root / "newcomer.out"
    with open(out, "wb") as sink:
        bash = subprocess.Popen(["bash", "-c", script], cwd=work, stdout=sink,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, "PYTHONPATH": str(REPO)},
                                start_new_session=True)
    running.append(bash)
    assert bash.wait(60) == 0, out.read_text(errors="replace")

    def events() -> list[list[str]]:
        return [line.split() for line in out.read_text(errors="replace").splitlines()
                if line.startswith("message.")]

    wait_for(lambda: any(e[0] == "message.received" for e in events())
             and sum(e[0] == "message.status" for e in events()) >= 4, 20,
             message="the receiver to print the message's states and the reply")
    status = [e for e in events() if e[0] == "message.status"]
    message_id = status[0][2]
    assert [e[1] for e in status if e[2] == message_id] == ["QUEUED", "SENT", "DELIVERED",
                                                             "READ"], events()
    received = [e for e in events() if e[0] == "message.received"]
    assert len(received) == 1 and received[0][1] == "Thanks", events()

    # What it printed verified: a request signed with another secret is refused.
    forged = requests.post(f"http://127.0.0.1:{receiver_port}/hook", data=b"{}", timeout=10,
                           headers={"webhook-id": "evt_x", "webhook-timestamp": "1",
                                    "webhook-signature": "v1,AAAA"})
    assert forged.status_code == 400
