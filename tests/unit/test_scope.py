"""A token limited to some sessions sees those and nothing gateway-wide: the health
document, the metrics and the overview all cut the report in gateway/auth/scope.py."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from actors.messages import HealthReport, SessionState, SessionStatus
from actors.metrics import OutboxMetrics, SessionMetrics
from gateway.api.health import health_document
from gateway.auth.scope import scoped_report
from gateway.web.metrics import render

GLOBAL_FAMILIES = {"wagate_messages", "wagate_messages_uncertain", "wagate_rate_limited",
                   "wagate_rate_limit_usage_ratio", "wagate_graphql_requests",
                   "wagate_graphql_request_duration_seconds", "wagate_send_errors",
                   "wagate_number_lookups", "wagate_number_cache_hits"}


def _report() -> HealthReport:
    """Two tenants' sessions on two hosts: "mine" on alpha, "theirs" and "other" on beta."""
    return HealthReport(
        sessions=(SessionStatus("mine", SessionState.CONNECTED, pid=101, host="alpha"),
                  SessionStatus("theirs", SessionState.FAILED, pid=102, host="beta"),
                  SessionStatus("other", SessionState.CONNECTED, pid=103, host="beta")),
        limiter={"global_day_used": 700.0, "global_day_limit": 1000.0},
        queue_depth=12, queue_by_session={"mine": 2, "theirs": 10}, uncertain_total=3,
        worker_pids={"supervisor": 10, "outbox": 11},
        session_metrics={"mine": SessionMetrics(qr_scans=1),
                         "theirs": SessionMetrics(reconnects=9)},
        outbox_metrics=OutboxMetrics(messages={"SENT": 500}, rate_limited={"queue": 4},
                                     usage_ratio={"global_day": 0.7}, uncertain=3),
        hosts=({"name": "alpha", "role": "leader", "slots": 5, "sessions": 1, "alive": True},
               {"name": "beta", "role": "member", "slots": 5, "sessions": 2, "alive": True}))


def test_a_session_limited_health_document_shows_only_its_sessions_and_no_internals() -> None:
    document = health_document(_report(), 200.0, frozenset({"mine"}))
    assert [s["session"] for s in document["sessions"]] == ["mine"]
    assert set(document["health"]) == {"mine"}
    assert document["status"] == "ok"  # another tenant's FAILED session is not ours
    assert document["queue"] == {"depth": 2, "bySession": {"mine": 2}}  # not 12
    assert "processes" not in document and "limiter" not in document
    assert document["sessions"][0]["pid"] is None  # no process id at all
    assert document["hosts"] == [{"name": "alpha", "role": "leader", "slots": 5,
                                  "sessions": 1, "alive": True}]
    text = repr(document)
    for leaked in ("theirs", "other", "beta", "101", "102", "'outbox'", "700"):
        assert leaked not in text, leaked


def test_a_token_for_all_sessions_still_sees_the_whole_gateway() -> None:
    document = health_document(_report(), 200.0, None)
    assert document["queue"] == {"depth": 12, "bySession": {"mine": 2, "theirs": 10},
                                 "uncertainTotal": 3}
    assert document["processes"] == {"supervisor": 10, "outbox": 11}
    assert document["limiter"]["global_day_used"] == 700.0
    assert [h["sessions"] for h in document["hosts"]] == [1, 2]
    assert document["sessions"][0]["pid"] == 101
    assert scoped_report(_report(), None) == _report()


def test_a_session_limited_scrape_has_only_its_series() -> None:
    families = {f.name: f for f in text_string_to_metric_families(
        render(_report(), frozenset({"mine"})).decode())}
    assert not GLOBAL_FAMILIES & set(families), GLOBAL_FAMILIES & set(families)
    labels = {s.labels.get("session") for f in families.values() for s in f.samples}
    assert labels == {None, "mine"}  # actors_up and build_info carry none
    queue = {s.labels["session"]: s.value for s in families["wagate_queue_depth"].samples}
    assert queue == {"mine": 2.0}
    whole = {f.name for f in text_string_to_metric_families(render(_report()).decode())}
    assert {"wagate_messages", "wagate_rate_limit_usage_ratio"} <= whole


def test_a_token_limited_to_no_session_sees_nothing_of_any() -> None:
    document = health_document(_report(), 200.0, frozenset())
    assert document["sessions"] == [] and document["hosts"] == []
    assert document["queue"] == {"depth": 0, "bySession": {}}
