"""A process that hangs is restarted like one that crashed (issue 16: real faults, not
only crashes).

A process stuck in a call (a deadlock in a C library, a disk that stopped answering)
never exits, so the supervisor's restart-on-exit never saw it: a stuck outbox made
every send wait out its deadline for as long as the gateway ran. The fault here is
SIGSTOP, sent from outside: the process lives on and reads no mail, as a stuck one.
The supervisor's watchdog (``actors.supervisor.watchdog``) must kill it within
``supervisor.hang_seconds`` plus a question's period, and nothing accepted may be lost.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable
from typing import Any

from tests.integration.harness import Gateway, GraphQLResult, wait_for
from tests.integration.test_chaos import health

HANG = {"supervisor": {"hang_seconds": 3}}
OK = {"sendWhatsAppNotification": True}
PHONE, DIGITS = "+14155550161", "14155550161"
SEND = ("mutation($i: SendWhatsAppMessageInput!) { sendWhatsAppMessage(input: $i) "
        "{ id idempotencyKey } }")
WAIT = 30.0  # seconds: 3 to notice, 1 for a question, the restart's backoff (1 s), start


def send(gw: Gateway, text: str, key: str) -> GraphQLResult:
    return gw.gql(SEND, {"i": {"phoneNumber": PHONE, "message": text, "idempotencyKey": key}},
                  timeout=60)


def ok(result: GraphQLResult) -> dict[str, Any] | None:
    """The message a send accepted; None while it is refused (the outbox restarts)."""
    return None if result.errors else result.data["sendWhatsAppMessage"]  # type: ignore[no-any-return]


def texts(gw: Gateway) -> list[str]:
    return [m["text"] for m in gw.inbox() if m["to"] == DIGITS]


def hang_reports(gw: Gateway) -> list[dict[str, Any]]:
    """The supervisor's log lines about a child it found hung."""
    path = gw.data_dir / "logs" / "actors.log"
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    return [json.loads(line) for line in lines if "stopped answering" in line]


def test_a_stopped_outbox_is_killed_and_restarted_and_loses_nothing(
        make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway(HANG).start()
    gw.link()
    assert gw.send(PHONE, "before").data == OK
    pid = int(gw.health()["processes"]["outbox"])
    gw.signal_process(pid, signal.SIGSTOP)
    answers: list[GraphQLResult] = []
    during = threading.Thread(target=lambda: answers.append(send(gw, "during", "key-during")))
    during.start()  # its outcome is unknowable while the outbox is stuck: UNCERTAIN

    # Seen from outside (a health request waits on the stuck outbox until its timeout).
    wait_for(lambda: pid not in gw.actor_pids(), WAIT, 0.1, f"the stopped outbox {pid} killed")
    wait_for(lambda: health(gw).get("processes", {}).get("outbox") not in (None, pid),
             WAIT, 0.1, "a new outbox process")
    during.join(60)
    assert not during.is_alive()
    [report] = hang_reports(gw)
    assert (report["child"], report["pid"]) == ("outbox", pid), report
    assert report["level"] == "error" and report["silent_seconds"] >= 3
    assert report["event"].endswith("killing its process so that it restarts"), report

    # What a client does with an answer it cannot trust: send again with the same key.
    [answer] = answers
    if answer.errors:
        assert answer.error_code in {"UNCERTAIN", "UNAVAILABLE"}, answer
        again = wait_for(lambda: ok(send(gw, "during", "key-during")), WAIT, 0.5,
                         "the resend with the same key accepted")
        assert again["idempotencyKey"] == "key-during"
    assert gw.send(PHONE, "after").data == OK
    wait_for(lambda: sorted(texts(gw)) == ["after", "before", "during"], WAIT, 0.2,
             "each text delivered once")
    assert gw.status()["state"] == "CONNECTED"


def test_a_stopped_session_process_is_replaced_without_a_qr(
        make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway(HANG).start()
    gw.link()
    pid = gw.session_pid()
    gw.signal_process(pid, signal.SIGSTOP)

    def replaced() -> int | None:
        [entry] = [s for s in health(gw).get("sessions", []) if s["session"] == "default"] or [{}]
        if entry.get("state") == "CONNECTED" and entry.get("pid") not in (None, pid):
            return int(entry["pid"])
        return None

    new = wait_for(replaced, WAIT, 0.1, "a new session process, connected")
    assert pid not in gw.actor_pids()
    assert new in gw.actor_pids()
    assert gw.status()["qrCodeRaw"] is None
    [report] = hang_reports(gw)
    assert (report["child"], report["pid"]) == ("session:default", pid), report
    assert gw.send(PHONE, "after the hang").data == OK
    wait_for(lambda: texts(gw) == ["after the hang"], WAIT, 0.2, "the text delivered")
