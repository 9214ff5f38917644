"""The counters behind /metrics, the health mapping and their rendering, without processes."""

from __future__ import annotations

import io

import pytest
from prometheus_client.parser import text_string_to_metric_families

from actors.messages import ErrorInfo, HealthReport, SessionState, SessionStatus
from actors.metrics import OutboxMetrics, RefusalCounters, SessionCounters, SessionMetrics
from actors.session.states import GATEWAY_STATUSES
from gateway.api.health import gateway_status, health_document
from gateway.api.query_cache import DocumentCache
from gateway.api.resolvers import build_schema
from gateway.cli.progress import Progress
from gateway.cli.status import duration, status_table
from gateway.web.metrics import GraphqlMetrics, render


def status(state: SessionState, session: str = "default", **fields: object) -> SessionStatus:
    return SessionStatus(session=session, state=state, **fields)  # type: ignore[arg-type]


# ---- session counters ---------------------------------------------------------------


def test_pairing_counts_every_code_shown_and_one_scan() -> None:
    counters = SessionCounters()
    steps = [
        status(SessionState.CONNECTING),
        status(SessionState.QR_PENDING, qr_code="2@a"),
        status(SessionState.QR_PENDING, qr_code="2@a", reconnect_attempt=0),  # same code again
        status(SessionState.QR_PENDING, qr_code="2@b"),  # rotated
        status(SessionState.QR_PENDING, paired=False),  # scanned: the code is withdrawn
        status(SessionState.CONNECTED, paired=True, phone="15551234567"),
    ]
    old = None
    for now, new in enumerate(steps):
        counters.observe(old, new, float(now))
        old = new
    snap = counters.snapshot(10.0)["default"]
    assert (snap.qr_codes_issued, snap.qr_scans, snap.reconnects) == (2, 1, 0)
    assert snap.connected_seconds == 10.0 - 5.0  # connected since step 5, still connected


def test_a_restored_session_is_not_a_scan_and_a_reconnect_cycle_counts_once() -> None:
    counters = SessionCounters()
    paired = status(SessionState.CONNECTING, paired=True)
    counters.observe(None, paired, 0.0)  # known from disk at start: not a new link
    connected = status(SessionState.CONNECTED, paired=True)
    counters.observe(paired, connected, 1.0)
    lost = status(SessionState.RECONNECTING, paired=True, reconnect_attempt=1)
    counters.observe(connected, lost, 4.0)
    again = status(SessionState.RECONNECTING, paired=True, reconnect_attempt=2)
    counters.observe(lost, again, 5.0)  # another attempt of the same cycle
    counters.observe(again, connected, 6.0)
    counters.observe(connected, lost, 8.0)
    snap = counters.snapshot(20.0)["default"]
    assert (snap.qr_codes_issued, snap.qr_scans, snap.reconnects) == (0, 0, 2)
    assert snap.connected_seconds == (4.0 - 1.0) + (8.0 - 6.0)  # frozen while not connected


def test_sessions_are_counted_apart() -> None:
    counters = SessionCounters()
    counters.observe(None, status(SessionState.QR_PENDING, "a", qr_code="x"), 0.0)
    counters.observe(None, status(SessionState.CONNECTED, "b", paired=True), 0.0)
    snap = counters.snapshot(3.0)
    assert snap["a"] == SessionMetrics(qr_codes_issued=1)
    assert snap["b"] == SessionMetrics(connected_seconds=3.0)


def test_received_writes_kept_no_longer_add_up_per_session() -> None:
    counters = SessionCounters()
    counters.unkept("a", 2)
    counters.unkept("a", 3)  # a later period, or a later process of the session
    assert counters.snapshot(0.0)["a"] == SessionMetrics(received_unkept=5)


def test_fenced_store_writes_add_up_per_session() -> None:
    counters = SessionCounters()
    counters.store_fenced("a")
    counters.store_fenced("a")  # another stale process of the session
    assert counters.snapshot(0.0)["a"] == SessionMetrics(store_writes_fenced=2)


def test_refusals_by_scope() -> None:
    refusals = RefusalCounters()
    for scope in ("recipient_minute", "recipient_minute", "global_day", "queue", None,
                  "warmup_day"):
        refusals.refused(scope)
    snap = refusals.snapshot({"QUEUED": 3}, {"global_day": 0.5}, uncertain=1)
    assert snap.rate_limited == {"recipient_minute": 2, "recipient_hour": 0, "global_day": 1,
                                 "queue": 1, "warmup_day": 1, "unknown": 1}
    assert snap.messages == {"QUEUED": 3} and snap.uncertain == 1


# ---- WhatsApp-style health ----------------------------------------------------------------


def test_every_state_has_a_whatsapp_gateway_status() -> None:
    expected = {
        SessionState.NEW: "uninitialized", SessionState.CONNECTING: "connecting",
        SessionState.QR_PENDING: "unregistered", SessionState.CONNECTED: "connected",
        SessionState.RECONNECTING: "connecting", SessionState.QR_EXPIRED: "unregistered",
        SessionState.LOGGED_OUT: "unregistered", SessionState.FAILED: "disconnected",
        SessionState.DISCONNECTED: "disconnected", SessionState.REPLACED: "disconnected",
        SessionState.BANNED: "disconnected", SessionState.CLIENT_OUTDATED: "disconnected",
    }
    assert set(expected) == set(SessionState)
    for state, word in expected.items():
        assert gateway_status(status(state)) == word
        assert word in GATEWAY_STATUSES
    # Credentials on disk: linked, only not online.
    assert gateway_status(status(SessionState.NEW, paired=True)) == "disconnected"


def _report() -> HealthReport:
    return HealthReport(
        sessions=(status(SessionState.CONNECTED, "a", paired=True, phone="15551234567",
                         connected_since=100.0),
                  status(SessionState.RECONNECTING, "b", paired=True, reconnect_attempt=2,
                         last_error=ErrorInfo("DISCONNECTED", "connection lost"))),
        limiter={"global_day_used": 3.0, "global_day_limit": 10.0, "global_day_ratio": 0.3},
        queue_depth=4, queue_by_session={"b": 4}, uncertain_total=1,
        worker_pids={"supervisor": 10, "outbox": 11},
        session_metrics={"a": SessionMetrics(connected_seconds=7.5, qr_codes_issued=2,
                                             qr_scans=1, received_unkept=3,
                                             store_writes_fenced=1)},
        outbox_metrics=OutboxMetrics(messages={"QUEUED": 9, "SENT": 5, "FAILED": 1},
                                     rate_limited={"recipient_minute": 2},
                                     usage_ratio={"recipient_minute": 1.0,
                                                  "global_day": 0.3},
                                     uncertain=1, events_written={"message.status": 14},
                                     event_rows=20, event_bytes=3000))


def test_health_document_keeps_its_keys_and_adds_the_whatsapp_shape() -> None:
    document = health_document(_report(), 160.0)
    assert {"status", "version", "time", "sessions", "queue", "limiter",
            "processes"} <= set(document)
    assert document["status"] == "degraded"  # b is reconnecting
    assert document["health"] == {"a": {"gateway_status": "connected", "state": "CONNECTED"},
                                  "b": {"gateway_status": "connecting",
                                        "state": "RECONNECTING"}}
    assert document["meta"]["api_status"] == "stable"
    a = document["sessions"][0]
    assert a["gatewayStatus"] == "connected" and a["uptimeSeconds"] == 60.0
    only_a = health_document(_report(), 160.0, frozenset({"a"}))
    assert [s["session"] for s in only_a["sessions"]] == ["a"]
    assert set(only_a["health"]) == {"a"} and only_a["queue"]["bySession"] == {}
    assert document["eventLog"] == {"rows": 20, "bytes": 3000}
    assert "eventLog" not in only_a  # the log holds every session's events


def test_status_table_reads_like_the_document() -> None:
    table = status_table(health_document(_report(), 160.0))
    lines = table.splitlines()
    assert lines[0].startswith("wagate ") and ": degraded at " in lines[0]
    header = next(line for line in lines if line.startswith("SESSION"))
    assert header.split() == ["SESSION", "GATEWAY", "STATE", "PHONE", "UPTIME", "RECONNECT",
                              "QUEUE", "LAST", "ERROR"]
    row_a = next(line for line in lines if line.startswith("a "))
    assert row_a.split() == ["a", "connected", "CONNECTED", "+15551234567", "1m00s", "-",
                             "0", "-"]
    row_b = next(line for line in lines if line.startswith("b "))
    assert row_b.split() == ["b", "connecting", "RECONNECTING", "-", "-", "2", "4",
                             "DISCONNECTED"]
    assert "queue: 4 messages waiting, 1 uncertain" in lines
    assert "daily limit: 3 of 10 used (30%)" in lines
    assert "b: DISCONNECTED: connection lost" in lines
    empty = status_table(health_document(HealthReport(), 0.0))
    assert "no sessions yet: call whatsAppConnect" in empty


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (59.9, "59s"), (61, "1m01s"),
                                               (3600 * 2 + 300, "2h05m"),
                                               (86400 * 3 + 3600, "3d01h")])
def test_durations(seconds: float, text: str) -> None:
    assert duration(seconds) == text


# ---- rendering ---------------------------------------------------------------------------


def _families(text: bytes) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = \
                sample.value
    return found


def test_actor_metrics_render_as_prometheus_text() -> None:
    metrics = _families(render(_report()))
    assert metrics["wagate_actors_up"] == {(): 1.0}
    assert metrics["wagate_session_connected"] == {(("session", "a"),): 1.0,
                                                   (("session", "b"),): 0.0}
    states = metrics["wagate_session_state"]
    assert len(states) == 2 * len(SessionState)
    assert states[(("session", "b"), ("state", "RECONNECTING"))] == 1.0
    assert sum(states.values()) == 2.0  # one current state per session
    assert metrics["wagate_session_connected_seconds_total"][(("session", "a"),)] == 7.5
    assert metrics["wagate_qr_codes_issued_total"][(("session", "a"),)] == 2.0
    assert metrics["wagate_qr_scans_total"] == {(("session", "a"),): 1.0,
                                                (("session", "b"),): 0.0}
    assert metrics["wagate_session_reconnect_attempt"][(("session", "b"),)] == 2.0
    assert metrics["wagate_received_unkept_total"] == {(("session", "a"),): 3.0,
                                                       (("session", "b"),): 0.0}
    assert metrics["wagate_store_writes_fenced_total"] == {(("session", "a"),): 1.0,
                                                           (("session", "b"),): 0.0}
    assert metrics["wagate_queue_depth"] == {(("session", "a"),): 0.0,
                                             (("session", "b"),): 4.0}
    messages = metrics["wagate_messages_total"]
    assert messages[(("state", "QUEUED"),)] == 9.0 and messages[(("state", "SENT"),)] == 5.0
    assert messages[(("state", "EXPIRED"),)] == 0.0  # every state has a series
    limited = metrics["wagate_rate_limited_total"]
    assert limited[(("scope", "recipient_minute"),)] == 2.0
    assert limited[(("scope", "queue"),)] == 0.0
    ratio = metrics["wagate_rate_limit_usage_ratio"]
    assert ratio == {(("scope", "recipient_minute"),): 1.0, (("scope", "recipient_hour"),): 0.0,
                     (("scope", "global_day"),): 0.3}
    assert metrics["wagate_messages_uncertain_total"] == {(): 1.0}
    assert metrics["wagate_events_written_total"] == {
        (("type", "message.received"),): 0.0, (("type", "message.status"),): 14.0,
        (("type", "session.status"),): 0.0}
    assert metrics["wagate_event_log_rows"] == {(): 20.0}
    assert metrics["wagate_event_log_bytes"] == {(): 3000.0}
    only_b = _families(render(_report(), frozenset({"b"})))
    assert set(only_b["wagate_session_connected"]) == {(("session", "b"),)}


def test_without_the_actors_only_their_absence_is_reported() -> None:
    metrics = _families(render(None))
    assert metrics["wagate_actors_up"] == {(): 0.0}
    assert "wagate_session_connected" not in metrics
    assert "wagate_messages_total" not in metrics


def test_graphql_operations_are_labelled_by_root_field() -> None:
    documents = DocumentCache()
    graphql = GraphqlMetrics(build_schema(), documents.parser)

    def label(query: object, name: str | None = None) -> str:
        return graphql.operation({"query": query, "operationName": name})[0]

    assert label("{ whatsAppStatus { connected } }") == "whatsAppStatus"
    assert label("mutation { whatsAppConnect }") == "whatsAppConnect"
    assert label("mutation Mine { a: whatsAppConnect b: whatsAppDisconnect }") == "multiple"
    assert label("{ __schema { types { name } } }") == "introspection"
    assert label("{ noSuchField }") == "unknown"
    assert label("{ broken") == "invalid"
    assert label(42) == "invalid"
    two = "query A { whatsAppStatus { connected } } mutation B { whatsAppConnect }"
    assert label(two) == "invalid"  # which one runs is not said
    assert label(two, "B") == "whatsAppConnect"


def test_send_errors_are_counted_by_code() -> None:
    graphql = GraphqlMetrics(build_schema(), DocumentCache().parser)
    before = _families(render(None)).get("wagate_send_errors_total", {})
    query = ("mutation { one: sendWhatsAppNotification(phoneNumber: \"x\", message: \"m\") "
             "whatsAppConnect }")
    result = {"data": None, "errors": [
        {"message": "bad", "path": ["one"], "extensions": {"code": "INVALID_NUMBER"}},
        {"message": "x", "path": ["whatsAppConnect"], "extensions": {"code": "SESSION_LIMIT"}}]}
    graphql.observe({"query": query}, result, 0.01)
    after = _families(render(None))
    key = (("code", "INVALID_NUMBER"),)
    assert after["wagate_send_errors_total"][key] == before.get(key, 0.0) + 1
    assert (("code", "SESSION_LIMIT"),) not in after["wagate_send_errors_total"]
    requests = after["wagate_graphql_requests_total"]
    assert requests[(("operation", "multiple"), ("outcome", "INVALID_NUMBER"))] >= 1


# ---- progress -------------------------------------------------------------------------------


def test_progress_without_a_terminal_writes_a_line_per_change() -> None:
    out = io.StringIO()
    progress = Progress(out, tty=False)
    for left in (3, 2, 1):
        progress.update("5 messages waiting", f"{left} s left")
    progress.update("2 messages waiting", "1 s left")
    progress.done()
    assert out.getvalue() == "5 messages waiting\n2 messages waiting\n"


def test_progress_on_a_terminal_rewrites_one_line() -> None:
    out = io.StringIO()
    progress = Progress(out, tty=True)
    progress.update("waiting for a QR code", "9 s left")
    progress.update("linked?", "8 s left")
    progress.done()
    text = out.getvalue()
    assert "\n" not in text and text.count("\r") == 4  # two updates, then the erase
    assert "waiting for a QR code (9 s left)" in text and text.endswith("\r")


def _outdated_report() -> HealthReport:
    """WhatsApp retired the engine's client version: both sessions are refused."""
    return HealthReport(
        sessions=tuple(status(SessionState.CLIENT_OUTDATED, name, paired=True)
                       for name in ("a", "b")),
        outbox_metrics=OutboxMetrics())


def test_a_retired_client_version_degrades_health_and_says_what_to_do() -> None:
    document = health_document(_outdated_report(), 160.0)
    assert document["status"] == "degraded"
    (warning,) = [w for w in document["warnings"] if w["code"] == "CLIENT_OUTDATED"]
    assert warning["sessions"] == ["a", "b"] and warning["count"] == 2
    assert "upgrade wagate" in warning["message"] and "runbook" in warning["message"]
    only_a = health_document(_outdated_report(), 160.0, frozenset({"a"}))
    assert [w["sessions"] for w in only_a["warnings"]] == [["a"]]


def test_a_retired_client_version_has_its_own_metric_and_the_engine_its_version() -> None:
    import importlib.metadata

    families = {f.name: f for f in text_string_to_metric_families(
        render(_outdated_report()).decode())}
    (outdated,) = families["wagate_sessions_client_outdated"].samples
    assert outdated.value == 2.0
    (engine,) = families["wagate_engine_info"].samples
    assert engine.labels == {"engine": "neonize",
                             "version": importlib.metadata.version("neonize")}
    healthy = HealthReport(sessions=(status(SessionState.CONNECTED, "a", paired=True),))
    families = {f.name: f for f in text_string_to_metric_families(render(healthy).decode())}
    assert families["wagate_sessions_client_outdated"].samples[0].value == 0.0


def test_no_warnings_when_all_is_well() -> None:
    assert health_document(_report(), 160.0)["warnings"] == []
