"""A burst of work starts no thread in a running gateway (issue 16's soak).

Pools used to start their threads as bursts needed them, and faults bring bursts: a
restarted outbox offers its backlog at once, requests pile up while it restarts. In the
soak, processes gained a thread, and the native memory with it, many minutes after
they had warmed up. Now every pool starts all its threads with its process
(``gateway.core.threads``): the session's sends, the web worker's request threads and
the bridge's helpers. The burst here is the one a client makes: many sends at once.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from tests.integration.harness import Gateway, group_members

PHONE = "+14155550162"
OK = {"sendWhatsAppNotification": True}
BURST = {
    # Far above the production limits, which protect a real account, not a simulated one.
    "limits": {"per_number_per_minute": 100_000, "per_number_per_hour": 100_000,
               "global_per_day": 100_000},
    # Server latency keeps sends in flight together: the session's pool is full.
    "simulator": {"send_delay_seconds": 0.2},
    "http": {"workers": 1, "threads": 8},
}
CLIENTS, SENDS = 16, 64


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def web_workers(gw: Gateway) -> list[int]:
    web = int((gw.run_state() or {})["web_pgid"])
    return [pid for pid in group_members(web) if pid != web]


def test_a_burst_of_sends_starts_no_thread_in_a_session_or_a_web_worker(
        make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway(BURST).start()
    gw.link()
    assert gw.send(PHONE, "one at a time").data == OK
    processes = {"session": gw.session_pid(), **{f"web {p}": p for p in web_workers(gw)}}
    before = {name: threads(pid) for name, pid in processes.items()}

    with ThreadPoolExecutor(CLIENTS) as clients:
        answers = list(clients.map(lambda i: gw.send(PHONE, f"burst {i}"), range(SENDS)))

    assert [a.data for a in answers] == [OK] * SENDS, [a for a in answers if a.data != OK]
    assert {name: threads(pid) for name, pid in processes.items()} == before
