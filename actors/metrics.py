"""Counters the actors keep for ``/metrics``: plain classes, no actor or Prometheus code.

The actors only feed them (the supervisor every session status change, the outbox
every refusal) and hand a snapshot to the web tier when it scrapes, inside the
``HealthReport``. Feeding is a dictionary update, so a send costs no extra actor
message and no measurable time. They live in the actors' memory and so start from
zero when the gateway (or the actor) restarts: Prometheus treats a counter that went
down as a reset, and ``rate()``/``increase()`` stay correct across it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from actors.messages import SessionState, SessionStatus

# What a send can be refused for: the limiter's windows, a full session queue, and the
# warm-up cap of a newly linked device (actors/outbox/pacing.py).
RATE_SCOPES = ("recipient_minute", "recipient_hour", "global_day", "queue", "warmup_day")


@dataclass(frozen=True, slots=True)
class SessionMetrics:
    """One session's counters at the moment of a scrape (picklable)."""

    connected_seconds: float = 0.0
    qr_codes_issued: int = 0
    qr_scans: int = 0
    reconnects: int = 0
    # Received messages and receipts its processes kept no longer, unacknowledged, at
    # delivery.max_unacknowledged_received (actors/session/unacked.py).
    received_unkept: int = 0
    # Writes of its shared credential store refused by the lease fence
    # (actors.leases.fencing): a stale process that did not overwrite its successor's.
    store_writes_fenced: int = 0


@dataclass(frozen=True, slots=True)
class OutboxMetrics:
    """The outbox's counters at the moment of a scrape (picklable)."""

    messages: dict[str, int] = field(default_factory=dict)  # state -> messages that reached it
    rate_limited: dict[str, int] = field(default_factory=dict)  # scope -> refused sends
    usage_ratio: dict[str, float] = field(default_factory=dict)  # scope -> busiest window
    uncertain: int = 0
    # The event log (actors/outbox/events.py): events written since the outbox started,
    # by type, and its size on disk as rows and payload bytes.
    events_written: dict[str, int] = field(default_factory=dict)
    event_rows: int = 0
    event_bytes: int = 0
    # The media store (data_dir/media): what the referenced files take on disk, and the
    # media messages received since the outbox started, by kind.
    media_bytes: int = 0
    media_received: dict[str, int] = field(default_factory=dict)
    # Received messages and receipts waiting in memory for disk space to be written
    # (actors/outbox/held.py), and those refused meanwhile (memory full too): lost.
    held_writes: int = 0
    held_lost: int = 0


@dataclass
class _Tally:
    connected_seconds: float = 0.0
    connected_at: float | None = None  # when the current connected stretch began
    qr_codes_issued: int = 0
    qr_scans: int = 0
    reconnects: int = 0
    received_unkept: int = 0
    store_writes_fenced: int = 0


class SessionCounters:
    """Per-session counters derived from the status changes the supervisor sees.

    Derived from consecutive statuses rather than reported by the sessions, so a
    session process that crashes and restarts does not lose or double its counts.
    """

    def __init__(self) -> None:
        self._tallies: dict[str, _Tally] = {}

    def observe(self, old: SessionStatus | None, new: SessionStatus, now: float) -> None:
        tally = self._tallies.setdefault(new.session, _Tally())
        if new.qr_code is not None and new.qr_code != (old.qr_code if old else None):
            tally.qr_codes_issued += 1  # every rotation shows the phone a new code
        if old is not None and not old.paired and new.paired:
            tally.qr_scans += 1  # linked: a QR scan or a pairing code was accepted
        if new.state is SessionState.RECONNECTING and (
                old is None or old.state is not SessionState.RECONNECTING):
            tally.reconnects += 1
        if new.state is SessionState.CONNECTED:
            if tally.connected_at is None:
                tally.connected_at = now
        elif tally.connected_at is not None:
            tally.connected_seconds += max(0.0, now - tally.connected_at)
            tally.connected_at = None

    def unkept(self, session: str, count: int) -> None:
        """A process of ``session`` gave up keeping ``count`` more unacknowledged
        received messages or receipts (it says so itself: no status shows it)."""
        self._tallies.setdefault(session, _Tally()).received_unkept += count

    def store_fenced(self, session: str) -> None:
        """A process of ``session`` was refused a store write by the lease fence."""
        self._tallies.setdefault(session, _Tally()).store_writes_fenced += 1

    def forget(self, session: str) -> None:
        """A forgotten session's series go with it (names must not pile up)."""
        self._tallies.pop(session, None)

    def snapshot(self, now: float) -> dict[str, SessionMetrics]:
        return {session: SessionMetrics(
                    connected_seconds=t.connected_seconds + (
                        max(0.0, now - t.connected_at) if t.connected_at is not None else 0.0),
                    qr_codes_issued=t.qr_codes_issued, qr_scans=t.qr_scans,
                    reconnects=t.reconnects, received_unkept=t.received_unkept,
                    store_writes_fenced=t.store_writes_fenced)
                for session, t in self._tallies.items()}


class RefusalCounters:
    """Sends the outbox refused, by the limit that refused them."""

    def __init__(self) -> None:
        self.by_scope: dict[str, int] = dict.fromkeys(RATE_SCOPES, 0)

    def refused(self, scope: str | None) -> None:
        key = scope or "unknown"
        self.by_scope[key] = self.by_scope.get(key, 0) + 1

    def snapshot(self, messages: dict[str, int], usage_ratio: dict[str, float],
                 uncertain: int) -> OutboxMetrics:
        return OutboxMetrics(messages=dict(messages), rate_limited=dict(self.by_scope),
                             usage_ratio=dict(usage_ratio), uncertain=uncertain)
