"""What the real engine's end-of-call errors and pairing statuses mean, as plain functions.

The engine (neonize's Go side, "goneonize") hands events to Python through one pump,
``CallbackFunction``: it protobuf-encodes each event and calls back. When an encoding
fails, the pump *returns* with that error and the whole Go call (``Neonize``) ends with
its text; neonize's ``connect`` then raises it. The encoders leave a proto2 ``required``
enum unset for any value they do not know, and Go's protobuf refuses to marshal that:

* ``TemporaryBan.Code``: ban codes other than 101-104 and 106 (whatsmeow passes the
  server's code through unchanged);
* ``ConnectFailure.Reason``: failure reasons the encoder lists no name for (415, 418,
  and any new code);
* ``Receipt.Type``: receipt types such as ``server-error`` or any new string.

So the error text names the event the engine failed to pass on
(``proto: required field neonize.TemporaryBan.Code not set``; Go's protobuf randomly
writes the space after ``proto:`` as a no-break space to discourage matching on it, so
only the stable part is matched here). ``event_for_call_end`` turns that into the event
wagate would have reported: a ban is a ban (no retries), not a lost connection.

The QR channel's statuses (``login_status``) come from whatsmeow's ``GetQRChannel``
through goneonize's QR loop. Some of them only say *that* pairing ended, while the event
that says *why* waits in the pump until the QR loop has ended (the pump starts after it):
``pairing_needs_detail`` names those.

No actors, no neonize import: tested alone (tests/unit/test_engine_events.py).
"""

from __future__ import annotations

import re

from actors.transport.base import Disconnected, LoggedOut, TemporaryBan, TransportEvent

# Go protobuf's text for a proto2 required field left unset at marshal time.
_REQUIRED_NOT_SET = re.compile(r"required field (?:neonize\.)?([A-Za-z0-9_]+)\.([A-Za-z0-9_]+) "
                               r"not set")

# Login statuses (whatsmeow qrchan.go) after which the engine's pump still delivers the
# event that caused them: hold the end until it arrives (or a short deadline passes).
#   timeout              every code expired, or the socket dropped (events.Disconnected)
#   err-unexpected-state a LoggedOut, TemporaryBan, ConnectFailure or Connected arrived
#   error                a PairError (its text comes as the PairStatus event)
DETAIL_STATUSES = frozenset({"timeout", "err-unexpected-state", "error"})
# Passkey linking (whatsmeow pair-passkey.go): the phone asks this device to confirm the
# link with a passkey. neonize has no call to answer it, and the QR channel stays open.
PASSKEY_STATUSES = frozenset({"passkey-request", "passkey-confirmation"})
# Statuses that end the QR channel (whatsmeow closes it after sending one of these).
CLOSING_STATUSES = frozenset({"success", "timeout", "err-unexpected-state", "error",
                              "err-client-outdated", "err-scanned-without-multidevice"})

# What a PairingClosed reason says when the socket dropped while codes were shown.
CONNECTION_LOST = "connection-lost"

# whatsmeow logs the server's failure node at warning level before it emits the ban
# (connectionevents.go handleConnectFailure); Node.String sorts the attributes.
BAN_LOG_PREFIX = "Temporary ban connect failure: "
# A ban said to last longer is no end wagate can show (nor the server meant): unknown.
MAX_BAN_SECONDS = 10 * 365 * 86400
_NODE_ATTR = re.compile(r'([A-Za-z_]+)="([^"]*)"')


def ban_from_log(message: str) -> tuple[str, float] | None:
    """``(code, seconds until the ban ends)`` from whatsmeow's ban log line, or None
    when ``message`` is not one (or lacks a usable ``expire``)."""
    if not message.startswith(BAN_LOG_PREFIX):
        return None
    attrs = dict(_NODE_ATTR.findall(message[len(BAN_LOG_PREFIX):]))
    try:
        expire = float(attrs.get("expire", ""))
    except ValueError:
        return None
    if not 0 <= expire < MAX_BAN_SECONDS:  # NaN, negative or absurd: not an end
        return None
    return attrs.get("code", "unknown"), expire


def ban_until(expire: float, now: float) -> float | None:
    """When a ban that lasts ``expire`` more seconds (the engine's ``Expire``) ends, or
    None when that is no usable end: an absurd value (2**62 s from the server's
    attribute) would make ``bannedUntil`` a time no clock can show. Negative: now."""
    if expire != expire or expire >= MAX_BAN_SECONDS:
        return None
    return now + max(0.0, float(expire))


def unencodable_event(text: str) -> tuple[str, str] | None:
    """``(event, field)`` when the engine's call ended because it could not encode an
    event (its pump died on it), else None."""
    match = _REQUIRED_NOT_SET.search(text or "")
    return (match.group(1), match.group(2)) if match else None


def event_for_call_end(outcome: str | None,
                       ban: tuple[str, float] | None = None,
                       now: float = 0.0) -> TransportEvent:
    """What to report when the engine's Go call ended by itself with ``outcome`` (its
    error text, or None when it returned without one). ``ban``: what the engine logged
    about a ban just before (``ban_from_log``), the only place its end survives when
    the ban event cannot be encoded; ``now``: the unix time to count it from."""
    if not outcome:
        return Disconnected("client stopped unexpectedly")
    found = unencodable_event(outcome)
    if found is None:
        return Disconnected(outcome)
    event, field = found
    if event == "TemporaryBan":
        # whatsmeow emits it for a connect failure 402 with a ban code the engine has
        # no name for; the ban's end is lost with the event, unless it was logged.
        if ban is not None:
            code, expire = ban
            return TemporaryBan(until=now + expire,
                                reason=f"ban code {code}, which the engine cannot name")
        return TemporaryBan(until=None, reason=f"a ban code the engine cannot report "
                                                f"({outcome})")
    if event == "LoggedOut":
        return LoggedOut(f"a logout reason the engine cannot report ({outcome})")
    if event == "ConnectFailure":
        return Disconnected(f"WhatsApp refused the connection with a reason the engine "
                            f"cannot report, e.g. 415 or 418 ({outcome})")
    if event == "Receipt":
        return Disconnected(f"the engine stopped passing on events at a receipt of a type "
                            f"it does not know, e.g. server-error ({outcome}); "
                            "reconnecting to resume them")
    return Disconnected(f"the engine stopped passing on events at one it could not "
                        f"encode ({event}.{field}: {outcome})")


def pairing_needs_detail(status: str) -> bool:
    """Whether a login status only says that pairing ended, with the reason still to
    come from the pump (see ``DETAIL_STATUSES``)."""
    return status in DETAIL_STATUSES


def closes_qr_channel(status: str) -> bool:
    """Whether whatsmeow closed the QR channel with this status (after it, goneonize's
    QR loop ends and a stop of the client works; before it, a stop leaves the loop
    waiting forever: whatsmeow's QR emitter exits on an expected disconnect without
    closing the channel)."""
    return status in CLOSING_STATUSES
