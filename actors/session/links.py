"""A session's linked device and what belongs to it: plain functions, no actors.

A session name outlives the devices linked to it: log one out, scan with another
phone, and the name is the same. Everything accepted for the first device must end
with it (our promise: nothing is sent where it should not go). Two facts tie a
message to the device it was accepted for:

* the **link epoch**: a number the supervisor keeps in its registry (on disk) that
  grows each time a session's device is logged out (by us or from the phone) and
  each time a session is created. The outbox stores it with every message; a
  message of an older epoch than its session's is never sent (it becomes FAILED,
  ``SESSION_LOGGED_OUT``). Counted from one high-water mark for all sessions, so a
  forgotten and re-created name never reuses an epoch.
* the **account**: the linked phone number when the message was accepted. The
  session process, which knows which account its live connection belongs to, sends
  a message only from that account (otherwise FAILED, ``ACCOUNT_CHANGED``): this
  holds even when the credentials changed behind the gateway's back.

The supervisor's registry of sessions is bounded by ``sessions.max_sessions``; a
new session may take the place of one that holds nothing (no process, no linked
device), and ``whatsAppForgetSession`` removes one for good.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

from actors.messages import SessionState, SessionStatus

SESSION_LOGGED_OUT = "SESSION_LOGGED_OUT"  # message reason: its device was logged out
SESSION_FORGOTTEN = "SESSION_FORGOTTEN"  # message reason: its session was forgotten
ACCOUNT_CHANGED = "ACCOUNT_CHANGED"  # message reason: another account is linked now

ENDED_MESSAGES = {
    SESSION_LOGGED_OUT: "the session's device was logged out before this message was sent, "
                        "so it was not sent; link the session again (whatsAppConnect) and "
                        "send the message again",
    SESSION_FORGOTTEN: "the session was forgotten (whatsAppForgetSession) before this "
                       "message was sent, so it was not sent; send it through a linked "
                       "session",
}

def link_ended(record_epoch: int | None, link_epoch: int) -> bool:
    """Whether a message accepted under ``record_epoch`` belongs to a device that was
    logged out since (records written before epochs existed count as epoch 0)."""
    return (record_epoch or 0) < link_epoch


def wrong_account(bound: str | None, live: str | None) -> str | None:
    """Why a message accepted for account ``bound`` must not be sent on a connection
    of account ``live``; None when it may. A message accepted while the account was
    not known (``bound`` None or empty: records from before accounts were kept) is
    not checked; a live connection whose account is unknown proves nothing, so it
    is refused."""
    if not bound or bound == live:
        return None
    now = f"+{live}" if live else "an account the engine did not report"
    return (f"the message was accepted for account +{bound}, but the session is now "
            f"linked to {now}; it was not sent. Send it again if it should go from "
            "the new account")


def not_connected_yet(status: SessionStatus | None) -> bool:
    """Whether a message handed over now must wait rather than be judged by account:
    a process whose connection has not come up (a restarted process's first moments,
    a reconnect) does not know its account yet, and "unknown" must not fail a message
    for good (``ACCOUNT_CHANGED`` is permanent) when the same account is about to
    report. Such a message is answered NOT_CONNECTED and handed over again later."""
    return status is None or status.state is not SessionState.CONNECTED


def keep_account(old: SessionStatus | None, new: SessionStatus) -> SessionStatus:
    """A paired session reports no phone until its connection is up (after a restart,
    or a crash): keep the account known from before, so messages queued meanwhile are
    bound to it. A session that lost its credentials (``paired`` false) keeps none."""
    if (new.phone is None and new.paired and old is not None and old.paired
            and old.phone is not None):
        return dataclasses.replace(new, phone=old.phone)
    return new


# ---- the supervisor's registry of sessions -----------------------------------------


def new_entry(epoch: int) -> dict[str, Any]:
    """A registry entry for a session seen for the first time."""
    return {"want": "connected", "paired": False, "phone": None,
            "state": SessionState.NEW.value, "epoch": epoch}


def updated_entry(entry: dict[str, Any] | None, changes: dict[str, Any],
                  next_epoch: Callable[[], int]) -> dict[str, Any]:
    """``entry`` (None: a new session) with ``changes`` applied. A change into
    LOGGED_OUT starts a new link epoch (the old device's queue ends) and stops the
    session from pairing again by itself after a restart."""
    updated = dict(entry) if entry is not None else new_entry(next_epoch())
    was = updated.get("state")
    updated.update(changes)
    if changes.get("state") == SessionState.LOGGED_OUT.value:
        # Only on the change, so that a later whatsAppConnect (want "connected") is
        # not overruled by a repeated report.
        updated["want"] = "disconnected"
        if was != SessionState.LOGGED_OUT.value:
            updated["epoch"] = next_epoch()
    return updated


def holds_nothing(entry: dict[str, Any], running: bool, has_stores: bool) -> bool:
    """Whether forgetting this session loses nothing: no process runs it, it reports
    no linked device, and no credential store of it is on disk (an engine that could
    not start reports "not paired" over credentials it never read)."""
    return not running and not entry.get("paired") and not has_stores


def evictable(sessions: dict[str, dict[str, Any]], running: Iterable[str],
              has_stores: Callable[[str], bool]) -> list[str]:
    """The sessions that hold nothing, oldest link epoch first: the places a new
    session may take when the registry is full."""
    live = set(running)
    candidates = [name for name, entry in sessions.items()
                  if holds_nothing(entry, name in live, has_stores(name))]
    return sorted(candidates, key=lambda name: (sessions[name].get("epoch", 0), name))


def over_limit(sessions: dict[str, dict[str, Any]], limit: int, running: Iterable[str],
               has_stores: Callable[[str], bool]) -> list[str]:
    """Sessions to drop so that at most ``limit`` remain, taken only among those that
    hold nothing (a registry written by an older wagate may hold more)."""
    excess = len(sessions) - limit
    if excess <= 0:
        return []
    return evictable(sessions, running, has_stores)[:excess]
