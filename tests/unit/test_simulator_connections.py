"""The simulator records every connection's up and down (issue 22, item 6)."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from actors.transport.base import Connected, Disconnected, QrCode
from actors.transport.connection_log import overlaps
from actors.transport.simulator import CONNECTIONS_LOG, SimulatorServer, SimulatorTransport
from gateway.core.config import QrConfig
from tests.unit.sim_helpers import FAST_SIM, EventLog, send_from_process

QR = QrConfig(first_seconds=10.0, next_seconds=10.0, codes=2)

SEND_THREADS = 2


@pytest.fixture
def server(tmp_path: Path) -> Iterator[SimulatorServer]:
    handle = SimulatorServer(tmp_path)
    yield handle
    handle.close()


def paired(tmp_path: Path, server: SimulatorServer, host: str = "host-a") -> tuple[
        SimulatorTransport, EventLog]:
    transport = SimulatorTransport("s1", tmp_path, QR, FAST_SIM, host_name=host)
    log = EventLog()
    transport.connect(log)
    log.wait_count(QrCode)
    server.scan("s1", "+15550001111")
    log.wait_count(Connected)
    return transport, log


def reconnected(transport: SimulatorTransport, log: EventLog, server: SimulatorServer,
                nth: int) -> None:
    """Drop the link and connect again: the ``nth`` Connected of the log."""
    server.drop("s1")
    log.wait_count(Disconnected, nth - 1)
    transport.connect(log)
    log.wait_count(Connected, nth)


def test_each_connection_is_recorded_up_then_down(tmp_path: Path,
                                                 server: SimulatorServer) -> None:
    transport, log = paired(tmp_path, server)
    try:
        reconnected(transport, log, server, 2)
    finally:
        transport.close()
    records = server.connection_records()
    assert [r.kind for r in records] == ["up", "down", "up", "down"]
    assert {(r.session, r.account, r.host, r.pid) for r in records} == {
        ("s1", "15550001111", "host-a", os.getpid())}
    first, second = records[0].conn, records[2].conn
    assert first != second and records[1].conn == first and records[3].conn == second
    assert [r.at_ns for r in records] == sorted(r.at_ns for r in records)
    assert overlaps(records, until_ns=time.time_ns()) == []
    mode = (tmp_path / "simulator" / CONNECTIONS_LOG).stat().st_mode & 0o777
    assert mode == 0o600


def test_a_pairing_that_never_connects_records_nothing(tmp_path: Path,
                                                      server: SimulatorServer) -> None:
    transport = SimulatorTransport("s1", tmp_path, QR, FAST_SIM)
    log = EventLog()
    try:
        transport.connect(log)
        log.wait_count(QrCode)
    finally:
        transport.close()
    assert server.connection_records() == []


def test_two_processes_connected_at_once_show_as_an_overlap(tmp_path: Path,
                                                           server: SimulatorServer) -> None:
    """The fault the multi-host mode must never commit, made on purpose: a second
    process resumes the same account while the first is still connected."""
    transport, _ = paired(tmp_path, server)
    try:
        child = multiprocessing.get_context("spawn").Process(
            target=send_from_process, args=(str(tmp_path), "s1", 1, "second", QR, FAST_SIM))
        child.start()
        child.join(30)
        assert child.exitcode == 0
    finally:
        transport.close()
    records = server.connection_records()
    found = overlaps(records, until_ns=time.time_ns())
    assert len(found) == 1 and found[0].count == 2
    assert {pid for _, pid in found[0].processes} == {os.getpid(), child.pid}
    child_up = next(r for r in records if r.pid == child.pid and r.kind == "up")
    child_down = next(r for r in records if r.pid == child.pid and r.kind == "down")
    assert (found[0].start_ns, found[0].end_ns) == (child_up.at_ns, child_down.at_ns)


def _open_files(under: Path) -> int:
    """This process's descriptors open on files under ``under``."""
    found = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        found += target.startswith(str(under))
    return found


def test_a_reconnect_leaves_no_descriptor_of_the_ended_connection_open(
        tmp_path: Path, server: SimulatorServer) -> None:
    """Each connection thread opened its own SQLite connections to the server's files
    (diskcache keeps one per thread) and left them open when it ended: the soak
    benchmark saw a session process gain descriptors and memory at every drop."""
    transport, log = paired(tmp_path, server)
    try:
        reconnected(transport, log, server, 2)
        before = _open_files(tmp_path / "simulator")
        for nth in range(3, 8):
            reconnected(transport, log, server, nth)
        assert _open_files(tmp_path / "simulator") == before
    finally:
        transport.close()


def test_a_client_replaced_at_every_drop_leaves_no_descriptor_of_its_send_threads_open(
        tmp_path: Path, server: SimulatorServer) -> None:
    """The session actor closes its client at every drop and makes a new one, while
    its send threads live on: each client's server handle gave each of those threads
    new SQLite connections, and the old ones stayed open (the soak saw a session
    process gain two database descriptors per drop)."""
    transport, log = paired(tmp_path, server)
    barrier = threading.Barrier(SEND_THREADS)

    def send_on_every_thread(client: SimulatorTransport) -> None:
        def send() -> None:
            barrier.wait(10)  # each send on its own thread of the pool
            client.send_texts([("+15550002222", "hello")])
        for future in [pool.submit(send) for _ in range(SEND_THREADS)]:
            future.result(10)

    with ThreadPoolExecutor(SEND_THREADS) as pool:
        try:
            send_on_every_thread(transport)
            before = _open_files(tmp_path / "simulator")
            for _ in range(5):
                transport.close()
                transport = SimulatorTransport("s1", tmp_path, QR, FAST_SIM, host_name="host-a")
                log = EventLog()
                transport.connect(log)
                log.wait_count(Connected)
                send_on_every_thread(transport)
            assert _open_files(tmp_path / "simulator") <= before
        finally:
            transport.close()
