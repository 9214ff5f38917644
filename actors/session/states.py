"""What each session state means, in one table, and everything derived from it.

A session state used to be explained in six places (the bridge states, health's
gateway_status, the final/active/queueing sets, the refusal hints, the schema's
descriptions and the dashboard's texts), each free to forget a state. Now each
``SessionState`` has one ``StateInfo`` row here; health, metrics, the refusals, the
API's ``hint`` (which the dashboard shows) and the checks of the schema's and the
README's descriptions all read it, and a test fails when a state has no row
(tests/unit/test_state_tables.py).

Pure: no actor, Thespian or Flask import.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

from actors.messages import SessionState, SessionStatus

# WhatsApp Business on-premises API's words for a node (GET /v1/health), our
# gateway_status: "unregistered" means no device is linked and a person must pair it;
# "disconnected" means it is linked (or was) but not online.
GATEWAY_STATUSES = ("connected", "connecting", "disconnected", "uninitialized", "unregistered")
# mautrix-style bridge states: tell a transient drop from an account that needs a
# human (bad credentials) at a glance.
BRIDGE_STATES = ("CONNECTED", "CONNECTING", "TRANSIENT_DISCONNECT", "BAD_CREDENTIALS",
                 "LOGGED_OUT", "UNKNOWN_ERROR", "UNCONFIGURED")

# How a state looks (the dashboard's colour): fine, working on it, needs watching,
# needs a person, at rest.
TONES = ("ok", "busy", "warn", "bad", "idle")

NOT_CONNECTED = "NOT_CONNECTED"
START_IT = "call whatsAppConnect to start it"
RECONNECTING_HINT = "it is reconnecting; test messages are only sent on a live connection"
SCANNING_HINT = "it is waiting for a phone to scan the QR code"


@dataclass(frozen=True, slots=True)
class Refusal:
    """How a send to a session in this state is refused (when it is not queued):
    ``session '<name>' <lead>: <hint>`` with error ``code``; ``unpaired`` replaces
    the hint for a session with no stored credentials."""

    hint: str = START_IT
    unpaired: str | None = None
    code: str = NOT_CONNECTED
    lead: str = "is not connected"


@dataclass(frozen=True, slots=True)
class StateInfo:
    """One session state. ``label``, ``meaning`` and ``what_to_do`` are for people
    (the API's ``hint``, the dashboard); the rest is what the code decides by."""

    label: str
    meaning: str
    what_to_do: str
    tone: str  # one of TONES
    gateway_status: str  # one of GATEWAY_STATUSES
    bridge_state: str  # one of BRIDGE_STATES
    final: bool = False  # nothing left to do: the session's process is retired
    active: bool = False  # a client is running (or about to): connect is a no-op
    queueing: bool = False  # sends to a paired session wait in the outbox
    degraded: bool = False  # makes /admin/health "degraded": an operator should look
    refusal: Refusal | None = Refusal()  # None: never refused (connected)


# The dashboard's button and the API's mutation: one text serves both.
CONNECT = "Connect (whatsAppConnect)"

_S = SessionState
SESSION_STATES: MappingProxyType[SessionState, StateInfo] = MappingProxyType({
    _S.NEW: StateInfo(
        "Not linked", "This session has never been connected.",
        f"Press {CONNECT}, then scan the QR code with the phone.",
        tone="idle", gateway_status="uninitialized", bridge_state="UNCONFIGURED",
        refusal=Refusal(unpaired="it has never been linked; call whatsAppConnect and "
                                 "scan the QR code")),
    _S.CONNECTING: StateInfo(
        "Connecting", "A connection attempt is running, or a phone just scanned the code "
                      "and the device is logging in.",
        "Wait a moment.",
        tone="busy", gateway_status="connecting", bridge_state="CONNECTING", active=True,
        queueing=True,
        refusal=Refusal(RECONNECTING_HINT, unpaired=SCANNING_HINT)),
    _S.QR_PENDING: StateInfo(
        "Waiting for a scan", "Pairing: the QR code links a phone. It changes by itself "
                              "every few seconds.",
        "On the phone open WhatsApp > Settings > Linked devices > Link a device and scan "
        "the code, or link with a phone number instead (whatsAppRequestPairingCode).",
        tone="busy", gateway_status="unregistered", bridge_state="UNCONFIGURED", active=True,
        refusal=Refusal(unpaired=SCANNING_HINT)),
    _S.CONNECTED: StateInfo(
        "Connected", "Linked and online: messages go out at once.", "Nothing.",
        tone="ok", gateway_status="connected", bridge_state="CONNECTED", active=True,
        queueing=True, refusal=None),
    _S.RECONNECTING: StateInfo(
        "Reconnecting", "The connection was lost and is being retried; messages wait in "
                        "the queue.",
        "Wait. If it lasts, check this machine's network.",
        tone="warn", gateway_status="connecting", bridge_state="TRANSIENT_DISCONNECT",
        active=True, queueing=True, degraded=True, refusal=Refusal(RECONNECTING_HINT)),
    _S.QR_EXPIRED: StateInfo(
        "Code expired", "The pairing window closed before a phone scanned the code.",
        "Press New code (whatsAppConnect) for a fresh QR code.",
        tone="warn", gateway_status="unregistered", bridge_state="UNCONFIGURED", final=True,
        refusal=Refusal("its pairing window closed before a phone scanned the code; call "
                        "whatsAppConnect for a new code", code="QR_EXPIRED",
                        lead="is not linked")),
    _S.LOGGED_OUT: StateInfo(
        "Logged out", "The device was unlinked (from the phone, or with Log out); its "
                      "credentials are deleted.",
        f"Press {CONNECT} and scan a new QR code.",
        tone="idle", gateway_status="unregistered", bridge_state="LOGGED_OUT", final=True,
        refusal=Refusal("its device was unlinked; its lastError says why and what to do "
                        "(usually: call whatsAppConnect and scan a new QR code)")),
    _S.FAILED: StateInfo(
        "Failed", "The gateway gave up: every reconnect attempt failed, the session "
                  "process crashed repeatedly, the WhatsApp engine cannot start, or pairing "
                  "failed.",
        f"Read the last error, fix its cause, then press {CONNECT}.",
        tone="bad", gateway_status="disconnected", bridge_state="UNKNOWN_ERROR", final=True,
        degraded=True,
        refusal=Refusal("it gave up; see whatsAppStatus's lastError, then call "
                        "whatsAppConnect")),
    _S.DISCONNECTED: StateInfo(
        "Disconnected", "Stopped with Disconnect; the credentials are kept. Sends through "
                        "it are refused (NOT_CONNECTED) until it is connected again.",
        f"Press {CONNECT} to resume (no QR code needed).",
        tone="idle", gateway_status="disconnected", bridge_state="UNCONFIGURED", final=True),
    _S.REPLACED: StateInfo(
        "Replaced", "The same device connected from somewhere else.",
        f"Stop the other client, then press {CONNECT}.",
        tone="bad", gateway_status="disconnected", bridge_state="BAD_CREDENTIALS", final=True),
    _S.BANNED: StateInfo(
        "Banned", "WhatsApp banned this account for a while.",
        "Wait until the ban ends (bannedUntil; the phone shows it), then send less.",
        tone="bad", gateway_status="disconnected", bridge_state="BAD_CREDENTIALS", final=True),
    _S.CLIENT_OUTDATED: StateInfo(
        "Client outdated", "WhatsApp refuses the web client version compiled into the "
                           "engine; every session on it is affected.",
        "Upgrade wagate (README: When WhatsApp retires the engine's version), then "
        f"press {CONNECT}.",
        tone="bad", gateway_status="disconnected", bridge_state="UNKNOWN_ERROR", final=True,
        degraded=True),
})
del _S


@dataclass(frozen=True, slots=True)
class Hint:
    """What a person reads about one session: the state's row, refined by what the
    status adds (why it was logged out, whether a ban's end is known)."""

    label: str
    meaning: str
    what_to_do: str
    tone: str


# LOGGED_OUT is one state for WhatsApp's three logout reasons; lastError.code tells
# them apart (actors/session/machine.py LOGOUT_ADVICE). LOGGED_OUT itself uses the row.
LOGOUT_HINTS: MappingProxyType[str, tuple[str, str]] = MappingProxyType({
    "ACCOUNT_LOCKED": (
        "WhatsApp locked the account, or its phone left it (a new phone or a reinstall); "
        "its credentials are deleted.",
        f"Open WhatsApp on the phone and follow what it says, then press {CONNECT} and "
        "scan a new QR code."),
    "ACCOUNT_BANNED": (
        "WhatsApp ended the link and may have banned the number; its credentials are "
        "deleted.",
        "Check the phone for a ban and request a review there; do not link again until "
        "it is lifted."),
})
BAN_END_UNKNOWN = ("WhatsApp banned this account for a while; the engine could not say "
                   "until when (the phone shows it).")


def hint(status: SessionStatus) -> Hint:
    """The hint for one session's status (the API's ``WhatsAppStatus.hint``)."""
    row = SESSION_STATES[status.state]
    meaning, what_to_do = row.meaning, row.what_to_do
    if status.state is SessionState.LOGGED_OUT and status.last_error is not None:
        meaning, what_to_do = LOGOUT_HINTS.get(status.last_error.code, (meaning, what_to_do))
    if status.state is SessionState.BANNED and status.banned_until is None:
        meaning = BAN_END_UNKNOWN
    return Hint(row.label, meaning, what_to_do, row.tone)


def gateway_status(status: SessionStatus) -> str:
    """WhatsApp's word for a session. A NEW session that has credentials (started only
    to log out, or restored without a connect) is linked, so it is "disconnected"."""
    if status.state is SessionState.NEW and status.paired:
        return "disconnected"
    return SESSION_STATES[status.state].gateway_status


def states_where(flag: str) -> frozenset[SessionState]:
    """The states whose row has ``flag`` (a boolean field of StateInfo) set."""
    return frozenset(s for s, row in SESSION_STATES.items() if getattr(row, flag))


FINAL_STATES = states_where("final")
ACTIVE_STATES = states_where("active")
QUEUEING_STATES = states_where("queueing")
DEGRADED_STATES = states_where("degraded")
