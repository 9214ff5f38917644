"""Prometheus metric families built from a ``HealthReport``, at scrape time.

The actors keep their counters in memory (actors/metrics.py) and hand a snapshot
over with the health report; this module only names and shapes them. Nothing here
runs on the send path. Pure: no Flask, no actor system.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from actors.media.kinds import Kind
from actors.messages import HealthReport, MessageState, SessionState
from actors.metrics import RATE_SCOPES, OutboxMetrics, SessionMetrics
from actors.outbox.events import EVENT_TYPES
from actors.session.states import SESSION_STATES
from gateway import __version__
from gateway.auth.scope import Scope, scoped_report

LIMIT_SCOPES = ("recipient_minute", "recipient_hour", "global_day")
MEDIA_KINDS = tuple(kind.value for kind in Kind)


def engine_version() -> str:
    """The installed neonize's version, from its package metadata: the engine itself is
    never imported outside a session process. "" when it is not installed."""
    try:
        return importlib.metadata.version("neonize")
    except importlib.metadata.PackageNotFoundError:
        return ""


class ActorCollector:
    """One scrape's worth of actor-side metrics (``report`` None: the actors did not
    answer, and ``wagate_actors_up`` says so). ``scope``: a token limited to some
    sessions gets only their series, none of the gateway-wide ones (gateway/auth/scope.py)."""

    def __init__(self, report: HealthReport | None, scope: Scope = None) -> None:
        self.report = None if report is None else scoped_report(report, scope)
        self.whole = scope is None

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("wagate_actors_up", "1 when the actor system answered this "
                               "scrape, 0 when it did not (the other wagate_ metrics of the "
                               "actors are then missing)")
        up.add_metric([], 1.0 if self.report is not None else 0.0)
        yield up
        info = GaugeMetricFamily("wagate_build_info", "always 1; the version is a label",
                                 labels=["version"])
        info.add_metric([__version__], 1.0)
        yield info
        engine = GaugeMetricFamily("wagate_engine_info", "always 1; the installed real "
                                   "engine's version is a label (the WhatsApp web client "
                                   "version is compiled into it)", labels=["engine", "version"])
        engine.add_metric(["neonize", engine_version()], 1.0)
        yield engine
        if self.report is None:
            return
        yield from self._sessions(self.report)
        yield from self._outbox(self.report)

    def _sessions(self, report: HealthReport) -> Iterator[Metric]:
        connected = GaugeMetricFamily("wagate_session_connected",
                                      "1 when the session is linked and online", labels=["session"])
        state = GaugeMetricFamily("wagate_session_state", "1 for the session's current state, "
                                  "0 for the others", labels=["session", "state"])
        attempt = GaugeMetricFamily("wagate_session_reconnect_attempt", "the current reconnect "
                                    "attempt (0 when not reconnecting)", labels=["session"])
        seconds = CounterMetricFamily("wagate_session_connected_seconds_total",
                                      "seconds the session has been connected",
                                      labels=["session"])
        issued = CounterMetricFamily("wagate_qr_codes_issued_total",
                                     "QR codes shown for pairing (each rotation counts)",
                                     labels=["session"])
        scans = CounterMetricFamily("wagate_qr_scans_total", "pairings completed (a QR code "
                                    "scanned or a pairing code typed)", labels=["session"])
        reconnects = CounterMetricFamily("wagate_reconnects_total", "times the session lost "
                                         "its connection (or a connect attempt failed) and "
                                         "began reconnecting", labels=["session"])
        unkept = CounterMetricFamily(
            "wagate_received_unkept_total", "received messages and receipts a session "
            "process stopped keeping for a resend before the outbox committed them "
            "(delivery.max_unacknowledged_received reached)", labels=["session"])
        fenced = CounterMetricFamily(
            "wagate_store_writes_fenced_total", "writes of a session's shared credential "
            "store refused because the writing process no longer held the session's lease "
            "(or a later lease had written it): each one a stale process kept from rolling "
            "back its successor's store", labels=["session"])
        for status in report.sessions:
            name = status.session
            connected.add_metric([name], 1.0 if status.connected else 0.0)
            for candidate in SESSION_STATES:  # every state, from the one table
                state.add_metric([name, candidate.value],
                                 1.0 if status.state is candidate else 0.0)
            attempt.add_metric([name], float(status.reconnect_attempt))
            counts = report.session_metrics.get(name) or SessionMetrics()
            seconds.add_metric([name], counts.connected_seconds)
            issued.add_metric([name], float(counts.qr_codes_issued))
            scans.add_metric([name], float(counts.qr_scans))
            reconnects.add_metric([name], float(counts.reconnects))
            unkept.add_metric([name], float(counts.received_unkept))
            fenced.add_metric([name], float(counts.store_writes_fenced))
        outdated = GaugeMetricFamily(
            "wagate_sessions_client_outdated", "sessions WhatsApp refuses because the "
            "engine's compiled web client version was retired (upgrade wagate)")
        outdated.add_metric([], float(sum(s.state is SessionState.CLIENT_OUTDATED
                                          for s in report.sessions)))
        yield from (connected, state, attempt, seconds, issued, scans, reconnects, unkept,
                    fenced, outdated)

    def _outbox(self, report: HealthReport) -> Iterator[Metric]:
        metrics = report.outbox_metrics
        if metrics is None:  # the outbox is restarting: its counters are unknown now
            return
        queue = GaugeMetricFamily("wagate_queue_depth", "messages waiting to be sent (queued "
                                  "or being sent)", labels=["session"])
        names = {s.session for s in report.sessions} | set(report.queue_by_session)
        for name in sorted(names):
            queue.add_metric([name], float(report.queue_by_session.get(name, 0)))
        yield queue
        unconfirmed = GaugeMetricFamily(
            "wagate_messages_unconfirmed", "messages SENT longer than "
            "delivery.unconfirmed_after_seconds with no delivery receipt (the server took "
            "them; no device of the recipient's confirmed)", labels=["session"])
        for name in sorted(names | set(report.unconfirmed_by_session)):
            unconfirmed.add_metric([name], float(report.unconfirmed_by_session.get(name, 0)))
        yield unconfirmed
        if not self.whole:
            return  # the counters below are of every session together
        messages = CounterMetricFamily("wagate_messages_total", "messages that reached each "
                                       "state (each message once per state)", labels=["state"])
        for state in MessageState:
            messages.add_metric([state.value], float(metrics.messages.get(state, 0)))
        yield messages
        uncertain = CounterMetricFamily("wagate_messages_uncertain_total", "messages whose "
                                        "fate a crash hid (resent or failed by policy)")
        uncertain.add_metric([], float(metrics.uncertain))
        yield uncertain
        limited = CounterMetricFamily("wagate_rate_limited_total", "sends refused by a rate "
                                      "limit (scope queue: the session's queue was full; "
                                      "warmup_day: a newly linked device's warm-up cap; "
                                      "whatsapp: WhatsApp's 429 paused a session)",
                                      labels=["scope"])
        for scope in sorted(set(RATE_SCOPES) | set(metrics.rate_limited)):
            limited.add_metric([scope], float(metrics.rate_limited.get(scope, 0)))
        yield limited
        ratio = GaugeMetricFamily("wagate_rate_limit_usage_ratio", "use of the fullest "
                                  "window of each limit, 0 to 1 (1: the next send is refused)",
                                  labels=["scope"])
        for scope in LIMIT_SCOPES:
            ratio.add_metric([scope], float(metrics.usage_ratio.get(scope, 0.0)))
        yield ratio
        yield from _event_log(metrics)
        yield from _media(metrics)


def _media(metrics: OutboxMetrics) -> Iterator[Metric]:
    """The media store (README: Media messages); sends are counted by the web tier."""
    stored = GaugeMetricFamily("wagate_media_bytes", "bytes the encrypted media files take "
                               "in data_dir/media (each file once; bounded by "
                               "media.max_total_mb)")
    stored.add_metric([], float(metrics.media_bytes))
    received = CounterMetricFamily("wagate_media_received_total", "media messages received "
                                   "since the outbox started, by kind", labels=["kind"])
    for kind in MEDIA_KINDS:
        received.add_metric([kind], float(metrics.media_received.get(kind, 0)))
    yield from (stored, received)


def _event_log(metrics: OutboxMetrics) -> Iterator[Metric]:
    """The event log (README: Events): what was written, and what it holds now."""
    written = CounterMetricFamily("wagate_events_written_total", "events written to the "
                                  "event log since the outbox started, by type",
                                  labels=["type"])
    for kind in EVENT_TYPES:
        written.add_metric([kind], float(metrics.events_written.get(kind, 0)))
    rows = GaugeMetricFamily("wagate_event_log_rows", "events kept in the event log "
                             "(pruned after events.retention_days)")
    rows.add_metric([], float(metrics.event_rows))
    size = GaugeMetricFamily("wagate_event_log_bytes", "payload bytes of the events kept "
                             "(ids, types, sessions, data; counted at most every 30 s)")
    size.add_metric([], float(metrics.event_bytes))
    held = GaugeMetricFamily("wagate_held_writes", "received messages and receipts "
                             "waiting in memory for disk space (written once there is space)")
    held.add_metric([], float(metrics.held_writes))
    lost = CounterMetricFamily("wagate_held_writes_lost_total", "received messages and "
                               "receipts lost because the disk was full and too many waited "
                               "(10000)")
    lost.add_metric([], float(metrics.held_lost))
    yield from (written, rows, size, held, lost)


class WebhookCollector:
    """The webhook actor's counters (``actors.webhooks.delivery.Stats.snapshot`` plus
    the endpoints disabled now), for an unscoped scrape: endpoints are gateway-wide."""

    def __init__(self, snapshot: dict[str, Any]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        found = self.snapshot
        deliveries = CounterMetricFamily(
            "wagate_webhook_deliveries", "Webhook delivery attempts by endpoint and outcome "
            "(delivered, retry, gone, exhausted, test)", labels=["endpoint", "outcome"])
        for endpoint, outcome, count in found.get("deliveries", []):
            deliveries.add_metric([str(endpoint), str(outcome)], float(count))
        yield deliveries
        buckets = found.get("latency_buckets", [])
        latency = HistogramMetricFamily(
            "wagate_webhook_delivery_seconds", "Time of one webhook request, connect to the "
            "last byte read")
        latency.add_metric([], [(_bound(b), float(n)) for b, n in buckets],
                           float(found.get("latency_sum", 0.0)))
        yield latency
        disabled = GaugeMetricFamily("wagate_webhook_endpoints_disabled",
                                     "Webhook endpoints disabled now (410, retries exhausted, "
                                     "or by an operator)")
        disabled.add_metric([], float(found.get("disabled_now", 0)))
        yield disabled
        total = CounterMetricFamily("wagate_webhook_disabled",
                                    "Webhook endpoints the delivery loop disabled since start")
        total.add_metric([], float(found.get("disabled_total", 0)))
        yield total


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(float(value))
