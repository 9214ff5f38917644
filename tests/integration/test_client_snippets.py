"""The client examples in examples/clients run, as shipped, against a real gateway.

Each example does what the specification's client guide does: check the status,
connect, poll until the simulated phone scanned the QR code, send a notification,
and print the code of a refused send. The test plays the phone (``wagate sim scan``
once the session shows a QR code) and then finds the message in the simulated
recipients' inbox: an example that polled a cached status, sent nothing, or
swallowed the error code fails here.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.harness import Gateway, wait_for

pytestmark = pytest.mark.integration

CLIENTS = Path(__file__).resolve().parents[2] / "examples" / "clients"
# Shrunk for the test (the examples poll every 2 s and wait up to 180 s by default).
POLL_SECONDS = "0.1"
LINK_TIMEOUT_SECONDS = "60"
RUN_TIMEOUT = 120.0
NPM_TIMEOUT = 600.0


def run_example(gateway: Gateway, command: list[str], cwd: Path, text: str,
                extra_env: dict[str, str] | None = None) -> str:
    """Run one example against ``gateway``, scan its QR code when the session shows one,
    and return what the example printed; it must exit with 0."""
    log_path = cwd / "example.log"
    env = dict(os.environ, WAGATE_URL=gateway.url + "/graphql", WAGATE_TOKEN=gateway.token,
               WAGATE_TO="+1 415 555 2671", WAGATE_TEXT=text,
               WAGATE_POLL_SECONDS=POLL_SECONDS, WAGATE_LINK_TIMEOUT_SECONDS=LINK_TIMEOUT_SECONDS,
               **(extra_env or {}))
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        gateway.wait_state("QR_PENDING", timeout=60)  # the example asked for pairing
        gateway.sim("scan")
        code = process.wait(RUN_TIMEOUT)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
    output = log_path.read_text(errors="replace")
    assert code == 0, output
    return output


def check_outcome(gateway: Gateway, output: str, text: str) -> None:
    """The notification reached the recipient once; the bad number's code was shown."""
    received = [m for m in gateway.inbox() if m["text"] == text]
    assert len(received) == 1, (gateway.inbox(), output)
    assert received[0]["to"].lstrip("+") == "14155552671", received
    assert "refused: INVALID_NUMBER" in output, output


def test_curl_script(make_gateway: Callable[..., Gateway], tmp_path: Path) -> None:
    gateway = make_gateway().start()
    text = 'Your code is 123456\nfrom "curl.sh" \\ with a tab\there'
    output = run_example(gateway, ["bash", str(CLIENTS / "curl.sh")], tmp_path, text)
    check_outcome(gateway, output, text)
    assert "state: QR_PENDING" in output, output


# A curl on PATH before the real one that writes down its arguments, then runs it.
RECORDING_CURL = """#!/bin/sh
printf '%s\\n' "$*" >> "$RECORD"
exec "$REAL_CURL" "$@"
"""


def test_curl_script_keeps_the_token_and_the_text_off_command_lines(
        make_gateway: Callable[..., Gateway], tmp_path: Path) -> None:
    """A process's command line is readable by every user of the machine (ps, /proc):
    curl.sh put ``Authorization: Bearer <token>`` and the message (a one-time code) in
    curl's arguments. Control characters other than newline and tab (a CRLF text) made
    its JSON invalid."""
    real_curl = shutil.which("curl")
    assert real_curl, "curl is missing"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "curl").write_text(RECORDING_CURL, encoding="utf-8")
    (bin_dir / "curl").chmod(0o755)
    record = tmp_path / "curl-arguments.txt"
    gateway = make_gateway().start()
    text = "Your code is 975310\r\nwith a carriage return and a \x01 bell"
    output = run_example(gateway, ["bash", str(CLIENTS / "curl.sh")], tmp_path, text,
                         {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                          "RECORD": str(record), "REAL_CURL": real_curl})
    check_outcome(gateway, output, text)
    arguments = record.read_text(encoding="utf-8")
    assert arguments.count("--max-time") >= 3, arguments  # every request went through it
    assert gateway.token not in arguments
    assert "975310" not in arguments


def test_python_gql_client(make_gateway: Callable[..., Gateway], tmp_path: Path) -> None:
    gateway = make_gateway().start()
    text = "Your code is 654321 (gql)"
    output = run_example(gateway, [sys.executable, str(CLIENTS / "python_gql.py")],
                         tmp_path, text)
    check_outcome(gateway, output, text)
    assert "state: QR_PENDING" in output and "connected as" in output, output


def npm() -> str:
    found = shutil.which("npm")
    if not found:
        pytest.fail("npm is missing: run scripts/system-deps (as root), or install "
                    "Node.js 18+ with npm")
    return found


def test_typescript_apollo_client(make_gateway: Callable[..., Gateway], tmp_path: Path) -> None:
    """Installed exactly as locked (``npm ci``), type-checked and compiled by ``tsc``,
    then run with node: the Apollo example works as a user would copy it."""
    project = tmp_path / "typescript"
    shutil.copytree(CLIENTS / "typescript", project,
                    ignore=shutil.ignore_patterns("node_modules", "dist"))
    for step in ([npm(), "ci", "--no-audit", "--no-fund"], [npm(), "run", "build"]):
        done = subprocess.run(step, cwd=project, capture_output=True, text=True,
                              timeout=NPM_TIMEOUT, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, f"{step}: {done.stdout}\n{done.stderr}"
    gateway = make_gateway().start()
    text = "Your code is 246810 (Apollo)"
    output = run_example(gateway, ["node", str(project / "dist" / "client.js")], project, text)
    check_outcome(gateway, output, text)
    assert "state: QR_PENDING" in output and "connected as" in output, output


def test_apollo_upload_client_sends_a_file(make_gateway: Callable[..., Gateway],
                                           tmp_path: Path) -> None:
    """``apollo-upload-client`` (npm, installed exactly as locked), unmodified, sends a
    file to ``sendWhatsAppMedia``: a real client of the GraphQL multipart request
    specification works, and the recipient gets the bytes."""
    from tests import media_fixtures as fx

    project = tmp_path / "upload"
    shutil.copytree(CLIENTS / "upload", project, ignore=shutil.ignore_patterns("node_modules"))
    done = subprocess.run([npm(), "ci", "--no-audit", "--no-fund"], cwd=project,
                          capture_output=True, text=True, timeout=NPM_TIMEOUT,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"npm ci: {done.stdout}\n{done.stderr}"
    gateway = make_gateway({"simulator": {"server_dir": str(tmp_path / "servers")}}).start()
    gateway.link()
    picture = tmp_path / "photo.png"
    picture.write_bytes(fx.png())
    env = {"PATH": os.environ.get("PATH", ""), "WAGATE_URL": gateway.url + "/graphql",
           "WAGATE_TOKEN": gateway.token, "WAGATE_TO": "+14155552671",
           "WAGATE_FILE": str(picture), "WAGATE_KIND": "IMAGE", "WAGATE_CAPTION": "from node"}
    run = subprocess.run(["node", "upload.mjs"], cwd=project, env=env, capture_output=True,
                         text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, f"{run.stdout}\n{run.stderr}"
    assert "IMAGE image/png" in run.stdout, run.stdout
    sha = run.stdout.split("sha256 ")[1].split()[0]
    at_recipient = wait_for(lambda: [m for m in gateway.inbox() if m.get("sha256") == sha],
                            15, 0.1, "the picture at the recipient")
    assert at_recipient[0]["text"] == "from node"
    out = tmp_path / "got.png"
    gateway.sim("media", at_recipient[0]["id"], "--out", str(out))
    assert out.read_bytes() == picture.read_bytes()
