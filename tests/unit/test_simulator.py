"""The simulated WhatsApp service: real diskcache, real threads, tiny timings.

Nothing here sleeps and hopes: events are awaited on a condition with a deadline
(``EventLog``) and other state with ``wait_for``. Every test must leave no thread
behind (checked by an autouse fixture).
"""

from __future__ import annotations

import base64
import itertools
import multiprocessing
import stat
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from actors.transport import create_transport
from actors.transport.base import (
    Connected,
    Disconnected,
    IncomingMessage,
    LoggedOut,
    PairingClosed,
    QrCode,
    Receipt,
    SendError,
)
from actors.transport.simulator import (
    SimulatorError,
    SimulatorServer,
    SimulatorTransport,
    _qr_key,
)
from gateway.core.clock import boot_clock
from gateway.core.config import QrConfig, SimulatorConfig, load_config
from tests.unit.sim_helpers import (
    FAST_SIM,
    EventLog,
    send_batches_from_process,
    send_from_process,
    wait_for,
    wait_until_parked,
)

# Long enough that a test never races the expiry of the code it scans.
PAIRING_QR = QrConfig(first_seconds=10.0, next_seconds=10.0, codes=2)
# Short enough to watch every code expire.
EXPIRING_QR = QrConfig(first_seconds=0.3, next_seconds=0.2, codes=3)

RECIPIENT = "4915112345678"

MakeTransport = Callable[..., SimulatorTransport]


def _simulator_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("simulator-")]


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    wait_for(lambda: not [t for t in threading.enumerate() if t not in before],
             timeout=3.0, what="every thread started by the test to end")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[SimulatorServer]:
    """A separate server handle, as the operator's CLI in another process would have."""
    handle = SimulatorServer(tmp_path)
    yield handle
    handle.close()


@pytest.fixture
def make(tmp_path: Path) -> Iterator[MakeTransport]:
    made: list[SimulatorTransport] = []

    def factory(session: str = "s1", qr: QrConfig = PAIRING_QR,
                sim: SimulatorConfig = FAST_SIM) -> SimulatorTransport:
        transport = SimulatorTransport(session, tmp_path, qr, sim)
        made.append(transport)
        return transport

    yield factory
    for transport in made:
        transport.close()


def pair(transport: SimulatorTransport, server: SimulatorServer, session: str = "s1",
         phone: str | None = None) -> EventLog:
    """Connect without credentials, scan the first code, wait until connected."""
    log = EventLog()
    transport.connect(log)
    log.wait_count(QrCode)
    server.scan(session, phone)
    log.wait_count(Connected)
    return log


def assert_whatsapp_qr(code: str) -> None:
    assert code.startswith("2@")
    parts = code[2:].split(",")
    assert [len(base64.b64decode(part, validate=True)) for part in parts] == [24, 32, 32, 32]


# ----------------------------------------------------------------------------- pairing


def test_pairing_rotates_codes_then_links_on_scan(make: MakeTransport,
                                                 server: SimulatorServer) -> None:
    transport = make(qr=QrConfig(first_seconds=0.2, next_seconds=10.0, codes=3))
    log = EventLog()
    transport.connect(log)

    first, second = log.wait_count(QrCode, 2)
    assert first.code != second.code
    for event in (first, second):
        assert_whatsapp_qr(event.code)
    assert second.expires_at - first.expires_at >= 0.2
    assert server.pending_qr("s1") == {"code": second.code, "expires_at": second.expires_at}

    phone = server.scan("s1")
    log.wait_count(Connected)

    assert phone.isdigit() and phone.startswith("1555") and len(phone) == 11
    assert log.events == [first, second, PairingClosed("success"), Connected(phone)]
    assert server.pending_qr("s1") is None
    assert [(d["session"], d["phone"]) for d in server.devices()] == [("s1", phone)]
    assert transport.has_credentials()


def test_scan_with_an_explicit_phone_links_that_number(make: MakeTransport,
                                                       server: SimulatorServer) -> None:
    log = pair(make(), server, phone="+4917012345678")
    assert log.of(Connected) == [Connected("4917012345678")]


def test_qr_codes_expire_then_pairing_times_out(make: MakeTransport,
                                               server: SimulatorServer) -> None:
    transport = make(qr=EXPIRING_QR)
    log = EventLog()
    transport.connect(log)

    events = log.wait(lambda seen: PairingClosed("timeout") in seen)

    codes = [event for event in events if isinstance(event, QrCode)]
    assert events == [*codes, PairingClosed("timeout")]
    assert len(codes) == EXPIRING_QR.codes
    assert len({event.code for event in codes}) == EXPIRING_QR.codes
    assert all(b.expires_at > a.expires_at for a, b in itertools.pairwise(codes))
    assert server.pending_qr("s1") is None
    with pytest.raises(SimulatorError, match="no QR code is pending"):
        server.scan("s1")
    assert not transport.has_credentials()


def _step_shown_expiry(server: SimulatorServer, session: str, seconds: float) -> None:
    """Shift the pending code's date as a session process whose wall clock was stepped
    by ``seconds`` (NTP, a resumed VM) would have written it."""
    with server._cache.transact(retry=True):
        pending = server._cache.get(_qr_key(session))
        server._cache.set(_qr_key(session), {**pending,
                                             "expires_at": pending["expires_at"] + seconds})


def test_a_qr_code_shown_an_hour_in_the_past_still_links_within_its_window(
        make: MakeTransport, server: SimulatorServer) -> None:
    """The session's wall clock an hour behind the scanner's: the date it shows is an
    hour gone, but the window runs on the host's boot clock and is open (it used to be
    "expired" for ``wagate sim scan``, so a session stepped back could not link)."""
    transport = make()
    log = EventLog()
    transport.connect(log)
    (code,) = log.wait_count(QrCode)
    _step_shown_expiry(server, "s1", -3600.0)
    assert server.pending_qr("s1") == {"code": code.code, "expires_at": code.expires_at - 3600}
    phone = server.scan("s1")
    assert log.wait_count(Connected) == [Connected(phone)]


def test_a_qr_code_window_ends_on_the_boot_clock_whatever_date_it_shows(
        server: SimulatorServer) -> None:
    """A date an hour ahead (the session's clock stepped forward) keeps no code open
    past its window, and a date an hour gone closes none still in it."""
    server._offer_qr("ahead", "2@code", time.time() + 3600, boot_clock() - 0.001)
    assert server.pending_qr("ahead") is None
    with pytest.raises(SimulatorError, match="has expired"):
        server.scan("ahead")
    assert server._poll_qr("ahead", "2@code") == "expired"
    server._offer_qr("behind", "2@code", time.time() - 3600, boot_clock() + 60)
    assert server.pending_qr("behind") is not None
    assert server._poll_qr("behind", "2@code") == "waiting"


def test_scan_without_a_pending_code_says_what_to_do(server: SimulatorServer) -> None:
    with pytest.raises(SimulatorError, match="no QR code is pending for session 'nobody'"):
        server.scan("nobody")


def test_scan_rejects_a_bad_phone(make: MakeTransport, server: SimulatorServer) -> None:
    log = EventLog()
    make().connect(log)
    log.wait_count(QrCode)
    with pytest.raises(SimulatorError, match="not a phone number"):
        server.scan("s1", "12-34")


def test_default_phone_is_stable_per_session(make: MakeTransport,
                                             server: SimulatorServer) -> None:
    phones = []
    for session in ("a", "a", "b"):
        transport = make(session)
        phones.append(pair(transport, server, session).of(Connected)[0].phone)
        transport.logout()
    assert phones[0] == phones[1] != phones[2]


# ------------------------------------------------------------------------- credentials


def test_credentials_survive_a_new_transport(make: MakeTransport,
                                             server: SimulatorServer) -> None:
    first = make()
    phone = pair(first, server).of(Connected)[0].phone
    first.close()

    second = make()
    assert second.has_credentials()
    log = EventLog()
    second.connect(log)
    assert log.wait_count(Connected) == [Connected(phone)]
    assert log.of(QrCode) == []


def test_credentials_files_are_private(make: MakeTransport, server: SimulatorServer,
                                       tmp_path: Path) -> None:
    pair(make(), server)
    creds = tmp_path / "sessions" / "s1" / "simulator.json"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    for directory in (tmp_path / "sessions", creds.parent, tmp_path / "simulator"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert [p.name for p in creds.parent.iterdir()] == ["simulator.json"]  # no temp left


def test_unreadable_credentials_mean_logged_out(make: MakeTransport, tmp_path: Path) -> None:
    creds = tmp_path / "sessions" / "s1" / "simulator.json"
    creds.parent.mkdir(parents=True)
    creds.write_text("{not json")
    transport = make()
    log = EventLog()
    transport.connect(log)
    assert log.wait_count(LoggedOut) == [LoggedOut("stored credentials are unreadable")]
    assert not transport.has_credentials()


# --------------------------------------------------------------------- drops, outages


def test_drop_disconnects_and_a_reconnect_works(make: MakeTransport,
                                                server: SimulatorServer) -> None:
    transport = make()
    log = pair(transport, server)

    server.drop("s1")
    assert log.wait_count(Disconnected) == [Disconnected("connection lost")]
    with pytest.raises(SendError) as info:
        transport.send_text(RECIPIENT, "hi")
    assert info.value.reason == "NOT_CONNECTED"

    transport.connect(log)
    assert len(log.wait_count(Connected, 2)) == 2
    transport.send_text(RECIPIENT, "hi")


def test_drop_of_one_session_spares_the_others(make: MakeTransport,
                                               server: SimulatorServer) -> None:
    a, b = make("a"), make("b")
    log_a, log_b = pair(a, server, "a"), pair(b, server, "b")

    server.drop("a")
    log_a.wait_count(Disconnected)
    b.send_text(RECIPIENT, "still connected")  # b's link is intact

    server.drop()
    assert log_b.wait_count(Disconnected) == [Disconnected("connection lost")]


def test_outage_refuses_connects_until_restored(make: MakeTransport,
                                               server: SimulatorServer) -> None:
    transport = make()
    log = pair(transport, server)

    server.drop("s1", down_for=60)
    log.wait_count(Disconnected)
    transport.connect(log)
    assert log.wait_count(Disconnected, 2)[1] == Disconnected("server unreachable")

    server.restore()
    transport.connect(log)
    assert len(log.wait_count(Connected, 2)) == 2


def test_outage_ends_by_itself(make: MakeTransport, server: SimulatorServer) -> None:
    transport = make()
    log = pair(transport, server)
    server.drop(down_for=0.3)
    log.wait_count(Disconnected)

    def reconnected() -> bool:
        seen = len(log.events)
        transport.connect(log)
        log.wait(lambda events: len(events) > seen)
        return isinstance(log.last(), Connected)

    wait_for(reconnected, timeout=5.0, what="a reconnect after the outage")
    assert set(log.of(Disconnected)[1:]) <= {Disconnected("server unreachable")}


# ----------------------------------------------------------------------------- logouts


def test_logout_from_the_phone(make: MakeTransport, server: SimulatorServer) -> None:
    transport = make()
    log = pair(transport, server)

    server.logout("s1")
    assert log.wait_count(LoggedOut) == [LoggedOut("unlinked from phone")]
    assert not transport.has_credentials()
    assert server.devices() == []
    with pytest.raises(SimulatorError, match="no linked device"):
        server.logout("s1")


def test_stale_credentials_are_logged_out_on_connect(make: MakeTransport,
                                                     server: SimulatorServer) -> None:
    first = make()
    pair(first, server)
    first.close()
    server.logout("s1")  # while the gateway was down

    second = make()
    assert second.has_credentials()
    log = EventLog()
    second.connect(log)
    assert log.wait_count(LoggedOut) == [LoggedOut("unlinked from phone")]
    assert not second.has_credentials()

    second.connect(log)  # without credentials: pairing again
    log.wait_count(QrCode)


def test_self_logout_unlinks_without_an_event(make: MakeTransport,
                                              server: SimulatorServer) -> None:
    transport = make()
    log = pair(transport, server)

    transport.logout()

    assert _simulator_threads() == []
    assert not transport.has_credentials()
    assert server.devices() == []
    assert log.of(LoggedOut) == [] and log.of(Disconnected) == []
    with pytest.raises(SendError):
        transport.send_text(RECIPIENT, "hi")


# ------------------------------------------------------------------------------- sends


def test_send_reaches_the_inbox(make: MakeTransport, server: SimulatorServer) -> None:
    transport = make()
    phone = pair(transport, server).of(Connected)[0].phone

    sent = transport.send_text(RECIPIENT, "hello ☃")

    [message] = server.inbox()
    assert message == {"id": sent.message_id, "session": "s1", "from": phone,
                       "to": RECIPIENT, "text": "hello ☃", "time": sent.timestamp}
    assert sent.message_id.startswith("3EB0") and len(sent.message_id) == 22
    assert sent.message_id[4:] == sent.message_id[4:].upper()
    int(sent.message_id[4:], 16)
    assert abs(sent.timestamp - time.time()) < 5


def test_send_delay_is_honoured(make: MakeTransport, server: SimulatorServer) -> None:
    transport = make(sim=SimulatorConfig(poll_interval_seconds=0.01, send_delay_seconds=0.1))
    pair(transport, server)
    started = time.monotonic()
    transport.send_text(RECIPIENT, "slow")
    assert time.monotonic() - started >= 0.1


def test_fail_next_rejects_exactly_that_many(make: MakeTransport,
                                             server: SimulatorServer) -> None:
    transport = make()
    pair(transport, server)
    server.fail_next(1, session="another")  # aimed elsewhere: never applies here
    server.fail_next(2)

    for _ in range(2):
        with pytest.raises(SendError) as info:
            transport.send_text(RECIPIENT, "rejected")
        assert (info.value.reason, info.value.permanent) == ("REJECTED", True)
    transport.send_text(RECIPIENT, "accepted")

    assert [m["text"] for m in server.inbox()] == ["accepted"]


def test_an_ambiguous_failure_delivers_but_leaves_the_sender_uncertain(
        make: MakeTransport, server: SimulatorServer) -> None:
    """As a send whose ack never came: it arrived, the sender cannot know it."""
    transport = make()
    pair(transport, server)
    server.fail_next(1, ambiguous=True)
    with pytest.raises(SendError) as info:
        transport.send_text(RECIPIENT, "arrived anyway")
    assert (info.value.reason, info.value.uncertain) == ("AMBIGUOUS", True)
    transport.send_text(RECIPIENT, "acked")
    assert [m["text"] for m in server.inbox()] == ["arrived anyway", "acked"]


def test_concurrent_sends_all_land_exactly_once(make: MakeTransport,
                                                server: SimulatorServer) -> None:
    transport = make()
    pair(transport, server)
    texts = [f"m{thread}-{n}" for thread in range(8) for n in range(25)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        sent = list(pool.map(lambda text: transport.send_text(RECIPIENT, text), texts))

    inbox = server.inbox()
    assert Counter(m["text"] for m in inbox) == Counter(texts)
    assert sorted(m["id"] for m in inbox) == sorted(s.message_id for s in sent)
    assert len({s.message_id for s in sent}) == len(texts)


def test_concurrent_sends_consume_each_failure_once(make: MakeTransport,
                                                    server: SimulatorServer) -> None:
    transport = make()
    pair(transport, server)
    server.fail_next(5, session="s1")

    def send(text: str) -> str:
        try:
            transport.send_text(RECIPIENT, text)
        except SendError as exc:
            return exc.reason
        return "OK"

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = Counter(pool.map(send, [f"m{n}" for n in range(40)]))

    assert outcomes == {"REJECTED": 5, "OK": 35}
    assert len(server.inbox()) == 35


def in_processes(target: Any, args: list[tuple[Any, ...]]) -> None:
    """Run ``target`` once per argument tuple, each in a fresh (spawned) process, side by
    side; every one must exit 0. None is left running, however the test ends."""
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=target, args=a) for a in args]
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
            assert worker.exitcode == 0
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.kill()
                worker.join(10)


def test_sends_from_several_processes_all_land(make: MakeTransport, server: SimulatorServer,
                                               tmp_path: Path) -> None:
    pair(make(), server)
    in_processes(send_from_process,
                 [(str(tmp_path), "s1", 30, f"p{n}", PAIRING_QR, FAST_SIM) for n in range(2)])

    texts = Counter(m["text"] for m in server.inbox())
    assert texts == Counter(f"p{p}-{n}" for p in range(2) for n in range(30))


def test_send_while_not_connected_is_retryable(make: MakeTransport,
                                               server: SimulatorServer) -> None:
    transport = make()
    with pytest.raises(SendError) as info:
        transport.send_text(RECIPIENT, "too early")
    assert (info.value.reason, info.value.permanent) == ("NOT_CONNECTED", False)


def test_send_after_an_unnoticed_drop_fails(make: MakeTransport,
                                            server: SimulatorServer) -> None:
    pair(make(), server)
    # Resume with a poll interval far longer than the test: only the server knows
    # about the drop when the send happens.
    transport = make(sim=SimulatorConfig(poll_interval_seconds=60.0))
    log = EventLog()
    transport.connect(log)
    log.wait_count(Connected)
    wait_until_parked(transport._conn.thread if transport._conn else None)
    server.drop("s1")
    with pytest.raises(SendError) as info:
        transport.send_text(RECIPIENT, "into the void")
    assert (info.value.reason, info.value.permanent) == ("NOT_CONNECTED", False)
    assert server.inbox() == []
    assert log.of(Disconnected) == []  # not yet noticed; close() must still be prompt


def test_a_batch_lands_in_order_in_one_go(make: MakeTransport,
                                          server: SimulatorServer) -> None:
    transport = make()
    phone = pair(transport, server).of(Connected)[0].phone
    assert transport.sends_quickly()

    outcomes = transport.send_texts([(RECIPIENT, f"b{n}") for n in range(5)])

    assert not [o for o in outcomes if isinstance(o, SendError)]
    assert [(m["id"], m["from"], m["text"]) for m in server.inbox()] == [
        (o.message_id, phone, f"b{n}") for n, o in enumerate(outcomes)
        if not isinstance(o, SendError)]


def test_a_delayed_simulator_does_not_send_quickly(make: MakeTransport) -> None:
    slow = make(sim=SimulatorConfig(poll_interval_seconds=0.01, send_delay_seconds=0.1))
    assert not slow.sends_quickly()


def test_faults_set_after_a_send_apply_to_the_next_one(make: MakeTransport,
                                                       server: SimulatorServer) -> None:
    """A client reuses what it read of the server's state until the state's version
    moves: every fault injected after a send must reach the very next send."""
    transport = make()
    log = pair(transport, server)
    transport.send_text(RECIPIENT, "first")  # the client has read the state now

    server.fail_next(1, transient=True)
    with pytest.raises(SendError) as info:
        transport.send_text(RECIPIENT, "failed")
    assert info.value.reason == "SERVER_ERROR"
    transport.send_text(RECIPIENT, "second")  # the failure was consumed

    server.unregister(RECIPIENT)
    transport.send_text(RECIPIENT, "to nobody")  # acked, never delivered
    server.register(RECIPIENT)

    server.auto_receipt("read")
    sent = transport.send_text(RECIPIENT, "read at once")
    [receipt] = log.wait_count(Receipt)
    assert (receipt.message_id, receipt.kind) == (sent.message_id, "read")
    server.auto_receipt(None)

    server.fail_next(1, rate_overlimit=True)
    outcomes = transport.send_texts([(RECIPIENT, "held 1"), (RECIPIENT, "held 2")])
    assert [o.reason for o in outcomes if isinstance(o, SendError)] == ["RATE_OVERLIMIT"]
    assert len(outcomes) == 1  # the rest of the batch was not tried

    assert [m["text"] for m in server.inbox()] == ["first", "second", "read at once"]


@pytest.mark.parametrize("fault", ["drop", "logout"])
def test_a_drop_or_unlink_after_a_send_fails_the_next_one(
        make: MakeTransport, server: SimulatorServer, fault: str) -> None:
    pair(make(), server)
    # Resume with a poll interval far longer than the test: only the server knows.
    transport = make(sim=SimulatorConfig(poll_interval_seconds=60.0, idle_check_seconds=60.0))
    log = EventLog()
    transport.connect(log)
    log.wait_count(Connected)
    wait_until_parked(transport._conn.thread if transport._conn else None)
    transport.send_text(RECIPIENT, "before")
    if fault == "drop":
        server.drop("s1")
    else:
        server.logout("s1")
    [outcome] = transport.send_texts([(RECIPIENT, "after")])
    assert isinstance(outcome, SendError) and outcome.reason == "NOT_CONNECTED"
    with pytest.raises(SendError) as info:
        transport.send_text(RECIPIENT, "after")
    assert (info.value.reason, info.value.permanent) == ("NOT_CONNECTED", False)
    assert [m["text"] for m in server.inbox()] == ["before"]
    assert log.of(Disconnected) == log.of(LoggedOut) == []  # only the server knew


def test_typing_marks_only_the_next_message(make: MakeTransport,
                                            server: SimulatorServer) -> None:
    transport = make()
    pair(transport, server)
    transport.send_typing(RECIPIENT)
    transport.send_texts([(RECIPIENT, "typed"), (RECIPIENT, "then")])
    typed, then = server.inbox()
    assert "typing_since" in typed and "typing_since" not in then


def test_batches_from_several_processes_all_land(make: MakeTransport,
                                                 server: SimulatorServer,
                                                 tmp_path: Path) -> None:
    pair(make(), server)
    in_processes(send_batches_from_process,
                 [(str(tmp_path), "s1", 10, 8, f"p{n}", PAIRING_QR, FAST_SIM)
                  for n in range(2)])

    texts = Counter(m["text"] for m in server.inbox())
    assert texts == Counter(f"p{p}-{b}-{n}" for p in range(2) for b in range(10)
                            for n in range(8))


def test_a_batch_lands_whole_when_its_process_is_killed(make: MakeTransport,
                                                        server: SimulatorServer,
                                                        tmp_path: Path) -> None:
    """SIGKILL at any moment of a stream of batches: each batch is in the inbox with
    all its messages or with none (one transaction), and what landed stays readable."""
    pair(make(), server)
    size = 20
    context = multiprocessing.get_context("spawn")
    worker = context.Process(target=send_batches_from_process,
                             args=(str(tmp_path), "s1", -1, size, "k", PAIRING_QR, FAST_SIM))
    worker.start()
    try:
        wait_for(lambda: len(server.inbox()) >= 10 * size, timeout=60,
                 what="ten batches to land")
    finally:
        worker.kill()
        worker.join(10)
    per_batch = Counter(m["text"].rsplit("-", 1)[0] for m in server.inbox())
    assert len(per_batch) >= 10
    assert set(per_batch.values()) == {size}, per_batch
    reopened = SimulatorServer(tmp_path)  # a fresh handle reads the same after the kill
    try:
        assert len(reopened.inbox()) == size * len(per_batch)
    finally:
        reopened.close()


# ------------------------------------------------------------------- connection thread


def test_close_joins_the_thread_and_withdraws_the_code(make: MakeTransport,
                                                       server: SimulatorServer) -> None:
    transport = make()
    log = EventLog()
    transport.connect(log)
    log.wait_count(QrCode)
    assert len(_simulator_threads()) == 1

    transport.close()

    assert _simulator_threads() == []
    assert server.pending_qr("s1") is None
    seen = log.events
    transport.close()  # idempotent
    assert log.events == seen
    with pytest.raises(RuntimeError, match="closed"):
        transport.connect(log)
    with pytest.raises(SendError):
        transport.send_text(RECIPIENT, "after close")


def test_connect_while_connected_keeps_one_thread(make: MakeTransport,
                                                  server: SimulatorServer) -> None:
    transport = make()
    log = pair(transport, server)
    transport.connect(log)
    assert len(_simulator_threads()) == 1
    transport.close()
    assert log.of(Connected) == [Connected(log.of(Connected)[0].phone)]


# ---------------------------------------------------------------------------- factory


def test_create_transport_builds_the_simulator(tmp_path: Path) -> None:
    config = load_config(overrides={"simulator.poll_interval_seconds": 0.01})
    transport = create_transport("simulator", "s1", tmp_path, config)
    try:
        assert isinstance(transport, SimulatorTransport)
        assert not transport.has_credentials()
    finally:
        transport.close()
    with pytest.raises(ValueError, match="unknown transport engine"):
        create_transport("carrier-pigeon", "s1", tmp_path, config)


@pytest.mark.parametrize("session", ["", ".", "..", "a/b", "a\\b"])
def test_session_ids_cannot_escape_the_sessions_dir(tmp_path: Path, session: str) -> None:
    with pytest.raises(ValueError, match="invalid session id"):
        SimulatorTransport(session, tmp_path, PAIRING_QR, FAST_SIM)


# ------------------------------------------------------------------------------ bells

# A safety-net read far beyond any wait of this test: what is noticed was rung.
BELLS_ONLY = SimulatorConfig(poll_interval_seconds=0.01, idle_check_seconds=3600.0)


def test_every_write_a_connection_must_notice_rings_its_bell(
        make: MakeTransport, server: SimulatorServer) -> None:
    """An idle connection reads the server only when a bell rang (or after
    ``idle_check_seconds``): a write that forgot to ring would never be noticed here."""
    transport = make(sim=BELLS_ONLY)
    log = pair(transport, server)

    server.reply("s1", RECIPIENT, "a reply")
    assert [e.text for e in log.wait_count(IncomingMessage)] == ["a reply"]

    sent = transport.send_text(RECIPIENT, "hello")
    server.receipt(sent.message_id, "read")
    assert [r.message_id for r in log.wait_count(Receipt)] == [sent.message_id]

    server.auto_receipt("delivered")
    second = transport.send_text(RECIPIENT, "again")
    assert log.wait_count(Receipt, 2)[-1].message_id == second.message_id

    server.drop("s1")
    log.wait_count(Disconnected)
    transport.connect(log)
    log.wait_count(Connected, 2)
    server.drop()  # every session's: the shared bell
    log.wait_count(Disconnected, 2)
    transport.connect(log)
    log.wait_count(Connected, 3)
    server.logout("s1")
    log.wait_count(LoggedOut)


def test_the_safety_net_reads_the_server_without_a_bell(
        make: MakeTransport, server: SimulatorServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that rang no bell (a writer that knows nothing of bells: this handle's
    ring silenced) is still noticed, by the read every ``idle_check_seconds``."""
    transport = make(sim=SimulatorConfig(poll_interval_seconds=0.01, idle_check_seconds=0.2))
    log = pair(transport, server)
    monkeypatch.setattr(server, "_ring", lambda session: None)
    server.reply("s1", RECIPIENT, "quiet")
    assert [e.text for e in log.wait_count(IncomingMessage)] == ["quiet"]


def test_sends_and_looks_intern_no_strings(
        make: MakeTransport, server: SimulatorServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every send rings a bell and every look stats two: with ``pathlib`` paths each
    interned its parts, and that churn made CPython rebuild its table of interned
    strings at twice the size in every session process (issue 16's soak). Counted
    once the connection is up: nothing per message may call ``sys.intern``."""
    transport = make(sim=SimulatorConfig(poll_interval_seconds=0.01, idle_check_seconds=0.05))
    log = pair(transport, server)
    interned: list[str] = []
    real = sys.intern

    def counting(text: str) -> str:
        interned.append(text)
        return real(text)

    monkeypatch.setattr(sys, "intern", counting)
    server.auto_receipt("delivered")
    for n in range(5):
        sent = transport.send_text(RECIPIENT, f"message {n}")
        assert log.wait_count(Receipt, n + 1)[-1].message_id == sent.message_id
    assert interned == []


def _wakeups(thread: threading.Thread) -> int:
    """How often ``thread`` has gone to sleep and been woken (the kernel's count)."""
    status = Path(f"/proc/self/task/{thread.native_id}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines()
                    if line.startswith("voluntary_ctxt_switches")))


def test_an_idle_linked_connection_sleeps_until_a_bell_rings(
        make: MakeTransport, server: SimulatorServer) -> None:
    """With a 10 ms poll interval, a polling connection wakes at least 100 times in a
    second; one asleep on its bells' inotify watch wakes only for what happens."""
    transport = make(sim=BELLS_ONLY)
    log = pair(transport, server)
    (thread,) = [t for t in _simulator_threads() if t.is_alive()]
    before = _wakeups(thread)
    time.sleep(1.0)  # the window observed (nothing is awaited: nothing should happen)
    assert _wakeups(thread) - before < 20
    server.reply("s1", RECIPIENT, "wake up")  # and a ring still wakes it
    log.wait_count(IncomingMessage)


def test_a_ring_that_cannot_be_made_does_not_fail_the_write(
        make: MakeTransport, server: SimulatorServer, tmp_path: Path) -> None:
    """The write is stored before its ring: a bell that cannot be rung (here its
    directory is gone, a file in its place) must not turn a stored reply or receipt
    into an error; the safety-net read reports it."""
    transport = make(sim=SimulatorConfig(poll_interval_seconds=0.01, idle_check_seconds=0.2))
    log = pair(transport, server)
    bells = tmp_path / "simulator" / "bells"
    for path in bells.iterdir():
        path.unlink()
    bells.rmdir()
    bells.write_text("not a directory")
    server.reply("s1", RECIPIENT, "rung or not")
    assert [e.text for e in log.wait_count(IncomingMessage)] == ["rung or not"]
    server.drop("s1")  # and a new connection, which cannot watch its bells, polls
    log.wait_count(Disconnected)
    transport.connect(log)
    log.wait_count(Connected, 2)
    server.reply("s1", RECIPIENT, "polled")
    assert [e.text for e in log.wait_count(IncomingMessage, 2)] == ["rung or not", "polled"]


def test_an_outage_lasts_its_seconds_on_the_boot_clock(server: SimulatorServer) -> None:
    """``drop --down-for`` is set by one process and checked by the session processes:
    on the wall clock, a session stepped an hour forward found the outage over at once
    (and one stepped back waited an hour longer). The boot clock is the host's."""
    server.drop("s1", down_for=60.0)
    left = server._outage_until("s1") - boot_clock()
    assert 59.0 < left <= 60.0
    server.restore()
    assert server._outage_until("s1") == 0.0


def _mapped_files(root: Path) -> list[str]:
    """The files under ``root`` that this process has mapped into memory."""
    fields = (line.split(maxsplit=5) for line in Path("/proc/self/maps").read_text().splitlines())
    return sorted({f[5] for f in fields if len(f) == 6 and f[5].startswith(str(root))})


def test_the_inbox_is_read_without_a_memory_map(
        make: MakeTransport, server: SimulatorServer, tmp_path: Path) -> None:
    """Every process of a simulated gateway reads the simulator's databases, and the
    inbox grows with every message. Through diskcache's default memory map each page a
    connection read stayed in its process's RSS (file pages), so a session's memory
    grew with the inbox (issue 16's soak). Only SQLite's shared-memory index of the
    write-ahead log (``-shm``), a few pages, may be mapped."""
    transport = make()
    log = pair(transport, server)
    server.auto_receipt("delivered")
    for n in range(20):
        sent = transport.send_text(RECIPIENT, f"message {n} " + "x" * 2000)
        assert log.wait_count(Receipt, n + 1)[-1].message_id == sent.message_id
    assert len(server.inbox()) == 20
    assert [path for path in _mapped_files(tmp_path) if not path.endswith("-shm")] == []
