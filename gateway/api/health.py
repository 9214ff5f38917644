"""The health document (``/admin/health``, ``wagate status --json``), free of Flask.

Besides our own detail it carries a ``health`` object in the shape of the WhatsApp
Business on-premises API's ``GET /v1/health``, keyed by session instead of by node, so
monitoring written for that API reads a wagate gateway unchanged::

    {"health": {"default": {"gateway_status": "connected", ...}},
     "meta": {"api_status": "stable", "version": "0.1.0"}}

WhatsApp's values are ``connected``, ``connecting``, ``disconnected``,
``uninitialized`` and ``unregistered``; ``gateway_status`` maps our finer session
states onto them (README: Metrics), by the table of session states
(actors/session/states.py).
"""

from __future__ import annotations

from typing import Any

from actors.messages import HealthReport, SessionState, SessionStatus
from actors.session.states import (
    DEGRADED_STATES,
    gateway_status,
)
from actors.webhooks.schedule import retention_warning
from gateway import __version__
from gateway.auth.scope import Scope, scoped_report
from gateway.core.config import Config
from gateway.core.disk import MIB, Space, space
from gateway.core.times import iso_time
from gateway.core.validation import e164


def health_document(report: HealthReport, now: float, scope: Scope = None) -> dict[str, Any]:
    """The overall status plus every session's detail. ``scope`` (a token restricted to
    some sessions) limits it to those sessions and figures computed from them: no
    process ids, no uncertain count, no daily usage (gateway/auth/scope.py)."""
    report = scoped_report(report, scope)
    sessions = [_session_health(s, now, report.unconfirmed_by_session.get(s.session, 0))
                for s in report.sessions]
    reasons = degraded_reasons(report)
    queue: dict[str, Any] = {"depth": report.queue_depth,
                             "bySession": dict(report.queue_by_session)}
    warnings = health_warnings(report)
    held = report.outbox_metrics.held_writes if report.outbox_metrics is not None else 0
    if held:  # not scoped: what WhatsApp told the gateway is not on disk yet
        reasons.append({"code": "WRITES_HELD", "count": held})
        warnings.append({
            "code": "WRITES_HELD", "count": held,
            "message": f"{held} received message(s), receipt(s) or send result(s) could "
                       "not be written "
                       "(the disk is full); they wait in memory and are written by "
                       "themselves once there is space: free disk space on data_dir, and "
                       "do not restart the gateway before (a restart loses them)"})
    document: dict[str, Any] = {
        "status": "degraded" if reasons else "ok",
        # Why the status is "degraded" (empty when ok), each with a code.
        "reasons": reasons,
        "version": __version__,
        "time": iso_time(now),
        "health": {s.session: {"gateway_status": gateway_status(s), "state": s.state.value}
                   for s in report.sessions},
        "meta": {"api_status": "stable", "version": __version__},
        "sessions": sessions,
        "queue": queue,
        # The hosts of the cluster (one, this one, on a single host) with their sessions,
        # the wagate each runs, and why a member was refused (another wagate).
        "hosts": [dict(h) for h in report.hosts],
        # Things an operator should look at that do not stop the gateway working.
        "warnings": warnings,
    }
    if scope is None:  # gateway-wide: only for callers that see every session
        queue["uncertainTotal"] = report.uncertain_total
        document["limiter"] = report.limiter
        document["processes"] = report.worker_pids
        if report.outbox_metrics is not None:  # null while the outbox restarts
            document["eventLog"] = {"rows": report.outbox_metrics.event_rows,
                                    "bytes": report.outbox_metrics.event_bytes}
            document["mediaStore"] = {"bytes": report.outbox_metrics.media_bytes}
    return document


def degraded_reasons(report: HealthReport) -> list[dict[str, Any]]:
    """Why the gateway is "degraded", each with a code: sessions in a degraded state
    (RECONNECTING, FAILED, CLIENT_OUTDATED: the last takes every session down at once
    and only an upgrade brings them back); a cluster member refused for running
    another wagate; a member the leader gave up (its sessions move, and nothing new is
    placed there); a member whose heartbeats come late (a slow or lossy link between
    the hosts: placement still counts on it, but its sessions may be fenced soon)."""
    reasons: list[dict[str, Any]] = []
    sessions = sorted(s.session for s in report.sessions if s.state in DEGRADED_STATES)
    if sessions:
        reasons.append({"code": "SESSIONS_DOWN", "sessions": sessions})
    unsaved = sorted(s.session for s in report.sessions if s.store_unsaved)
    if unsaved:  # a crash now would lose the link (or move its keys back in time)
        reasons.append({"code": "STORE_UNSAVED", "sessions": unsaved})
    for host in report.hosts:
        name = host.get("name")
        if host.get("refused"):
            reasons.append({"code": "HOST_REFUSED", "host": name})
        elif host.get("alive") is False:
            reasons.append({"code": "HOST_LOST", "host": name})
        elif host.get("late"):
            reasons.append({"code": "HOST_LATE", "host": name})
    return reasons


def health_warnings(report: HealthReport) -> list[dict[str, Any]]:
    """What needs an operator's eye: messages whose delivery no device confirmed,
    sessions WhatsApp refuses as outdated, and sessions whose encrypted store cannot be
    written (that one also makes the gateway "degraded", see ``degraded_reasons``)."""
    warnings: list[dict[str, Any]] = []
    outdated = sorted(s.session for s in report.sessions
                      if s.state is SessionState.CLIENT_OUTDATED)
    if outdated:
        warnings.append({
            "code": "CLIENT_OUTDATED", "sessions": outdated, "count": len(outdated),
            "message": "WhatsApp refuses the web client version compiled into the engine "
                       "library (every session on it is affected, reconnecting cannot help): "
                       "upgrade wagate to a release with a newer engine, check it as the "
                       "README's runbook says (Operations: When WhatsApp retires the "
                       "engine's version), then call whatsAppConnect for each session"})
    for status in sorted(report.sessions, key=lambda s: s.session):
        if status.store_unsaved:
            warnings.append({
                "code": "STORE_UNSAVED", "session": status.session,
                "message": f"session '{status.session}': {status.store_unsaved}. Its newest "
                           "state is only in its working copy, tried again every "
                           "encryption.checkpoint_seconds; do not restart the gateway before "
                           "the warning goes (a restart resumes the last store written, "
                           "which may need a new QR scan)"})
    for session, count in sorted(report.unconfirmed_by_session.items()):
        if count > 0:
            warnings.append({
                "code": "DELIVERY_UNCONFIRMED", "session": session, "count": count,
                "message": f"{count} message(s) of session '{session}' were taken by WhatsApp's "
                           "server but no device of the recipient's confirmed them: list them "
                           "with whatsAppMessages(state: \"SENT\") (deliveryUnconfirmed) and "
                           "check the recipients' numbers; many at once can mean the session's "
                           "encryption keys are broken (re-link it)"})
    return warnings


def config_warnings(config: Config) -> list[dict[str, Any]]:
    """Settings that work but defeat each other (logged at start by ``wagate serve``,
    listed in health's ``warnings`` by the web tier, which has the serving config)."""
    found = retention_warning(config.events.retention_days, config.webhooks.retry_scale)
    return [found] if found is not None else []


def storage_space(config: Config) -> Space | None:
    """Free space on data_dir's file system (None when it cannot be read)."""
    try:
        return space(config.data_path, config.storage.min_free_mb)
    except OSError:
        return None


def add_storage(document: dict[str, Any], config: Config) -> None:
    """Free space on data_dir (``storage``), and under ``storage.min_free_mb`` a
    ``DISK_LOW`` warning and status ``degraded``: sends are refused (DISK_FULL) until
    space is freed, which a monitor must see without reading the warnings."""
    found = storage_space(config)
    if found is None:
        return
    document["storage"] = found.to_json()
    if found.low:
        if document.get("status") == "ok":
            document["status"] = "degraded"
        document.setdefault("reasons", []).append({"code": "DISK_LOW"})
        document.setdefault("warnings", []).append({
            "code": "DISK_LOW", "freeBytes": found.free_bytes,
            "minFreeBytes": found.min_free_bytes,
            "message": f"data_dir's file system has {found.free_bytes // MIB} MiB free, under "
                       f"storage.min_free_mb ({config.storage.min_free_mb}): sends are refused "
                       "(UNAVAILABLE, reason DISK_FULL) until disk space is freed; they "
                       "resume by themselves"})


def _session_health(status: SessionStatus, now: float, unconfirmed: int = 0
                    ) -> dict[str, Any]:
    return {
        "session": status.session,
        "state": status.state.value,
        "gatewayStatus": gateway_status(status),
        "connected": status.state is SessionState.CONNECTED,
        "phoneNumber": e164(status.phone),
        "reconnectAttempt": status.reconnect_attempt,
        "lastError": (None if status.last_error is None else
                      {"code": status.last_error.code, "message": status.last_error.message}),
        "connectedSince": iso_time(status.connected_since),
        "uptimeSeconds": (round(now - status.connected_since, 1)
                          if status.connected_since else 0.0),
        "pid": status.pid,
        "host": status.host,
        "unconfirmedMessages": unconfirmed,
    }
