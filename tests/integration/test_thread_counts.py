"""A burst of sends starts no thread in a session process (issue 16's soak).

A session's pools used to start their threads as bursts needed them, and faults bring
bursts: a restarted outbox offers its backlog at once. In the soak, session processes
gained a thread, and the native memory with it, many minutes after they had warmed
up. Now every pool starts all its threads with its process (``gateway.core.threads``).
The burst here is the one a client makes: many sends at once. (Web workers still start
request threads and call helpers as load needs them: starting them all made the
workers' memory worse, not better; docs/architecture.md.)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from tests.integration.harness import Gateway

PHONE = "+14155550162"
OK = {"sendWhatsAppNotification": True}
BURST = {
    # Far above the production limits, which protect a real account, not a simulated one.
    "limits": {"per_number_per_minute": 100_000, "per_number_per_hour": 100_000,
               "global_per_day": 100_000},
    # Server latency keeps sends in flight together: the session's pool is full.
    "simulator": {"send_delay_seconds": 0.2},
    "http": {"workers": 1, "threads": 16},  # the clients' sends reach the session at once
}
CLIENTS, SENDS = 16, 64


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def test_a_burst_of_sends_starts_no_thread_in_the_session_process(
        make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway(BURST).start()
    gw.link()
    assert gw.send(PHONE, "one at a time").data == OK
    session = gw.session_pid()
    before = threads(session)

    with ThreadPoolExecutor(CLIENTS) as clients:
        answers = list(clients.map(lambda i: gw.send(PHONE, f"burst {i}"), range(SENDS)))

    assert [a.data for a in answers] == [OK] * SENDS, [a for a in answers if a.data != OK]
    assert gw.session_pid() == session
    assert threads(session) == before
