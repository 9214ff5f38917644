"""A send in flight when its session process is stopped is not sent twice (issue 16,
scenario C's duplicates), in multi-host mode with leases: a real ``wagate serve``
leader with ``cluster.database_url`` on a real PostgreSQL, the simulator's inbox as the
recipient.

The simulator stalls every send's answer after the message reached its recipient
(``wagate sim stall-after-send``): WhatsApp has the message, the session process does
not know yet. The process is then stopped the way a host's agent fences it (SIGTERM).
Without the sent journal its result died with it, the outbox found the message in
flight in an ended process, flagged it uncertain and sent it again: the recipient got
it twice. With it, the stopping process waits for the answer, journals it under its
lease epoch, and the outbox, finding it there, records it SENT: once in the inbox.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

from actors.transport.simulator import SimulatorServer
from tests.integration.harness import Gateway, GraphQLResult, wait_for
from tests.integration.test_session_lease import LEASE, pg  # noqa: F401 (the module's database)
from tests.pg import PgCluster

SESSION = "j1"
PHONE = "+14155552671"
STALL_SECONDS = 60.0  # ended by the test (stall 0) once the process is stopping
SEND = ("mutation($i: SendWhatsAppMessageInput!) { sendWhatsAppMessage(input: $i) { id } }")
MESSAGES = "query { whatsAppMessages { edges { node { id } } } }"
MESSAGE_QUERY = ("query($id: ID!) { whatsAppMessage(id: $id) { id state uncertain "
                 "whatsAppMessageId attempts } }")


def journaled(pg: PgCluster, message_id: str) -> tuple[str, int] | None:  # noqa: F811
    """(WhatsApp id, lease epoch) the journal holds for ``message_id``."""
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        row = conn.execute("SELECT wa_message_id, epoch FROM wagate_sent_journal "
                           "WHERE message_id = %s", (message_id,)).fetchone()
    return None if row is None else (str(row[0]), int(row[1]))


def record_of(gw: Gateway, message_id: str) -> dict[str, Any]:
    result = gw.gql(MESSAGE_QUERY, {"id": message_id})
    assert not result.errors, result
    record: dict[str, Any] = result.data["whatsAppMessage"]
    return record


def exit_waits(gw: Gateway) -> bool:
    """Whether a process of the session logged that its exit waits for running sends."""
    log = gw.data_dir / "logs" / "actors.log"
    return any(f'"session": "{SESSION}"' in line
               and "the exit waits for running sends" in line
               for line in log.read_text(errors="replace").splitlines())


def got_sigterm(gw: Gateway, pid: int) -> bool:
    """Whether Thespian logged that process ``pid`` got SIGTERM (it then asks the actor
    to exit)."""
    log = gw.data_dir / "logs" / "thespian.log"
    return log.exists() and any(
        f" p{pid} " in line and "got shutdown signal: 15" in line
        for line in log.read_text(errors="replace").splitlines())


def copies(server: SimulatorServer, text: str) -> list[dict[str, Any]]:
    return [m for m in server.inbox() if m["text"] == text]


def test_a_send_in_flight_when_its_session_process_is_stopped_arrives_once(
        make_gateway: Callable[..., Gateway], pg: PgCluster) -> None:  # noqa: F811
    gw = make_gateway({"cluster": {
        "role": "leader", "host_name": "alpha", "advertise_address": "127.0.0.1",
        "allow_networks": ["127.0.0.1/32"], "database_url": pg.url(), **LEASE},
        # The caller waits for WhatsApp's ack throughout (no SEND_UNCONFIRMED meanwhile).
        "messages": {"send_timeout_seconds": 60.0}}).start()
    gw.link(SESSION)
    pid = gw.session_pid(SESSION)
    server = SimulatorServer(gw.data_dir)
    text = f"code {time.time_ns()}"
    answer: list[GraphQLResult] = []
    try:
        server.stall_after_send(STALL_SECONDS)
        # The caller waits for WhatsApp's ack: on a thread of its own.
        variables = {"i": {"phoneNumber": PHONE, "message": text, "session": SESSION}}
        caller = threading.Thread(target=lambda: answer.append(gw.gql(SEND, variables)),
                                  daemon=True)
        caller.start()
        arrived = wait_for(lambda: copies(server, text), timeout=15,
                           message="the message in the recipient's inbox")
        stopped_at = time.monotonic()
        gw.signal_process(pid, signal.SIGTERM)  # its answer is still on its way
        # The stopping process waits for its running send; only then does the answer
        # come (so it cannot have reached the outbox before the stop).
        wait_for(lambda: got_sigterm(gw, pid), timeout=10,
                 message="the session process's SIGTERM in Thespian's log")
        wait_for(lambda: exit_waits(gw), timeout=10,
                 message="the stopping process waiting for its running send")
        listed = gw.gql(MESSAGES).data["whatsAppMessages"]["edges"]
        assert len(listed) == 1, listed
        message_id = listed[0]["node"]["id"]
        server.stall_after_send(0)  # the answer, and a resend if any, come at once

        wait_for(lambda: gw.session_pid(SESSION) != pid, timeout=30,
                 message="the session re-placed in a new process")
        gw.wait_state("CONNECTED", SESSION, timeout=30)
        caller.join(timeout=30)
        assert answer and not answer[0].errors, answer  # the caller heard: sent
        assert answer[0].data["sendWhatsAppMessage"]["id"] == message_id
        record = wait_for(
            lambda: (r := record_of(gw, message_id))["state"] not in ("QUEUED", "SENDING")
            and r,
            timeout=15, message="the message's final state")
        replaced = time.monotonic() - stopped_at
        # Final and not uncertain: it is not sent again (a resend would have made it
        # uncertain first; on code without the journal it is, and arrives twice).
        assert record["state"] == "SENT" and record["uncertain"] is False, record
        assert record["whatsAppMessageId"] == arrived[0]["id"], (record, arrived)
        assert len(copies(server, text)) == 1, copies(server, text)
        row = journaled(pg, message_id)
        assert row is not None and row[0] == arrived[0]["id"], row
    finally:
        server.stall_after_send(0)
        server.close()
    print(f"\nstopped with a send in flight -> re-placed, message SENT once: "
          f"{replaced:.2f} s")
