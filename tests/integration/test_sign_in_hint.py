"""The sign-in page's token command names this machine's paths only for a browser on
the machine itself. A request that came through a proxy is not such a browser, even
when the proxy runs on the gateway's host and is not (yet) in auth.trusted_proxies:
then every request reaches the gateway from 127.0.0.1 (issue 12 review)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import requests

from gateway.auth.sign_in import CONFIG_FILE_ENV
from gateway.cli.ownership import sweep_owned
from gateway.cli.run_state import read_record
from tests.integration.harness import (
    Gateway,
    _die_with_parent,
    free_port,
    stop_on_termination,
    wait_for,
)

REPO = Path(__file__).resolve().parents[2]


def hint(gw: Gateway, headers: dict[str, str]) -> str:
    response = requests.get(f"{gw.url}/static/sign-in.json", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    body = response.json()
    return body["command"] + " " + body["note"]


def test_a_proxied_request_from_loopback_gets_no_paths_of_this_machine(
        make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway().start()
    root = str(gw.root.resolve())
    assert root in hint(gw, {})  # a browser on this machine gets the real command
    # nginx on this host, auth.trusted_proxies not set: the peer is 127.0.0.1 but the
    # headers name the browser elsewhere.
    for headers in ({"X-Forwarded-For": "203.0.113.5"},
                    {"X-Forwarded-For": "127.0.0.1, 203.0.113.5"},
                    {"X-Forwarded-For": "not-an-address"},
                    {"X-Real-IP": "203.0.113.5"},
                    {"Forwarded": 'for="[2001:db8::1]:4711";proto=https'},
                    {"Via": "1.1 proxy.example"}):
        shown = hint(gw, headers)
        assert root not in shown, headers
        assert "--config CONFIG" in shown, headers
    # A local proxy that says the browser is local too (every hop loopback) is local.
    assert root in hint(gw, {"X-Forwarded-For": "127.0.0.1", "Forwarded": "for=127.0.0.1"})


def test_behind_a_trusted_proxy_a_forged_loopback_hop_is_not_local(
        make_gateway: Callable[..., Gateway]) -> None:
    """nginx appends the address it saw to what the client sent."""
    gw = make_gateway({"auth": {"trusted_proxies": ["127.0.0.1/32"]}}).start()
    root = str(gw.root.resolve())
    assert root not in hint(gw, {"X-Forwarded-For": "127.0.0.1, 203.0.113.5"})
    assert root not in hint(gw, {"X-Forwarded-For": "::1, 127.0.0.1, 198.51.100.7"})


def test_a_gateway_without_a_config_file_names_none_it_merely_inherited(
        tmp_path: Path) -> None:
    """``wagate serve`` passes its config file to the web process in WAGATE_CONFIG_FILE;
    started without one, it left a value inherited from its own environment (another
    gateway's, a shell's) in place, and the hint named that file: the token went there."""
    stale = tmp_path / "another" / "gateway.toml"
    port, admin_port = free_port(), free_port()
    output = tmp_path / "terminal.log"
    stop_on_termination()
    with open(output, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--demo", "--data-dir",
             str(tmp_path / "data"), "--port", str(port), "--admin-port", str(admin_port)],
            cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(REPO), CONFIG_FILE_ENV: str(stale)},
            preexec_fn=_die_with_parent(os.getpid()))
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(output.read_text(errors="replace"))
        try:
            return requests.get(url + "/readyz", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    try:
        wait_for(ready, 60, 0.1, "the gateway to be ready")
        body = requests.get(url + "/static/sign-in.json", timeout=10).json()
        assert str(stale) not in body["command"], body
        assert "--config" not in body["command"], body  # the embedded defaults: no file
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, output.read_text(errors="replace")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        record = read_record(tmp_path / "data")
        assert record is None or sweep_owned(record.mark, settle=0.5, grace=3) == "clean"
