"""The gateway keeps (or honestly reports) its WhatsApp link through faults.

Each test breaks something from outside, as reality would: a QR code nobody
scans, a network outage, a service that stays down, a crashed session process, a
restart, a launcher killed with SIGKILL, a device unlinked from the phone. Then it
checks what a client sees through the public API, and that no accepted message
is lost or sent twice. Delays are shrunk through the config, never by patching.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Callable
from typing import Any

from tests.integration.harness import Gateway, expect_error, group_alive, group_members, wait_for

OK = {"sendWhatsAppNotification": True}
PHONE, DIGITS = "+14155550160", "14155550160"


def texts_to(gateway: Gateway, digits: str = DIGITS) -> list[str]:
    return [m["text"] for m in gateway.inbox() if m["to"] == digits]


def wait_connected_without_qr(gateway: Gateway, session: str = "default",
                              timeout: float = 15.0) -> dict[str, Any]:
    """Wait for CONNECTED while failing at once if a QR code shows up: nobody scans
    here, so the link must come from the stored credentials."""
    def connected() -> dict[str, Any] | None:
        status = gateway.status(session)
        assert status["state"] != "QR_PENDING" and status["qrCodeRaw"] is None, status
        return status if status["state"] == "CONNECTED" else None

    return wait_for(connected, timeout, message=f"session {session} to reconnect without a QR")


def test_qr_codes_rotate_then_expire_and_connect_starts_over(
        make_gateway: Callable[..., Gateway]) -> None:
    """WhatsApp rotates pairing codes and closes the window after a while: a client
    showing the code must see it change, then QR_EXPIRED with the reason, and
    whatsAppConnect must open a fresh, scannable pairing window."""
    gw = make_gateway({"qr": {"first_seconds": 1.0, "next_seconds": 1.0, "codes": 3}}).start()
    started = time.monotonic()
    assert gw.connect().data == {"whatsAppConnect": True}
    codes: list[str] = []

    def expired() -> dict[str, Any] | None:
        status = gw.status()
        if status["state"] == "QR_PENDING":
            assert status["qrExpiresAt"] and status["qrCode"], status
            if status["qrCodeRaw"] not in codes:
                codes.append(status["qrCodeRaw"])
        return status if status["state"] == "QR_EXPIRED" else None

    final = wait_for(expired, 15, message="the pairing window to close")
    elapsed = time.monotonic() - started
    assert len(codes) >= 2, codes  # rotated at least once (3 codes are offered)
    assert elapsed >= 1.0 + 1.0 + 1.0 - 0.3, elapsed  # not closed before the last code
    assert final["lastError"]["code"] == "QR_EXPIRED"
    assert final["connected"] is False
    assert final["qrCode"] is None and final["qrCodeRaw"] is None

    assert gw.connect().data == {"whatsAppConnect": True}
    fresh = gw.wait_state("QR_PENDING")
    assert fresh["qrCodeRaw"] not in codes

    def scanned() -> bool:
        """The window is 3 s: on a busy machine it can close before `wagate sim`
        starts; whatsAppConnect then opens the next one, which is what is checked."""
        if gw.sim("scan", check=False).returncode == 0:
            return True
        assert gw.connect().data == {"whatsAppConnect": True}
        return False

    wait_for(scanned, 60, 0.1, "a fresh pairing window to be scanned")
    assert gw.wait_state("CONNECTED")["lastError"] is None


def test_outage_queues_sends_and_delivers_them_once_after_reconnect(
        make_gateway: Callable[..., Gateway]) -> None:
    """A short outage must not lose or duplicate anything: sends are accepted and
    queued while the session reconnects, and each arrives exactly once after."""
    # 10 attempts 0.5 s apart outlast the 2 s outage with room to spare.
    gw = make_gateway({"reconnect": {"attempts": 10, "delay_seconds": 0.5}}).start()
    gw.link()
    dropped = time.time()  # the outage starts after this and lasts 2 s
    gw.sim("drop", "--down-for", "2")
    gw.wait_state("RECONNECTING", timeout=5)
    wait_for(lambda: gw.status()["reconnectAttempt"] >= 1, 5,
             message="a reconnect attempt to be reported")
    queued = [f"queued {i} {uuid.uuid4().hex}" for i in range(3)]
    for text in queued:
        assert gw.send(PHONE, text).data == OK, text
    assert gw.health()["queue"]["depth"] == len(queued)  # accepted, waiting
    # A connection test is never queued: it must say the session is not live.
    error = expect_error(gw.send_test(PHONE), "NOT_CONNECTED")
    assert error["extensions"]["state"] == "RECONNECTING"

    connected = gw.wait_state("CONNECTED", timeout=15)
    assert time.time() - dropped >= 2.0  # not before the service came back
    assert connected["reconnectAttempt"] == 0 and connected["lastError"] is None
    wait_for(lambda: gw.health()["queue"]["depth"] == 0, 15, message="the queue to drain")
    delivered = [m for m in gw.inbox() if m["to"] == DIGITS]
    assert sorted(m["text"] for m in delivered) == sorted(queued)  # each exactly once
    # Delivered only once the service was reachable again, however slow this test ran.
    assert all(m["time"] >= dropped + 2.0 for m in delivered), delivered
    assert gw.send(PHONE, "after the outage").data == OK


def test_reconnect_gives_up_then_operator_reconnects(
        make_gateway: Callable[..., Gateway]) -> None:
    """After the configured attempts the session stops hammering WhatsApp and says so
    (FAILED, RECONNECT_FAILED); sends are refused rather than queued forever; once
    the network is back, whatsAppConnect resumes with the stored credentials."""
    gw = make_gateway({"reconnect": {"attempts": 5, "delay_seconds": 0.2}}).start()
    gw.link()
    gw.sim("drop", "--down-for", "60")
    attempts: list[int] = []

    def failed() -> dict[str, Any] | None:
        status = gw.status()
        attempts.append(status["reconnectAttempt"])
        return status if status["state"] == "FAILED" else None

    final = wait_for(failed, 15, message="the session to give up")
    assert final["lastError"]["code"] == "RECONNECT_FAILED"
    assert "after 5 " in final["lastError"]["message"], final
    assert max(attempts) <= 5, attempts
    assert gw.health()["status"] == "degraded"
    for result in (gw.send(PHONE, "while failed"), gw.send_test(PHONE)):
        # The refusal says why the session gave up, not only to connect again.
        error = expect_error(result, "NOT_CONNECTED", "whatsAppConnect", "RECONNECT_FAILED",
                             "after 5 ")
        assert error["extensions"]["state"] == "FAILED"
        assert error["extensions"]["reason"] == "RECONNECT_FAILED"
    assert gw.credentials_path().is_file()  # giving up keeps the link

    gw.sim("restore")
    assert gw.connect().data == {"whatsAppConnect": True}
    wait_connected_without_qr(gw)
    assert gw.send(PHONE, "back again").data == OK
    assert texts_to(gw) == ["back again"]
    assert gw.health()["status"] == "ok"


def test_killed_session_process_is_restarted_without_a_qr(gateway: Gateway) -> None:
    """A crashed session process (native crash, OOM kill) is the supervisor's job:
    it starts a new one that resumes the link by itself."""
    gateway.link()
    old_pid = gateway.session_pid()
    gateway.signal_process(old_pid, signal.SIGKILL)

    def restarted() -> int | None:
        [entry] = [s for s in gateway.health()["sessions"] if s["session"] == "default"]
        if entry["state"] == "CONNECTED" and entry["pid"] not in (None, old_pid):
            return int(entry["pid"])
        return None

    new_pid = wait_for(restarted, 15, message="a new session process to connect")
    assert new_pid in gateway.actor_pids()
    assert old_pid not in gateway.actor_pids()
    assert gateway.status()["qrCodeRaw"] is None
    assert gateway.send(PHONE, "after the crash").data == OK
    assert texts_to(gateway) == ["after the crash"]


def test_restart_resumes_the_session_without_a_qr(make_gateway: Callable[..., Gateway]) -> None:
    """Sessions persist across restarts (deploys, reboots): the new gateway relinks
    from the stored credentials, with the same account, and sends."""
    gw = make_gateway().start()
    phone = gw.link()["phoneNumber"]
    assert gw.send(PHONE, "before the restart").data == OK
    gw.stop()
    assert gw.credentials_path().is_file()

    gw.start()
    status = wait_connected_without_qr(gw)
    assert status["phoneNumber"] == phone
    assert gw.send(PHONE, "after the restart").data == OK
    assert texts_to(gw) == ["before the restart", "after the restart"]


def test_start_after_a_killed_launcher_sweeps_its_orphans(
        make_gateway: Callable[..., Gateway]) -> None:
    """If the launcher dies hard, its actor and web processes live on holding the
    ports and the WhatsApp link; the next start must remove them (two copies of a
    session would fight over the account) and then take over the session."""
    gw = make_gateway().start()
    gw.link()
    old_groups = set(gw.groups)
    gw.kill_launcher()
    assert all(group_alive(g) for g in old_groups), "the orphans should still be running"

    gw.start()
    state = gw.run_state()
    assert state is not None
    assert not any(group_alive(g) for g in old_groups)
    new_actor_group = int(state["actor_pgid"])
    assert new_actor_group not in old_groups
    wait_connected_without_qr(gw)
    assert gw.session_pid() in group_members(new_actor_group)
    assert gw.send(PHONE, "after the sweep").data == OK
    assert texts_to(gw) == ["after the sweep"]


def test_device_unlinked_from_the_phone(gateway: Gateway) -> None:
    """When the user removes the linked device in WhatsApp, the gateway must say so
    (LOGGED_OUT), refuse sends, forget the dead credentials and pair anew."""
    gateway.link()
    gateway.sim("logout")
    status = gateway.wait_state("LOGGED_OUT")
    assert status["lastError"]["code"] == "LOGGED_OUT"
    assert status["phoneNumber"] is None
    error = expect_error(gateway.send(PHONE, "after unlink"), "NOT_CONNECTED", "whatsAppConnect")
    assert error["extensions"]["state"] == "LOGGED_OUT"
    wait_for(lambda: not gateway.credentials_path().exists(), 5,
             message="the dead credentials to be deleted")
    assert gateway.connect().data == {"whatsAppConnect": True}
    assert gateway.wait_state("QR_PENDING")["qrCodeRaw"]
    assert texts_to(gateway) == []


def test_disconnect_logs_out_or_keeps_the_session(gateway: Gateway) -> None:
    """whatsAppDisconnect unlinks the device and deletes the credentials (a new QR is
    needed); with keepSession: true it only disconnects and a connect resumes."""
    gateway.link()
    assert gateway.credentials_path().is_file()
    assert gateway.disconnect().data == {"whatsAppDisconnect": True}
    assert gateway.wait_state("LOGGED_OUT")["connected"] is False
    # The state is shown when the logout starts; the unlink and the deletion run on
    # the session's worker thread and end a moment later.
    wait_for(lambda: not gateway.credentials_path().exists(), 10, 0.05,
             "the credentials deleted by the logout")
    expect_error(gateway.send(PHONE, "logged out"), "NOT_CONNECTED")
    assert gateway.connect().data == {"whatsAppConnect": True}
    gateway.wait_state("QR_PENDING")  # the old link is gone: pairing again
    gateway.sim("scan")
    gateway.wait_state("CONNECTED")

    assert gateway.disconnect(keep_session=True).data == {"whatsAppDisconnect": True}
    status = gateway.wait_state("DISCONNECTED")
    assert status["connected"] is False
    assert gateway.credentials_path().is_file()
    error = expect_error(gateway.send(PHONE, "disconnected"), "NOT_CONNECTED")
    assert error["extensions"]["state"] == "DISCONNECTED"
    assert gateway.connect().data == {"whatsAppConnect": True}
    wait_connected_without_qr(gateway)
    assert gateway.send(PHONE, "resumed").data == OK
    assert texts_to(gateway) == ["resumed"]


def test_disconnect_stops_a_reconnect_loop(make_gateway: Callable[..., Gateway]) -> None:
    """An operator must be able to stop a session that is between reconnect attempts
    (30 s apart in production) instead of waiting for it to give up."""
    gw = make_gateway({"reconnect": {"attempts": 5, "delay_seconds": 30.0,
                                     "first_delay_seconds": 30.0}}).start()
    gw.link()
    gw.sim("drop", "--down-for", "60")
    wait_for(lambda: (s := gw.status())["state"] == "RECONNECTING"
             and s["reconnectAttempt"] >= 1, 5, message="the first failed reconnect attempt")
    assert gw.disconnect(keep_session=True).data == {"whatsAppDisconnect": True}
    gw.wait_state("DISCONNECTED", timeout=5)
    gw.sim("restore")
    assert gw.connect().data == {"whatsAppConnect": True}
    wait_connected_without_qr(gw)


def test_connection_test_reaches_the_recipient(gateway: Gateway) -> None:
    """testWhatsAppConnection proves the link end to end: true only once the test
    message was acknowledged, and the recipient really got it."""
    gateway.link()
    result = gateway.send_test("+1 415 555 0170")
    assert result.data == {"testWhatsAppConnection": True}, result
    assert texts_to(gateway, "14155550170") == ["wagate connection test"]
