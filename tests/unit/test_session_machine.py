"""The session state machine alone: every transition and the actions it asks for."""

from __future__ import annotations

from actors.messages import SessionState
from actors.session.machine import (
    ArmConnectTimeout,
    ArmWatchdog,
    LogoutClient,
    ScheduleReconnect,
    SessionMachine,
    StartClient,
    StopClient,
)
from actors.supervisor.policy import ReconnectPolicy
from actors.transport.base import (
    ClientOutdated,
    Connected,
    Disconnected,
    LoggedOut,
    PairingClosed,
    QrCode,
    Receipt,
    StreamReplaced,
    TemporaryBan,
)

S = SessionState


def machine(paired: bool = False, attempts: int = 5) -> SessionMachine:
    return SessionMachine("alice", ReconnectPolicy(attempts, 30.0), connect_timeout=10.0,
                          paired=paired)


def connected(paired: bool = True) -> SessionMachine:
    m = machine(paired=paired)
    m.connect(0.0, paired)
    m.on_event(Connected("15551234567"), 1.0)
    return m


def test_new_session_is_new() -> None:
    m = machine()
    assert m.status.state is S.NEW and m.status.session == "alice"
    assert not m.status.connected


def test_connect_starts_a_client_with_a_timeout() -> None:
    m = machine()
    actions = m.connect(5.0, paired=False)
    assert actions == [StopClient(), StartClient(), ArmConnectTimeout(10.0)]
    assert m.status.state is S.CONNECTING and m.status.reconnect_attempt == 1
    assert m.status.updated_at == 5.0


def test_connect_while_active_does_nothing() -> None:
    m = machine()
    m.connect(0.0, False)
    assert m.connect(1.0, False) == []
    m.on_event(QrCode("2@a,b,c,d", 60.0), 1.0)
    assert m.connect(2.0, False) == []
    assert m.status.state is S.QR_PENDING


def test_pairing_flow_qr_then_connected() -> None:
    m = machine()
    m.connect(0.0, False)
    assert m.on_event(QrCode("2@one,b,c,d", 60.0), 1.0) == []
    assert m.status.state is S.QR_PENDING
    assert (m.status.qr_code, m.status.qr_expires_at) == ("2@one,b,c,d", 60.0)
    m.on_event(QrCode("2@two,b,c,d", 80.0), 60.0)
    assert m.status.qr_code == "2@two,b,c,d"
    m.on_event(PairingClosed("success"), 61.0)
    assert m.status.qr_code is None
    m.on_event(Connected("15551234567"), 61.5)
    status = m.status
    assert status.state is S.CONNECTED and status.connected and status.paired
    assert status.phone == "15551234567" and status.connected_since == 61.5
    assert status.reconnect_attempt == 0 and status.last_error is None


def test_pairing_timeout_is_qr_expired_and_stops_the_client() -> None:
    m = machine()
    m.connect(0.0, False)
    m.on_event(QrCode("2@a,b,c,d", 60.0), 1.0)
    assert m.on_event(PairingClosed("timeout"), 160.0) == [StopClient()]
    assert m.status.state is S.QR_EXPIRED
    assert m.status.last_error is not None and m.status.last_error.code == "QR_EXPIRED"
    assert m.status.qr_code is None
    # whatsAppConnect starts a new pairing
    assert StartClient() in m.connect(200.0, False)
    assert m.status.state is S.CONNECTING


def test_other_pairing_errors_fail() -> None:
    m = machine()
    m.connect(0.0, False)
    m.on_event(QrCode("2@a,b,c,d", 60.0), 1.0)
    m.on_event(PairingClosed("err-scanned-without-multidevice"), 2.0)
    assert m.status.state is S.FAILED
    assert m.status.last_error is not None and m.status.last_error.code == "PAIRING_FAILED"


def test_drop_reconnects_immediately_then_every_delay_then_fails() -> None:
    m = connected()
    actions = m.on_event(Disconnected("connection lost"), 10.0)
    assert actions == [StopClient(), ScheduleReconnect(0.0)]
    assert m.status.state is S.RECONNECTING and m.status.connected_since is None
    delays = []
    for attempt in range(1, 6):
        assert m.reconnect_due(11.0 + attempt) == [StopClient(), StartClient(),
                                                   ArmConnectTimeout(10.0)]
        assert m.status.reconnect_attempt == attempt
        actions = m.on_event(Disconnected("server unreachable"), 12.0 + attempt)
        delays.extend(a.delay for a in actions if isinstance(a, ScheduleReconnect))
    assert delays == [30.0, 30.0, 30.0, 30.0]  # after attempts 1-4; the 5th failure gives up
    assert m.status.state is S.FAILED
    assert m.status.last_error is not None and m.status.last_error.code == "RECONNECT_FAILED"
    assert "5 connect attempts" in m.status.last_error.message


def test_reconnect_success_resets_the_attempts() -> None:
    m = connected()
    m.on_event(Disconnected("lost"), 10.0)
    m.reconnect_due(10.0)
    m.on_event(Disconnected("unreachable"), 11.0)
    m.reconnect_due(41.0)
    assert m.status.reconnect_attempt == 2
    m.on_event(Connected("15551234567"), 42.0)
    assert m.status.state is S.CONNECTED and m.status.reconnect_attempt == 0
    m.on_event(Disconnected("lost"), 50.0)
    assert m.reconnect_due(50.0) and m.status.reconnect_attempt == 1


def test_initial_connect_failures_use_the_same_policy() -> None:
    m = machine(paired=True, attempts=2)
    m.connect(0.0, True)
    assert m.on_event(Disconnected("refused"), 1.0) == [StopClient(), ScheduleReconnect(30.0)]
    assert m.status.state is S.RECONNECTING
    m.reconnect_due(31.0)
    m.on_event(Disconnected("refused"), 32.0)
    assert m.status.state is S.FAILED


def test_connect_timeout_counts_as_a_failed_attempt() -> None:
    m = machine(paired=True)
    m.connect(0.0, True)
    assert m.connect_timed_out(10.0) == [StopClient(), ScheduleReconnect(30.0)]
    assert m.status.last_error is not None and "timed out" in m.status.last_error.message


def test_connect_timeout_is_ignored_once_pairing_or_connected() -> None:
    m = machine()
    m.connect(0.0, False)
    m.on_event(QrCode("2@a,b,c,d", 60.0), 1.0)
    assert m.connect_timed_out(10.0) == []
    c = connected()
    assert c.connect_timed_out(10.0) == []


def test_reconnect_due_outside_reconnecting_is_stale() -> None:
    m = connected()
    assert m.reconnect_due(5.0) == []


def test_logged_out_forgets_the_account_and_never_reconnects() -> None:
    m = connected()
    assert m.on_event(LoggedOut("unlinked from phone"), 5.0) == [StopClient()]
    assert m.status.state is S.LOGGED_OUT and not m.status.paired and m.status.phone is None
    assert m.status.last_error is not None and m.status.last_error.code == "LOGGED_OUT"
    assert m.on_event(Disconnected("late"), 6.0) == []  # final: late events are ignored


def test_operator_logout_unlinks_and_disconnect_keeps_credentials() -> None:
    m = connected()
    assert m.logout(5.0) == [LogoutClient()]
    assert m.status.state is S.LOGGED_OUT and not m.status.paired
    d = connected()
    assert d.disconnect(5.0) == [StopClient()]
    assert d.status.state is S.DISCONNECTED and d.status.paired


def test_terminal_server_verdicts_never_reconnect() -> None:
    for event, state, code in ((TemporaryBan(until=1e9, reason="spam"), S.BANNED, "BANNED"),
                               (StreamReplaced(), S.REPLACED, "STREAM_REPLACED"),
                               (ClientOutdated(), S.CLIENT_OUTDATED, "CLIENT_OUTDATED")):
        m = connected()
        assert m.on_event(event, 5.0) == [StopClient()]
        assert m.status.state is state
        assert m.status.last_error is not None and m.status.last_error.code == code
        assert m.on_event(Disconnected("late"), 6.0) == []


def test_a_ban_records_until_when_and_connect_clears_it() -> None:
    m = connected()
    m.on_event(TemporaryBan(until=5000.0, reason="spam"), 5.0)
    assert m.status.banned_until == 5000.0
    m.connect(6000.0, True)
    assert m.status.banned_until is None


def test_client_outdated_during_pairing() -> None:
    m = machine()
    m.connect(0.0, False)
    m.on_event(QrCode("2@a,b,c,d", 60.0), 1.0)
    m.on_event(PairingClosed("err-client-outdated"), 2.0)
    assert m.status.state is S.CLIENT_OUTDATED


def test_receipts_do_not_change_the_state() -> None:
    m = connected()
    before = m.status
    assert m.on_event(Receipt("3EB0", "read"), 5.0) == []
    assert m.status == before


def test_engine_failure_is_final() -> None:
    m = machine()
    m.connect(0.0, False)
    m.engine_failed(1.0, "no engine")
    assert m.status.state is S.FAILED
    assert m.status.last_error is not None and m.status.last_error.code == "ENGINE_UNAVAILABLE"


def test_a_self_reconnecting_client_is_watched_not_replaced() -> None:
    m = connected()
    actions = m.on_event(Disconnected("connection lost", recovering=True), 10.0)
    assert actions == [ArmWatchdog(150.0)]  # 5 attempts x 30 s
    assert m.status.state is S.RECONNECTING and m.status.reconnect_attempt == 0
    m.on_event(Connected("15551234567"), 20.0)
    assert m.status.state is S.CONNECTED
    assert m.watchdog_expired(160.0) == []  # recovered: the watchdog is stale


def test_the_watchdog_takes_over_a_stuck_reconnect() -> None:
    m = connected()
    m.on_event(Disconnected("connection lost", recovering=True), 10.0)
    assert m.watchdog_expired(160.0) == [StopClient(), ScheduleReconnect(0.0)]
    assert m.reconnect_due(160.0) == [StopClient(), StartClient(), ArmConnectTimeout(10.0)]
    assert m.status.reconnect_attempt == 1
    # a "recovering" event during our own attempts changes nothing
    assert m.on_event(Disconnected("lost", recovering=True), 161.0) == []


# ---- the real engine's pairing and logout reasons (issue 20) -----------------------------


def pairing() -> SessionMachine:
    m = machine()
    m.connect(0.0, False)
    m.on_event(QrCode("2@a,b,c,d", 60.0), 1.0)
    return m


def test_pairing_success_arms_the_connect_timeout_for_the_engines_one_reconnect() -> None:
    """After a scan WhatsApp makes whatsmeow reconnect once (stream error 515); if that
    fails nothing is emitted. The session must not sit in QR_PENDING without a code: the
    connect timeout runs from the success, and its expiry retries with the stored
    device (a paired connect)."""
    m = pairing()
    actions = m.on_event(PairingClosed("success"), 80.0)
    assert actions == [ArmConnectTimeout(10.0)]
    (arm,) = actions
    assert isinstance(arm, ArmConnectTimeout)
    assert m.status.state is S.CONNECTING and m.status.paired and m.status.qr_code is None
    # The timer armed when the attempt began (before the QR phase) is stale now.
    assert m.connect_timed_out(85.0, arm=1) == []
    assert m.status.state is S.CONNECTING
    assert m.connect_timed_out(90.0, arm=arm.arm) == [StopClient(), ScheduleReconnect(0.0)]
    assert m.status.state is S.RECONNECTING and m.status.paired
    assert m.reconnect_due(90.0)[:2] == [StopClient(), StartClient()]
    m.on_event(Connected("15551234567"), 91.0)
    assert m.status.state is S.CONNECTED


def test_pairing_success_then_connected_needs_no_timeout() -> None:
    m = pairing()
    (arm,) = m.on_event(PairingClosed("success"), 80.0)
    m.on_event(Connected("15551234567"), 81.0)
    assert isinstance(arm, ArmConnectTimeout)
    assert m.connect_timed_out(90.0, arm=arm.arm) == []
    assert m.status.state is S.CONNECTED


def test_passkey_linking_fails_clearly_with_what_to_do() -> None:
    for status in ("passkey-request", "passkey-confirmation"):
        m = pairing()
        assert m.on_event(PairingClosed(status), 5.0) == [StopClient()]
        assert m.status.state is S.FAILED and m.status.qr_code is None
        error = m.status.last_error
        assert error is not None and error.code == "PASSKEY_UNSUPPORTED"
        assert "passkey" in error.message and "whatsAppRequestPairingCode" in error.message


def test_a_network_drop_while_the_qr_code_is_shown_is_not_an_expired_code() -> None:
    m = pairing()
    assert m.on_event(PairingClosed("connection-lost"), 5.0) == [StopClient()]
    assert m.status.state is S.FAILED
    error = m.status.last_error
    assert error is not None and error.code == "PAIRING_INTERRUPTED"
    assert "network" in error.message and "did not expire" in error.message


def test_a_ban_or_logout_during_pairing_keeps_its_own_state() -> None:
    """``err-unexpected-state`` is followed by the event that caused it; the transport
    reports that event, and the machine treats it as outside pairing."""
    m = pairing()
    m.on_event(TemporaryBan(until=9000.0, reason="SENT_TOO_MANY_SAME_MESSAGE"), 5.0)
    assert m.status.state is S.BANNED and m.status.banned_until == 9000.0
    m = pairing()
    m.on_event(LoggedOut("UNKNOWN_LOGOUT"), 5.0)
    assert m.status.state is S.LOGGED_OUT
    assert m.status.last_error is not None and m.status.last_error.code == "ACCOUNT_BANNED"
    m = pairing()
    m.on_event(PairingClosed("error: pairing rejected by the phone"), 5.0)
    assert m.status.last_error is not None
    assert "pairing rejected by the phone" in m.status.last_error.message


def test_logout_reasons_each_have_their_code_and_advice() -> None:
    """whatsmeow: 401 LOGGED_OUT, 403 MAIN_DEVICE_GONE ("locked"), 406 UNKNOWN_LOGOUT
    ("banned"); it deletes the stored device for each, so each is LOGGED_OUT (the link
    ended, its queue fails), told apart by the code and what to do."""
    expected = {"LOGGED_OUT": ("LOGGED_OUT", "scan a new code"),
                "MAIN_DEVICE_GONE": ("ACCOUNT_LOCKED", "open WhatsApp on the phone"),
                "UNKNOWN_LOGOUT": ("ACCOUNT_BANNED", "request a review"),
                "something new": ("LOGGED_OUT", "scan a new code")}
    messages = set()
    for reason, (code, advice) in expected.items():
        m = connected()
        assert m.on_event(LoggedOut(reason), 5.0) == [StopClient()]
        assert m.status.state is S.LOGGED_OUT and not m.status.paired
        error = m.status.last_error
        assert error is not None and error.code == code and advice in error.message
        assert m.connect_timed_out(6.0) == [] and m.on_event(Disconnected("x"), 6.0) == []
        messages.add(error.message)
    assert len(messages) == 4


def test_a_ban_whose_end_the_engine_could_not_report_is_banned_without_retries() -> None:
    m = connected()
    assert m.on_event(TemporaryBan(until=None, reason="code 105"), 5.0) == [StopClient()]
    assert m.status.state is S.BANNED and m.status.banned_until is None
    error = m.status.last_error
    assert error is not None and error.code == "BANNED" and "until when" in error.message
    assert m.on_event(Disconnected("late"), 6.0) == [] and m.reconnect_due(40.0) == []
def test_client_outdated_tells_the_operator_it_is_the_engine_and_where_the_runbook_is() -> None:
    from actors.session.machine import SessionMachine
    from actors.supervisor.policy import ReconnectPolicy
    from actors.transport.base import ClientOutdated

    machine = SessionMachine("s", ReconnectPolicy(5, 30.0), 90.0, paired=True)
    machine.connect(0.0, True)
    assert machine.on_event(ClientOutdated(), 1.0) != []  # the client is stopped
    error = machine.status.last_error
    assert error is not None and error.code == "CLIENT_OUTDATED"
    assert "compiled into the engine" in error.message
    assert "When WhatsApp retires the engine's version" in error.message
def test_a_send_to_a_failed_session_says_why_it_gave_up() -> None:
    from actors.messages import ErrorInfo
    from actors.session.machine import refuse_send

    gave_up = ErrorInfo("RECONNECT_FAILED", "gave up after 5 connect attempts (last: server "
                        "unreachable); check the network, then call whatsAppConnect")
    refusal = refuse_send("default", SessionState.FAILED, True, False, "r1", gave_up)
    assert refusal is not None and refusal.code == "NOT_CONNECTED"
    assert refusal.message == ("session 'default' is not connected: it gave up "
                               f"(RECONNECT_FAILED: {gave_up.message})")
    assert refusal.details == {"state": "FAILED", "session": "default",
                               "reason": "RECONNECT_FAILED"}
    crashed = refuse_send("default", SessionState.FAILED, True, False, "r2",
                          ErrorInfo("CRASHED", "the session process crashed 3 times."))
    assert crashed is not None and crashed.message.endswith(
        "(CRASHED: the session process crashed 3 times); fix that, then call "
        "whatsAppConnect to start it again")
    unknown = refuse_send("default", SessionState.FAILED, True, False, "r3")
    assert unknown is not None and "lastError" in unknown.message


def test_the_watchdog_of_the_largest_allowed_reconnect_budget_can_be_armed() -> None:
    """reconnect.attempts may be 10**9 and reconnect.delay_seconds 86400 (their RANGES):
    their product is no wait an actor can arm (Thespian adds it to datetime.now()), and a
    keepalive timeout, which arms the watchdog, must not crash the session's handler."""
    from datetime import datetime, timedelta

    from gateway.core.config import RANGES

    attempts = int(RANGES["reconnect.attempts"].high)
    delay = float(RANGES["reconnect.delay_seconds"].high)
    m = SessionMachine("s1", ReconnectPolicy(attempts, delay), 10.0, paired=True)
    m.connect(0.0, True)
    m.on_event(Connected("15551234567"), 1.0)
    (watchdog,) = m.on_event(Disconnected("keepalive timed out", recovering=True), 2.0)
    assert isinstance(watchdog, ArmWatchdog) and watchdog.delay >= 7 * 86400
    datetime.now() + timedelta(seconds=watchdog.delay)  # raises OverflowError if too long
