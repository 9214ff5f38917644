"""/metrics, /admin/health, `wagate status` and `wagate drain` against a real gateway.

A scripted scenario (pair, sends that succeed, are rejected, are invalid or hit a
limit, an outage that queues messages, a drain) runs on a gateway with two gunicorn
workers; both workers are replaced half-way, so the web tier's counts are spread over
four processes, two of them dead by the time of the scrape. The scrape is read with
Prometheus' own text parser and must match what happened, exactly.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.harness import Gateway, GraphQLResult, expect_error, free_port, wait_for

OK = {"sendWhatsAppNotification": True}
SEND = ("mutation($p: String!, $m: String!) { "
        "sendWhatsAppNotification(phoneNumber: $p, message: $m) }")
Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def scrape(gw: Gateway) -> Samples:
    response = gw.http.get(gw.url + "/metrics", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = \
                sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name][tuple(sorted(labels.items()))]


def send(gw: Gateway, phone: str, text: str) -> GraphQLResult:
    """On a connection of its own, so that the kernel spreads sends over the workers."""
    response = gw.post_graphql({"query": SEND, "variables": {"p": phone, "m": text}},
                               headers={"Connection": "close"})
    assert response.status_code == 200, response.text
    return GraphQLResult(response.json())


def web_workers(gw: Gateway) -> set[int]:
    """gunicorn's workers: the children of the web server's master process."""
    master = (gw.run_state() or {})["web_pgid"]
    workers = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2:].split()
            if fields[0] != "Z" and int(fields[1]) == master:
                workers.add(int(entry))
    return workers


def replace_workers(gw: Gateway) -> set[int]:
    """Stop every worker gracefully; gunicorn starts new ones. Returns the old pids."""
    gw.http.close()  # no idle keep-alive connection holds an old worker back
    old = web_workers(gw)
    assert len(old) == 2, old
    for pid in old:
        gw.signal_process(pid, signal.SIGTERM)
    wait_for(lambda: len(new := web_workers(gw)) == 2 and not new & old, 30,
             message="gunicorn to replace both workers")
    wait_for(lambda: requests.get(gw.url + "/readyz", timeout=5,
                                  headers={"Connection": "close"}).status_code == 200, 30,
             message="the new workers to answer")
    return old


def metrics_as(gw: Gateway, token: str) -> requests.Response:
    """GET /metrics with ``token`` (every worker sees a new token at once)."""
    return requests.get(gw.url + "/metrics", timeout=10, headers={
        "Authorization": f"Bearer {token}", "Connection": "close"})


def wagate(gw: Gateway | None, *args: str) -> subprocess.CompletedProcess[str]:
    """``wagate ARGS`` as an operator on the gateway's host runs it (no API token)."""
    config = ["--config", str(gw.config_path)] if gw is not None else []
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args, *config],
                          capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


def test_metrics_match_a_scripted_scenario(make_gateway: Callable[..., Gateway]) -> None:
    started = time.time()
    gw = make_gateway({
        "http": {"workers": 2},
        "limits": {"per_number_per_minute": 2, "global_per_day": 20},
        # The outage below must queue sends, not exhaust the reconnect attempts.
        "reconnect": {"attempts": 1000, "delay_seconds": 0.2},
    }).start()

    # Pairing: one QR code (the first lasts 30 s), scanned.
    assert gw.connect().data == {"whatsAppConnect": True}
    gw.wait_state("QR_PENDING")
    scanned = gw.sim("scan")
    assert re.fullmatch(r"linked session 'default' to phone \+\d+\n", scanned.stdout)
    gw.wait_state("CONNECTED")

    # 4 sends that go through, served by the first two workers ...
    for i in range(4):
        assert send(gw, f"+1415555030{i}", f"ok {i}").data == OK
    dead = replace_workers(gw)
    # ... then everything else by their replacements.
    gw.sim("fail-next", "2")
    for i in range(2):
        expect_error(send(gw, f"+1415555031{i}", f"rejected {i}"), "SEND_FAILED")
    for bad in ("12", "+999 1", "call me maybe"):
        expect_error(send(gw, bad, "invalid"), "INVALID_NUMBER")
    assert send(gw, "+14155550320", "limit 1").data == OK
    assert send(gw, "+14155550320", "limit 2").data == OK
    for i in range(3):
        error = expect_error(send(gw, "+14155550320", f"over {i}"), "RATE_LIMITED")
        assert error["extensions"]["scope"] == "recipient_minute"
    metrics = scrape(gw)  # at once: the minute window that refused them is still full
    assert value(metrics, "wagate_rate_limit_usage_ratio", scope="recipient_minute") == 1.0
    assert value(metrics, "wagate_rate_limit_usage_ratio", scope="recipient_hour") == 0.02
    assert value(metrics, "wagate_rate_limit_usage_ratio", scope="global_day") == 8 / 20

    # An outage: 3 sends are accepted and wait in the queue.
    gw.sim("drop", "--down-for", "120")
    gw.wait_state("RECONNECTING")
    for i in range(3):
        assert send(gw, f"+1415555033{i}", f"queued {i}").data == OK
    metrics = scrape(gw)
    assert value(metrics, "wagate_queue_depth", session="default") == 3
    assert value(metrics, "wagate_session_connected", session="default") == 0
    assert value(metrics, "wagate_session_state", session="default", state="RECONNECTING") == 1
    assert value(metrics, "wagate_reconnects_total", session="default") == 1

    # `wagate status` says the same as /admin/health, as JSON and as a table.
    health = gw.health()
    status = wagate(gw, "status", "--json")
    assert status.returncode == 0, status.stderr
    document = json.loads(status.stdout)
    assert document["health"] == health["health"] == {
        "default": {"gateway_status": "connecting", "state": "RECONNECTING"}}
    assert document["meta"] == health["meta"] == {"api_status": "stable",
                                                  "version": health["version"]}
    assert document["queue"] == health["queue"] == {"depth": 3, "bySession": {"default": 3},
                                                    "uncertainTotal": 0}
    assert [s["session"] for s in document["sessions"]] == ["default"]
    assert document["sessions"][0]["gatewayStatus"] == "connecting"
    table = wagate(gw, "status")
    assert table.returncode == 0, table.stderr
    row = next(line for line in table.stdout.splitlines() if line.startswith("default "))
    phone = health["sessions"][0]["phoneNumber"]
    assert row.split()[:4] == ["default", "connecting", "RECONNECTING", phone]
    assert row.split()[6] == "3"  # the queue column
    assert "queue: 3 messages waiting" in table.stdout

    # `wagate drain` waits for the queue: it cannot empty during the outage ...
    stuck = wagate(gw, "drain", "--timeout", "0.5", "--interval", "0.1")
    assert stuck.returncode == 1, stuck
    assert stuck.stdout.startswith("timed out after 0.5 s: 3 messages still waiting; session "
                                   "'default' is RECONNECTING"), stuck.stdout
    assert stuck.stderr.splitlines()[0] == "3 messages waiting"  # no animation in a pipe
    # ... and does once the service is back: started before, it sees the count fall.
    with subprocess.Popen([sys.executable, "-m", "gateway.cli", "drain", "--timeout", "60",
                           "--interval", "0.05", "--config", str(gw.config_path)],
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as draining:
        assert draining.stderr is not None
        assert draining.stderr.readline() == "3 messages waiting\n"  # it has looked once
        gw.sim("restore")
        out, err = draining.communicate(timeout=120)
    assert draining.returncode == 0, (out, err)
    assert re.fullmatch(r"queue empty: 3 messages sent in \d+\.\d s\n", out), out
    assert set(err.splitlines()) <= {f"{n} message{'s' * (n > 1)} waiting" for n in (1, 2, 3)}
    gw.wait_state("CONNECTED")
    assert len(gw.inbox()) == 4 + 2 + 3

    metrics = scrape(gw)
    requests_total = metrics["wagate_graphql_requests_total"]
    sends = {dict(k)["outcome"]: v for k, v in requests_total.items()
             if dict(k)["operation"] == "sendWhatsAppNotification"}
    assert sends == {"ok": 4 + 2 + 3, "SEND_FAILED": 2, "INVALID_NUMBER": 3, "RATE_LIMITED": 3}
    assert value(metrics, "wagate_graphql_requests_total", operation="whatsAppConnect",
                 outcome="ok") == 1
    assert value(metrics, "wagate_graphql_request_duration_seconds_count",
                 operation="sendWhatsAppNotification") == 9 + 2 + 3 + 3
    assert metrics["wagate_send_errors_total"] == {
        (("code", "SEND_FAILED"),): 2, (("code", "INVALID_NUMBER"),): 3,
        (("code", "RATE_LIMITED"),): 3}
    messages = {dict(k)["state"]: v for k, v in metrics["wagate_messages_total"].items()}
    assert messages == {"QUEUED": 11, "SENDING": 11, "SENT": 9, "DELIVERED": 0, "READ": 0,
                        "FAILED": 2, "EXPIRED": 0}
    assert metrics["wagate_rate_limited_total"] == {
        (("scope", "recipient_minute"),): 3, (("scope", "recipient_hour"),): 0,
        (("scope", "global_day"),): 0, (("scope", "queue"),): 0,
        (("scope", "warmup_day"),): 0}
    assert value(metrics, "wagate_queue_depth", session="default") == 0
    assert value(metrics, "wagate_qr_codes_issued_total", session="default") == 1
    assert value(metrics, "wagate_qr_scans_total", session="default") == 1
    assert value(metrics, "wagate_reconnects_total", session="default") == 1
    assert value(metrics, "wagate_session_connected", session="default") == 1
    connected = value(metrics, "wagate_session_connected_seconds_total", session="default")
    assert 0 < connected < time.time() - started
    assert metrics["wagate_messages_uncertain_total"] == {(): 0}
    assert metrics["wagate_actors_up"] == {(): 1}

    # /metrics is for the health action; a token limited to sessions sees only theirs.
    seen = metrics_as(gw, gw.make_token("viewer", sessions=["elsewhere"]))
    assert seen.status_code == 200
    assert "wagate_actors_up 1.0" in seen.text and 'session="default"' not in seen.text
    assert "wagate_messages_total" not in seen.text  # every session's: not for this token
    refused = metrics_as(gw, gw.make_token("sender"))
    assert refused.status_code == 403 and "FORBIDDEN" in refused.text
    anonymous = requests.get(gw.url + "/metrics", timeout=10)
    assert anonymous.status_code == 401

    # The counts above came from both generations of workers: the dead ones' files count.
    writers = {int(m.group(1)) for f in (gw.data_dir / "run" / "metrics").iterdir()
               if (m := re.fullmatch(r"\w+_(\d+)\.db", f.name))}
    assert writers & dead and writers - dead, (writers, dead)


def test_status_and_drain_say_when_no_gateway_runs(tmp_path: Path) -> None:
    port = str(free_port())
    for command in (["status"], ["status", "--json"], ["drain", "--timeout", "1"]):
        done = wagate(None, *command, "--data-dir", str(tmp_path / "data"),
                      "--admin-port", port)
        assert done.returncode == 1, done
        assert done.stdout == ""
        assert f"no gateway is running: nothing listens on 127.0.0.1:{port}" in done.stderr
        assert "wagate serve" in done.stderr


def test_sim_scan_without_a_code_to_scan_says_so(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()  # a stopped gateway's (a missing one is refused at once)
    done = wagate(None, "sim", "scan", "--session", "nobody", "--wait", "0.3",
                  "--data-dir", str(tmp_path / "data"))
    assert done.returncode == 1, done
    lines = done.stderr.splitlines()
    assert lines[0] == "waiting for session 'nobody' to show a QR code"
    assert "no QR code appeared for session 'nobody' within 0.3 s" in lines[-1]
    assert "whatsAppConnect" in lines[-1]
