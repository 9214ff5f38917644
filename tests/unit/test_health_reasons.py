"""Why the health document says "degraded" (``reasons``), from what the leader knows."""

from __future__ import annotations

from actors.messages import HealthReport, SessionState, SessionStatus
from gateway.api.health import health_document


def test_a_lost_or_late_member_makes_the_gateway_degraded_and_says_why() -> None:
    """A member the leader gave up, or one whose heartbeats come late (a slow or lossy
    link), makes the status "degraded", with the reason named; refused members too."""
    def hosts(*entries: dict[str, object]) -> HealthReport:
        base = {"role": "member", "slots": 1, "sessions": 0, "alive": True, "late": False,
                "runs": "wagate", "refused": None}
        leader = {**base, "name": "alpha", "role": "leader"}
        return HealthReport(hosts=(leader, *({**base, **e} for e in entries)))

    assert health_document(hosts({"name": "beta"}), 1.0)["status"] == "ok"
    assert health_document(hosts({"name": "beta"}), 1.0)["reasons"] == []
    late = health_document(hosts({"name": "beta", "late": True}), 1.0)
    assert late["status"] == "degraded"
    assert late["reasons"] == [{"code": "HOST_LATE", "host": "beta"}]
    lost = health_document(hosts({"name": "beta", "alive": False, "late": True}), 1.0)
    assert lost["reasons"] == [{"code": "HOST_LOST", "host": "beta"}]
    refused = health_document(hosts({"name": "gamma", "alive": False, "refused": "v2"}), 1.0)
    assert refused["reasons"] == [{"code": "HOST_REFUSED", "host": "gamma"}]
    down = health_document(HealthReport(sessions=(
        SessionStatus("s1", SessionState.FAILED), SessionStatus("s2", SessionState.CONNECTED))),
        1.0)
    assert down["reasons"] == [{"code": "SESSIONS_DOWN", "sessions": ["s1"]}]


def test_a_session_whose_store_cannot_be_written_makes_the_gateway_degraded() -> None:
    """A failing encrypted checkpoint: a restart now would lose the newest link state,
    so health says degraded (STORE_UNSAVED) with the session and what to do."""
    unsaved = SessionStatus("s1", SessionState.CONNECTED,
                            store_unsaved="the disk of data_dir is full")
    document = health_document(HealthReport(sessions=(
        unsaved, SessionStatus("s2", SessionState.CONNECTED))), 1.0)
    assert document["status"] == "degraded"
    assert document["reasons"] == [{"code": "STORE_UNSAVED", "sessions": ["s1"]}]
    [warning] = [w for w in document["warnings"] if w["code"] == "STORE_UNSAVED"]
    assert warning["session"] == "s1" and "disk of data_dir is full" in warning["message"]
    assert "do not restart" in warning["message"]
    saved = health_document(HealthReport(sessions=(
        SessionStatus("s1", SessionState.CONNECTED),)), 1.0)
    assert saved["status"] == "ok" and saved["warnings"] == []
