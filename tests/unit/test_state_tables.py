"""One table per concept: every session state has one row (actors/session/states.py)
and every place that explains or decides by a state reads it; message states are one
enum that the store, the schema and the metrics agree on. Without processes: the
GraphQL part runs the real schema over a real status snapshot file."""

from __future__ import annotations

import re
import time
from importlib import resources
from pathlib import Path

import graphql
import pytest

from actors.messages import ErrorInfo, HealthReport, MessageState, SessionState, SessionStatus
from actors.metrics import OutboxMetrics
from actors.outbox import store as outbox_store
from actors.outbox.store import MessageStore, NewMessage
from actors.session import machine, states
from actors.session.machine import refuse_send
from actors.session.states import (
    BRIDGE_STATES,
    GATEWAY_STATUSES,
    SESSION_STATES,
    TONES,
    hint,
)
from actors.supervisor.snapshot import SnapshotReader, write_snapshot
from gateway.api.context import RequestContext
from gateway.api.health import health_document
from gateway.api.resolvers import build_schema
from gateway.auth.tokens import Principal
from gateway.core.config import config_from_dict
from gateway.web.actor_metrics import ActorCollector

ROOT = Path(__file__).resolve().parents[2]
SDL = resources.files("gateway.api").joinpath("schema.graphql").read_text("utf-8")
WORD = re.compile(r"\b[A-Z][A-Z_]{2,}\b")


def _schema_description(type_name: str, field: str | None = None) -> str:
    named = graphql.build_schema(SDL).get_type(type_name)
    assert isinstance(named, graphql.GraphQLObjectType)
    description = named.description if field is None else named.fields[field].description
    assert description, f"{type_name}.{field} has no description"
    return description


def _readme_rows(heading: str) -> list[list[str]]:
    """The cells of the first table after the line ``heading`` in the README."""
    lines = (ROOT / "README.md").read_text("utf-8").splitlines()
    start = lines.index(heading)
    rows, seen = [], False
    for line in lines[start + 1:]:
        if line.startswith("|"):
            seen = True
            if not line.startswith("| ---"):
                rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
        elif seen:
            break
    return rows[1:]  # without the header


# ---- session states --------------------------------------------------------------------


def test_every_session_state_has_exactly_one_complete_row() -> None:
    assert list(SESSION_STATES) == list(SessionState)
    for state, row in SESSION_STATES.items():
        assert row.label and row.meaning and row.what_to_do, state
        assert row.gateway_status in GATEWAY_STATUSES, state
        assert row.bridge_state in BRIDGE_STATES, state
        assert row.tone in TONES, state
        assert not (row.final and row.active), f"{state} cannot be retired and running"
        assert not row.queueing or row.active, f"{state} queues with no client to send"
        assert (row.refusal is None) == (state is SessionState.CONNECTED), state
    # Every value of the closed vocabularies is some state's.
    assert {row.gateway_status for row in SESSION_STATES.values()} == set(GATEWAY_STATUSES)
    assert {row.bridge_state for row in SESSION_STATES.values()} == set(BRIDGE_STATES)


def test_the_state_sets_the_actors_decide_by_are_the_tables() -> None:
    """The supervisor and the session actor import FINAL/ACTIVE from the machine: they
    must be the table's own sets, not copies."""
    assert machine.FINAL_STATES is states.FINAL_STATES
    assert machine.ACTIVE_STATES is states.ACTIVE_STATES
    assert machine.QUEUEING_STATES is states.QUEUEING_STATES
    assert {s for s, row in SESSION_STATES.items() if row.final} == states.FINAL_STATES
    assert SessionState.NEW not in states.FINAL_STATES | states.ACTIVE_STATES


@pytest.mark.parametrize("state", list(SessionState))
@pytest.mark.parametrize("paired", [True, False])
@pytest.mark.parametrize("require_connected", [True, False])
def test_the_refusal_of_every_state_comes_from_its_row(
        state: SessionState, paired: bool, require_connected: bool) -> None:
    row = SESSION_STATES[state]
    refusal = refuse_send("s1", state, paired, require_connected, "r1")
    queued = row.queueing and paired and not require_connected
    if row.refusal is None or queued:
        assert refusal is None
        return
    assert refusal is not None
    wanted = row.refusal.hint if paired or row.refusal.unpaired is None else row.refusal.unpaired
    assert refusal.code == row.refusal.code
    assert refusal.message == f"session 's1' {row.refusal.lead}: {wanted}"
    assert refusal.details == {"state": state.value, "session": "s1"}
    assert refusal.request_id == "r1"


def test_the_refusals_say_what_they_said_before_the_table() -> None:
    """The table moved the refusal texts, word for word (they are API answers)."""
    never = refuse_send("s", SessionState.NEW, False, False)
    assert never is not None and never.message == (
        "session 's' is not connected: it has never been linked; call whatsAppConnect and "
        "scan the QR code")
    expired = refuse_send("s", SessionState.QR_EXPIRED, True, False)
    assert expired is not None and (expired.code, expired.message) == (
        "QR_EXPIRED", "session 's' is not linked: its pairing window closed before a phone "
        "scanned the code; call whatsAppConnect for a new code")
    live_only = refuse_send("s", SessionState.CONNECTING, True, True)
    assert live_only is not None and live_only.message == (
        "session 's' is not connected: it is reconnecting; test messages are only sent on "
        "a live connection")
    banned = refuse_send("s", SessionState.BANNED, True, False)
    assert banned is not None and banned.message == (
        "session 's' is not connected: call whatsAppConnect to start it")


@pytest.mark.parametrize("state", list(SessionState))
def test_health_reads_every_state_from_its_row(state: SessionState) -> None:
    row = SESSION_STATES[state]
    report = HealthReport(sessions=(SessionStatus("s1", state),))
    document = health_document(report, 100.0)
    assert document["health"]["s1"] == {"gateway_status": row.gateway_status,
                                        "state": state.value}
    assert document["sessions"][0]["gatewayStatus"] == row.gateway_status
    assert document["status"] == ("degraded" if row.degraded else "ok")


def test_metrics_show_every_state_of_every_session() -> None:
    report = HealthReport(sessions=(SessionStatus("s1", SessionState.BANNED),),
                          outbox_metrics=OutboxMetrics(messages={MessageState.SENT: 2}))
    families = {f.name: f for f in ActorCollector(report).collect()}
    shown = {s.labels["state"]: s.value for s in families["wagate_session_state"].samples}
    assert shown == {s.value: float(s is SessionState.BANNED) for s in SessionState}
    counted = {s.labels["state"]: s.value for s in families["wagate_messages"].samples
               if s.name == "wagate_messages_total"}
    assert counted == {s.value: float(s is MessageState.SENT) * 2 for s in MessageState}


def test_the_api_answers_every_states_bridge_state_and_hint(tmp_path: Path) -> None:
    """Through the real schema, over a real status snapshot: the dashboard shows
    ``hint``, so a state without a row would be a page without a text."""
    ban_end = time.time() + 3600  # a known end: the BANNED row's own meaning
    statuses = {f"s{i}": SessionStatus(f"s{i}", state, banned_until=ban_end)
                for i, state in enumerate(SessionState)}
    (tmp_path / "run").mkdir()  # the gateway's run directory, made at start
    write_snapshot(tmp_path, statuses, time.time())
    # No bridge: the answer must come from the snapshot alone.
    context = RequestContext(bridge=None, config=config_from_dict({}),  # type: ignore[arg-type]
                             principal=Principal("t", "viewer"), audit=lambda *_, **__: None,
                             snapshots=SnapshotReader(tmp_path), numbers=None,
                             request_id="r1")
    result = graphql.graphql_sync(
        build_schema(), "{ whatsAppSessions { session state bridgeState "
        "hint { label meaning whatToDo tone } } }", context_value=context)
    assert result.errors is None, result.errors
    assert result.data is not None
    answered = {s["state"]: s for s in result.data["whatsAppSessions"]}
    assert set(answered) == {s.value for s in SessionState}
    for state, row in SESSION_STATES.items():
        assert answered[state.value]["bridgeState"] == row.bridge_state
        assert answered[state.value]["hint"] == {
            "label": row.label, "meaning": row.meaning, "whatToDo": row.what_to_do,
            "tone": row.tone}


def test_the_hint_tells_why_a_session_was_logged_out_and_whether_a_ban_ends() -> None:
    locked = hint(SessionStatus("s", SessionState.LOGGED_OUT,
                                last_error=ErrorInfo("ACCOUNT_LOCKED", "...")))
    assert (locked.meaning, locked.what_to_do) == states.LOGOUT_HINTS["ACCOUNT_LOCKED"]
    plain = hint(SessionStatus("s", SessionState.LOGGED_OUT,
                               last_error=ErrorInfo("LOGGED_OUT", "...")))
    assert plain.meaning == SESSION_STATES[SessionState.LOGGED_OUT].meaning
    # Every logout code the machine can give has a hint (LOGGED_OUT: the row's own).
    codes = {code for code, _ in machine.LOGOUT_ADVICE.values()} - {"LOGGED_OUT"}
    assert codes == set(states.LOGOUT_HINTS)
    unknown_end = hint(SessionStatus("s", SessionState.BANNED))
    assert unknown_end.meaning == states.BAN_END_UNKNOWN
    known_end = hint(SessionStatus("s", SessionState.BANNED, banned_until=10.0))
    assert known_end.meaning == SESSION_STATES[SessionState.BANNED].meaning


def test_the_schema_describes_every_state_and_bridge_state() -> None:
    """The SDL stays the file clients read; this keeps its lists equal to the table."""
    described = set(WORD.findall(_schema_description("WhatsAppStatus", "state")))
    assert described == {s.value for s in SessionState}
    bridge = _schema_description("WhatsAppStatus", "bridgeState")
    assert set(WORD.findall(bridge.split(":", 1)[1])) == set(BRIDGE_STATES)
    tones = _schema_description("SessionHint", "tone")
    assert set(re.findall(r"\b([a-z]+)\b(?: \(|,|\.| or)", tones.split(":", 1)[1])) == set(TONES)


def test_the_readme_tables_agree_with_the_state_table() -> None:
    rows = _readme_rows("Session states, what they mean and what to do:")
    documented = {row[0].strip("`"): row[1].strip("`") for row in rows}
    assert documented == {s.value: row.bridge_state for s, row in SESSION_STATES.items()}
    by_status: dict[str, set[str]] = {}
    for row in _readme_rows("of per node (and `gatewayStatus` on every entry of `sessions`):"):
        by_status[row[0].strip("`")] = set(WORD.findall(row[1].split(";")[0]))
    wanted: dict[str, set[str]] = {}
    for state, info in SESSION_STATES.items():
        wanted.setdefault(info.gateway_status, set()).add(state.value)
    assert by_status == wanted


def test_the_dashboard_keeps_no_copy_of_the_state_texts() -> None:
    """It asks for the hint and shows it; none of the table's texts is in the page."""
    script = (ROOT / "gateway/web/static/app.js").read_text("utf-8")
    assert re.search(r"hint \{ label meaning whatToDo tone \}", script)
    for row in SESSION_STATES.values():
        for text in (row.meaning, row.what_to_do, f'"{row.label}"'):
            assert text not in script
    for meaning, what_to_do in states.LOGOUT_HINTS.values():
        assert meaning not in script and what_to_do not in script


# ---- message states --------------------------------------------------------------------


def test_message_states_are_one_set_in_the_enum_the_store_and_the_schema() -> None:
    values = {s.value for s in MessageState}
    assert set(outbox_store.STATES) == values
    assert set(outbox_store.PENDING) | set(outbox_store.FINISHED) == values
    assert not set(outbox_store.PENDING) & set(outbox_store.FINISHED)
    assert set(outbox_store.RECEIPT_RANK) <= values
    described = _schema_description("WhatsAppMessage").split("state:", 1)[1]
    assert set(WORD.findall(described)) == values
    # The dashboard's filter offers each state once (a static page: checked, not built).
    page = (ROOT / "gateway/web/static/index.html").read_text("utf-8")
    select = page.split('<select id="messages-state">', 1)[1].split("</select>", 1)[0]
    assert re.findall(r"<option>([A-Z_]+)</option>", select) == [s.value for s in MessageState]


def test_the_store_keeps_and_answers_the_plain_strings(tmp_path: Path) -> None:
    """StrEnum: what is on disk and what the API shows is the bare word, as before."""
    store = MessageStore(tmp_path)
    try:
        record = store.add(NewMessage("s", "15551234567", "hi"), 1.0)
        store.transition(record, MessageState.SENDING, 2.0)
        row = store.db.execute("SELECT state, history FROM messages").fetchone()
        assert (row["state"], row["history"]) == (
            "SENDING", '[["QUEUED", 1.0, ""], ["SENDING", 2.0, ""]]')
        assert [r["id"] for r in store.in_state(MessageState.SENDING)] == [record["id"]]
        with pytest.raises(AssertionError):
            store.transition(record, "LOST", 3.0)  # type: ignore[arg-type]
    finally:
        store.close()
