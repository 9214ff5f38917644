"""The session state machine, free of actors and transports so it can be tested alone.

The session actor feeds it commands (connect, disconnect, logout), transport events
and timer expiries; it answers with the new status and a list of actions for the
actor to carry out. States (README: The API):

    NEW -> CONNECTING -> QR_PENDING -> CONNECTED
    CONNECTED -> RECONNECTING (attempt n) -> CONNECTED | FAILED (after the last attempt)
    QR_PENDING -> QR_EXPIRED (pairing window closed)
    any -> LOGGED_OUT (unlinked) | DISCONNECTED (operator) | FAILED (banned, replaced ...)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from actors.messages import ErrorInfo, Failed, SessionState, SessionStatus
from actors.session.states import (  # FINAL/ACTIVE: the actors read them from here
    ACTIVE_STATES,
    FINAL_STATES,
    QUEUEING_STATES,
    SESSION_STATES,
)
from actors.supervisor.policy import ReconnectPolicy
from actors.transport.base import (
    ClientOutdated,
    Connected,
    Disconnected,
    LoggedOut,
    PairingClosed,
    QrCode,
    StreamReplaced,
    TemporaryBan,
    TransportEvent,
)
from actors.transport.engine_events import CONNECTION_LOST, PASSKEY_STATUSES


@dataclass(frozen=True, slots=True)
class StartClient:
    """Open a fresh connection (resume with credentials, or pair)."""


@dataclass(frozen=True, slots=True)
class StopClient:
    """Close the current connection; its late events must be ignored."""


@dataclass(frozen=True, slots=True)
class ScheduleReconnect:
    delay: float


@dataclass(frozen=True, slots=True)
class ArmConnectTimeout:
    """A connect attempt that shows no sign of life by then has failed.

    ``arm`` numbers the arming: only the latest one counts (a pairing that succeeded
    re-arms it, and the timer armed when the attempt began must not cut that short)."""

    delay: float
    arm: int = field(default=0, compare=False)


# The longest the watchdog waits for a self-reconnecting client: the policy's budget
# (reconnect.attempts x reconnect.delay_seconds) may be up to 10**9 x 86400 s, which no
# timer can be armed for (Thespian adds it to datetime.now(): OverflowError).
WATCHDOG_MAX_SECONDS = 30 * 86400.0


@dataclass(frozen=True, slots=True)
class ArmWatchdog:
    """The client reconnects by itself; if it has not succeeded by then, take over."""

    delay: float


@dataclass(frozen=True, slots=True)
class LogoutClient:
    """Unlink the device with the current (live) client, delete the stored credentials,
    then close that client: unlinking needs the connection, so it must not be closed
    first."""


Action = (StartClient | StopClient | ScheduleReconnect | ArmConnectTimeout | ArmWatchdog
          | LogoutClient)


class SessionMachine:
    def __init__(self, session: str, policy: ReconnectPolicy, connect_timeout: float,
                 paired: bool = False) -> None:
        self.policy = policy
        self.connect_timeout = connect_timeout
        self.status = SessionStatus(session=session, paired=paired)
        self.attempt = 0  # connect attempts made in the current (re)connect cycle
        self.timeout_arm = 0  # the latest ArmConnectTimeout's number

    def _arm_timeout(self) -> ArmConnectTimeout:
        self.timeout_arm += 1
        return ArmConnectTimeout(self.connect_timeout, arm=self.timeout_arm)

    # ---- commands -------------------------------------------------------------

    def connect(self, now: float, paired: bool, attempt: int = 1) -> list[Action]:
        """Operator (or restart) asks for a connection. No-op while one is active.
        ``attempt`` > 1: a retired process's successor goes on with its attempts."""
        if self.status.state in ACTIVE_STATES:
            return []
        self.attempt = max(1, attempt)
        self._set(now, state=SessionState.CONNECTING, paired=paired,
                  reconnect_attempt=self.attempt,
                  qr_code=None, qr_expires_at=None, banned_until=None)
        return [StopClient(), StartClient(), self._arm_timeout()]

    def disconnect(self, now: float) -> list[Action]:
        self.attempt = 0
        self._set(now, state=SessionState.DISCONNECTED, qr_code=None, qr_expires_at=None,
                  connected_since=None, reconnect_attempt=0)
        return [StopClient()]

    def logout(self, now: float) -> list[Action]:
        self.attempt = 0
        self._set(now, state=SessionState.LOGGED_OUT, paired=False, phone=None, qr_code=None,
                  qr_expires_at=None, connected_since=None, reconnect_attempt=0)
        return [LogoutClient()]  # with the live client: it unlinks, then is closed

    def engine_failed(self, now: float, message: str,
                      code: str = "ENGINE_UNAVAILABLE") -> list[Action]:
        """The transport could not even be created (engine missing or misconfigured,
        or its stored credentials cannot be decrypted: ``STORE_UNAVAILABLE``):
        retrying cannot help, an operator must act."""
        return self._final(now, SessionState.FAILED, code, message)

    # ---- timers -----------------------------------------------------------------

    def reconnect_due(self, now: float) -> list[Action]:
        if self.status.state is not SessionState.RECONNECTING:
            return []
        self.attempt += 1
        self._set(now, reconnect_attempt=self.attempt)
        return [StopClient(), StartClient(), self._arm_timeout()]

    def watchdog_expired(self, now: float) -> list[Action]:
        """The client's own reconnecting took the whole policy budget: replace the client
        and run our attempt loop (attempt 0 means no attempt of ours has started)."""
        if self.status.state is not SessionState.RECONNECTING or self.attempt != 0:
            return []
        return [StopClient(), ScheduleReconnect(0.0)]

    def connect_timed_out(self, now: float, arm: int | None = None) -> list[Action]:
        """Only an attempt that has not reached QR_PENDING or CONNECTED can time out,
        and only by its latest timer (``arm``; None: whichever is running)."""
        if self.status.state not in (SessionState.CONNECTING, SessionState.RECONNECTING):
            return []
        if arm is not None and arm != self.timeout_arm:
            return []
        return self._attempt_failed(now, "connect attempt timed out")

    # ---- transport events -------------------------------------------------------------

    def on_event(self, event: TransportEvent, now: float) -> list[Action]:
        state = self.status.state
        if state in FINAL_STATES:
            return []  # a late event from a client that is being closed
        match event:
            case QrCode(code=code, expires_at=expires_at):
                self._set(now, state=SessionState.QR_PENDING, qr_code=code,
                          qr_expires_at=expires_at, reconnect_attempt=0)
                self.attempt = 0
                return []
            case PairingClosed(reason="success"):
                # The phone linked the device (the engine stored it); WhatsApp now makes
                # the client reconnect once (stream error 515). If that reconnect fails
                # the engine reports nothing: the connect timeout must be running.
                # The engine's own reconnect is not one of ours: a timeout retries at once.
                self.attempt = 0
                self._set(now, state=SessionState.CONNECTING, paired=True, qr_code=None,
                          qr_expires_at=None, reconnect_attempt=0)
                return [self._arm_timeout()]
            case PairingClosed(reason=reason) if reason in PASSKEY_STATUSES:
                return self._final(now, SessionState.FAILED, "PASSKEY_UNSUPPORTED",
                                   "WhatsApp asked to confirm this link with a passkey, "
                                   "which wagate's engine cannot do; call whatsAppConnect "
                                   "and link with a pairing code (whatsAppRequestPairingCode) "
                                   "instead, or remove the passkey requirement on the phone "
                                   "and scan a new code")
            case PairingClosed(reason="timeout"):
                return self._final(now, SessionState.QR_EXPIRED, "QR_EXPIRED",
                                   "the pairing window closed before a phone scanned the "
                                   "code; call whatsAppConnect for a new code")
            case PairingClosed(reason="err-client-outdated"):
                return self.on_event(ClientOutdated(), now)
            case PairingClosed(reason=reason) if reason == CONNECTION_LOST:
                return self._final(now, SessionState.FAILED, "PAIRING_INTERRUPTED",
                                   "the connection dropped while the QR code was shown (the "
                                   "code did not expire); check the network, then call "
                                   "whatsAppConnect for a new code")
            case PairingClosed(reason=reason):
                return self._final(now, SessionState.FAILED, "PAIRING_FAILED",
                                   f"pairing failed ({reason}); call whatsAppConnect to retry")
            case Connected(phone=phone):
                self.attempt = 0
                self._set(now, state=SessionState.CONNECTED, paired=True, phone=phone,
                          qr_code=None, qr_expires_at=None, reconnect_attempt=0,
                          connected_since=now, last_error=None)
                return []
            case Disconnected(reason=reason, recovering=True):
                if state is not SessionState.CONNECTED:
                    return []  # an attempt of ours is running, with its own timeout
                self.attempt = 0
                self._set(now, state=SessionState.RECONNECTING, connected_since=None,
                          last_error=ErrorInfo("DISCONNECTED", reason))
                budget = min(self.policy.attempts * self.policy.delay, WATCHDOG_MAX_SECONDS)
                return [ArmWatchdog(budget)]
            case Disconnected(reason=reason):
                if state is SessionState.CONNECTED:
                    self.attempt = 0
                    self._set(now, state=SessionState.RECONNECTING, connected_since=None,
                              last_error=ErrorInfo("DISCONNECTED", reason))
                    return [StopClient(), ScheduleReconnect(self._delay_or_zero(1))]
                if state is SessionState.QR_PENDING:
                    return self._final(now, SessionState.FAILED, "PAIRING_FAILED",
                                       f"connection lost while pairing ({reason}); "
                                       "call whatsAppConnect for a new code")
                return self._attempt_failed(now, reason)
            case LoggedOut(reason=reason):
                code, advice = logout_advice(reason)
                actions = self._final(now, SessionState.LOGGED_OUT, code,
                                      f"the device was unlinked ({reason}); {advice}")
                self._set(now, paired=False, phone=None)
                return actions
            case TemporaryBan(until=None, reason=reason):
                actions = self._final(now, SessionState.BANNED, "BANNED",
                                      f"WhatsApp temporarily banned this account ({reason}); "
                                      "the engine could not say until when: open WhatsApp "
                                      "on the phone to see when the ban ends, do not "
                                      "reconnect before, then call whatsAppConnect")
                self._set(now, banned_until=None)
                return actions
            case TemporaryBan(until=until, reason=reason):
                actions = self._final(now, SessionState.BANNED, "BANNED",
                                      f"WhatsApp temporarily banned this account ({reason}); "
                                      "do not reconnect before bannedUntil, then call "
                                      "whatsAppConnect")
                self._set(now, banned_until=until)
                return actions
            case StreamReplaced():
                return self._final(now, SessionState.REPLACED, "STREAM_REPLACED",
                                   "the same device connected elsewhere; stop the other "
                                   "client, then call whatsAppConnect")
            case ClientOutdated():
                return self._final(now, SessionState.CLIENT_OUTDATED, "CLIENT_OUTDATED",
                                   "WhatsApp refuses the web client version compiled into "
                                   "the engine; every session on it is affected and "
                                   "reconnecting cannot help: upgrade wagate (README: When "
                                   "WhatsApp retires the engine's version), then call "
                                   "whatsAppConnect")
            case _:
                return []  # receipts and the like do not change the state

    # ---- helpers ----------------------------------------------------------------------

    def _attempt_failed(self, now: float, reason: str) -> list[Action]:
        delay = self.policy.next_delay(self.attempt + 1)
        if delay is None:
            return self._final(now, SessionState.FAILED, "RECONNECT_FAILED",
                               f"gave up after {self.attempt} connect attempts (last: "
                               f"{reason}); check the network, then call whatsAppConnect")
        self._set(now, state=SessionState.RECONNECTING, connected_since=None,
                  last_error=ErrorInfo("CONNECT_FAILED", reason))
        return [StopClient(), ScheduleReconnect(delay)]

    def _delay_or_zero(self, attempt: int) -> float:
        delay = self.policy.next_delay(attempt)
        return 0.0 if delay is None else delay

    def _final(self, now: float, state: SessionState, code: str, message: str) -> list[Action]:
        self.attempt = 0
        self._set(now, state=state, qr_code=None, qr_expires_at=None, connected_since=None,
                  last_error=ErrorInfo(code, message))
        return [StopClient()]

    def _set(self, now: float, **changes: Any) -> None:
        self.status = dataclasses.replace(self.status, updated_at=now, **changes)


# whatsmeow's logout reasons (connect failure codes; the engine passes their names):
# 401 LOGGED_OUT, 403 MAIN_DEVICE_GONE (WhatsApp Web now calls it "locked"), 406
# UNKNOWN_LOGOUT (now "banned"). whatsmeow deletes the stored device for all three.
LOGOUT_ADVICE: dict[str, tuple[str, str]] = {
    "LOGGED_OUT": ("LOGGED_OUT", "it was logged out from the phone or another device; "
                   "call whatsAppConnect and scan a new code to link again"),
    "MAIN_DEVICE_GONE": ("ACCOUNT_LOCKED", "WhatsApp locked the account or its phone "
                         "left it (a new phone or reinstall); open WhatsApp on the phone "
                         "and follow what it says, then call whatsAppConnect and scan a "
                         "new code"),
    "UNKNOWN_LOGOUT": ("ACCOUNT_BANNED", "WhatsApp may have banned the number: open "
                       "WhatsApp on the phone; if it shows a ban, request a review there "
                       "and do not link again until it is lifted, else call "
                       "whatsAppConnect and scan a new code"),
}
_LOGOUT_DEFAULT = ("LOGGED_OUT", "call whatsAppConnect and scan a new code to link again")


def logout_advice(reason: str) -> tuple[str, str]:
    """``(lastError code, what the operator does)`` for a logout reason."""
    return LOGOUT_ADVICE.get(reason, _LOGOUT_DEFAULT)


def refuse_send(session: str, state: SessionState, paired: bool, require_connected: bool,
                request_id: str = "", last_error: ErrorInfo | None = None) -> Failed | None:
    """Why a send to this session cannot be accepted now, or None when it can (sent at
    once when connected, queued while a paired session is (re)connecting: the state's
    row in actors/session/states.py says which, and what the refusal says). A FAILED
    session's refusal carries why it gave up (``last_error``): "call whatsAppConnect"
    alone would send the operator round in a circle when the cause is still there."""
    refusal = SESSION_STATES[state].refusal
    if refusal is None:
        return None
    if not require_connected and paired and state in QUEUEING_STATES:
        return None
    details = {"state": state.value, "session": session}
    hint = refusal.hint if paired or refusal.unpaired is None else refusal.unpaired
    if state is SessionState.FAILED and last_error is not None:
        details["reason"] = last_error.code
        hint = f"it gave up ({last_error.code}: {last_error.message.rstrip('.')})"
        if "whatsAppConnect" not in last_error.message:  # most already say what to do
            hint += "; fix that, then call whatsAppConnect to start it again"
    return Failed(refusal.code, f"session '{session}' {refusal.lead}: {hint}", details,
                  request_id=request_id)
