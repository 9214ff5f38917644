"""Regressions of issue #14's event log and incoming messages, found by an attack
review: each test failed before its fix and names the defect it guards against."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors.messages import ListEvents
from actors.outbox import events as ev
from actors.outbox.incoming import IncomingStore
from actors.outbox.store import MessageStore
from tests.unit.test_web_events import EVENTS, site  # noqa: F401  (the fixture)
from tests.unit.web_helpers import Web, add_token, codes

BEYOND_SQLITE = str(2**63)  # one past SQLite's largest INTEGER (19 digits)


def cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def test_an_event_cursor_beyond_sqlite_integers_is_refused_as_invalid() -> None:
    """Regression: event-cursor-overflow. ``decode_event_cursor`` admits 19
    digits, but 9223372036854775808..9999999999999999999 do not fit SQLite's INTEGER:
    the forged cursor passes validation and ``events_after`` raises OverflowError in
    the outbox (an INTERNAL answer and a traceback instead of a validation error)."""
    with pytest.raises(ValueError):
        ev.decode_event_cursor(cursor("e:" + BEYOND_SQLITE))


def test_a_forged_huge_event_cursor_is_a_validation_error_over_http(
        site: tuple[Web, MessageStore]) -> None:  # noqa: F811
    """Regression: event-cursor-overflow, through the real Flask app and the
    real paging function: the answer must be GRAPHQL_VALIDATION_FAILED and the outbox
    never asked."""
    w, _ = site
    result = w.gql(EVENTS, {"a": cursor("e:" + BEYOND_SQLITE)}, add_token(w.config, "t", "admin"))
    assert codes(result) == ["GRAPHQL_VALIDATION_FAILED"], result
    assert w.bridge.asked_of(ListEvents) == []


@pytest.fixture
def incoming(tmp_path: Path) -> Iterator[IncomingStore]:
    outbox = MessageStore(tmp_path / "outbox")
    try:
        yield IncomingStore(outbox.db, keep_text=True)
    finally:
        outbox.close()


@pytest.mark.parametrize("digits", [BEYOND_SQLITE, "9" * 400], ids=["2**63", "400-digits"])
def test_a_huge_incoming_cursor_is_a_value_error_the_outbox_answers(
        incoming: IncomingStore, digits: str) -> None:
    """Regression: incoming-cursor-overflow. ``incoming.decode_cursor`` has no
    bound at all; ``page`` then raises OverflowError, which the outbox's
    ``receiveMsg_ListIncoming`` does not catch (it turns only ValueError into
    GRAPHQL_VALIDATION_FAILED): the message fails in the outbox actor (Thespian
    retries it, then returns it as a PoisonMessage) instead of a validation answer."""
    with pytest.raises(ValueError):
        incoming.page(after=_incoming_cursor(digits))


def _incoming_cursor(digits: str) -> str:
    from actors.outbox import incoming as module
    return cursor(f"{module._CURSOR_PREFIX}{digits}")


def engine_event(push_name: bytes, text: bytes, timestamp: int = 1_767_225_600) -> object:
    """A neonize ``Message`` event as the engine's bytes arrive: its real protobuf class,
    parsed from wire bytes in which ``Pushname`` and ``conversation`` hold ``push_name``
    and ``text`` as they are (proto2 string fields: neither Go's encoder nor Python's
    decoder checks UTF-8, and upb hands invalid UTF-8 back as ``bytes``)."""
    from neonize.proto import Neonize_pb2 as proto

    event = proto.Message()
    source = event.Info.MessageSource
    source.Chat.User, source.Chat.Server = "4915112345001", "s.whatsapp.net"
    source.Sender.User, source.Sender.Server = "4915112345001", "s.whatsapp.net"
    event.Info.ID, event.Info.Timestamp = "3EB0HOSTILE", timestamp
    event.Info.Pushname, event.Message.conversation = "P" * 16, "T" * 16
    assert len(push_name) <= 16 and len(text) <= 16  # same length: no length prefix moves
    raw = (event.SerializePartialToString()
           .replace(b"P" * 16, push_name.ljust(16, b" "))
           .replace(b"T" * 16, text.ljust(16, b" ")))
    parsed = proto.Message()
    parsed.ParseFromString(raw)
    return parsed


def test_a_reply_with_invalid_utf8_from_the_engine_is_stored_with_its_event(
        incoming: IncomingStore) -> None:
    """Regression: incoming-invalid-utf8. A sender's client controls the
    message's protobuf and its push name; bytes that are not UTF-8 come out of neonize's
    proto2 ``string`` fields as ``bytes``, ``incoming_from_event`` passes them on, and
    the store's ``text_hash``/``json.dumps`` of the ``message.received`` event raise
    inside the outbox: the reply is neither stored nor evented (Thespian retries, then
    drops it): exactly the issue's "incoming messages that silently never reach the
    webhook". Fix: decode with ``errors="replace"`` in ``incoming_map`` (and strip
    NULs if wanted) before building the ``IncomingMessage``."""
    from actors.session.actor import incoming_received
    from actors.transport.incoming_map import incoming_from_event

    event = engine_event(b"Bad\xff\xfeName", b"hello \xc3\x28 world\x00!")
    found = incoming_from_event(event, lambda source: "4915112345001")
    assert found is not None
    incoming.add(incoming_received("default", found), 1_767_225_700.0)
    (record,), _ = incoming.page(session="default")
    assert isinstance(record["push_name"], str) and isinstance(record["text"], str)
    (event_row,) = ev.events_after(incoming.db, 0, types=("message.received",), limit=10)
    assert event_row.data["incoming_id"] == record["id"]


def test_a_far_future_engine_timestamp_does_not_break_the_incoming_list(
        incoming: IncomingStore) -> None:
    """Regression: incoming-timestamp-range. ``incoming_map._seconds`` reads a
    value in 1e11..1e17 as milliseconds, so an engine timestamp of 1e17 becomes 1e14 s
    (year ~3 million); the row is stored, and every whatsAppIncomingMessages page that
    holds it fails (``iso_time`` -> ValueError: year out of range -> INTERNAL) until
    retention removes it. Fix: refuse or clamp a time outside what ``iso_time`` can
    show (e.g. 0 = not given) in ``_seconds``."""
    from actors.messages import IncomingPage
    from actors.outbox.incoming import cursor_of
    from actors.session.actor import incoming_received
    from actors.transport.incoming_map import incoming_from_event
    from gateway.api.records import incoming_connection

    event = engine_event(b"Name", b"hello", timestamp=10**17)
    found = incoming_from_event(event, lambda source: "4915112345001")
    assert found is not None
    incoming.add(incoming_received("default", found), 1_767_225_700.0)
    records, more = incoming.page(session="default")
    connection = incoming_connection(IncomingPage(tuple(records),
                                                  tuple(cursor_of(r) for r in records), more))
    assert len(connection.edges) == 1


def test_a_pruned_reply_leaves_no_copy_of_its_text_in_the_event_log(
        incoming: IncomingStore) -> None:
    """Regression: received-text-outlives-retention. With ``keep_text`` the
    ``message.received`` event carries the reply's text; ``IncomingStore.prune`` (run
    with ``messages.incoming_retention_hours``) deletes the row but not that copy, which
    lives on for ``events.retention_days`` and is served by whatsAppEvents and by every
    webhook replay: an operator who shortens the incoming retention for privacy (say to
    1 h, under the 7-day event default) still keeps every text for 7 days. Fix: erase
    the text from the row's event in the same transaction as the prune (and as
    mark-read without keep_text), or prune ``message.received`` events by the incoming
    retention too."""
    from actors.messages import IncomingReceived

    secret = "meet me at 7, the code is 4411"
    incoming.add(IncomingReceived(session="default", message_id="3EB0P", chat="1@s.whatsapp.net",
                             sender_jid="1@s.whatsapp.net", sender_phone="1", text=secret,
                             at=1_767_225_600.0), 1_767_225_600.0)
    assert incoming.prune(older_than=1_767_225_601.0) == 1
    assert incoming.count() == 0
    left = ev.events_after(incoming.db, 0, limit=100)
    assert all(secret not in str(e.data) for e in left), left


def test_sim_reply_with_undecodable_argv_text_is_refused_or_stored(
        tmp_path: Path, incoming: IncomingStore) -> None:
    """Regression: sim-reply-surrogates. On Linux Python decodes argv bytes
    that are not UTF-8 with surrogateescape, so ``wagate sim reply --text $'caf\\xe9'``
    (a Latin-1 terminal) hands ``SimulatorServer.reply`` the text 'caf\\udce9'. It is
    queued, the session's client takes it off the queue and reports it, and the outbox's
    ``IncomingStore.add`` raises UnicodeEncodeError: the reply is gone (neither stored
    nor evented, and no longer queued) while the command said it was sent. Fix: refuse
    (SimulatorError naming --text) or decode with replacement in ``reply``; the same for
    --name and --quote."""
    from actors.session.actor import incoming_received
    from actors.transport.simulator import SimulatorError, SimulatorServer, incoming_of

    server = SimulatorServer(tmp_path / "sim")
    try:
        try:
            server.reply("default", "+4915112345001", "caf\udce9", push_name="J\udcf6rg")
        except SimulatorError:
            return  # refused, naming what to change: fine
        (waiting,) = server._take_incoming("default")
    finally:
        server.close()
    incoming.add(incoming_received("default", incoming_of(waiting)),
                 1_767_225_700.0)
    assert incoming.count() == 1


def test_a_sender_token_reads_no_reply_text_through_the_event_log(
        site: tuple[Web, MessageStore]) -> None:  # noqa: F811
    """Regression: sender-reads-replies-via-events. The ``messages`` action
    (message records, whatsAppIncomingMessages) is admin and operator only, and
    tests/unit/test_web_incoming.py holds that a sender "reads no replies"; but
    ``events`` grants sender, and ``message.received`` events carry the reply's text,
    the sender's number, JID and push name: a sender token reads every reply of its
    sessions through ``whatsAppEvents(types: [MESSAGE_RECEIVED])``. Fix: filter
    MESSAGE_RECEIVED out for roles without ``messages`` (or strip text and number from
    their copy), or decide that sender may read replies and open
    whatsAppIncomingMessages to it too; either way one rule."""
    from actors.messages import IncomingReceived

    w, store = site
    IncomingStore(store.db, keep_text=True).add(IncomingReceived(
        session="default", message_id="3EB0S", chat="4915112345001@s.whatsapp.net",
        sender_jid="4915112345001@s.whatsapp.net", sender_phone="4915112345001",
        text="private reply 77", at=1_767_225_600.0), 1_767_225_600.0)
    result = w.gql(EVENTS, {"t": ["MESSAGE_RECEIVED"]}, add_token(w.config, "app", "sender"))
    assert "private reply 77" not in str(result) and "4915112345001" not in str(result), result


@pytest.mark.parametrize("flag", ["--text", "--name", "--quote"])
def test_wagate_sim_reply_refuses_argv_that_is_not_utf8(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str) -> None:
    """DEFECT sim-reply-surrogates through the real command line: argv bytes that are not
    UTF-8 arrive as surrogates; the command fails (exit 1) naming the flag, and nothing
    is queued for the session's client to lose."""
    from actors.transport.simulator import SimulatorServer
    from gateway.cli.wagate import main

    data = tmp_path / "data"
    data.mkdir()
    values = {"--text": "hello", "--name": "Jo", "--quote": "3EB0AA"}
    values[flag] = "caf\udce9"
    argv = ["sim", "reply", "--data-dir", str(data), "--from", "+4915112345001"]
    for name, value in values.items():
        argv += [name, value]
    assert main(argv) == 1
    assert f"{flag} is not valid UTF-8" in capsys.readouterr().err
    values[flag] = "café"  # the same reply in UTF-8 is queued where the test looks
    argv = argv[:6] + [part for pair in values.items() for part in pair]
    assert main(argv) == 0
    server = SimulatorServer(data, data / "simulator")
    try:
        (queued,) = server._take_incoming("default")
        assert "café" in (queued["text"], queued["push_name"], queued["quote"])
    finally:
        server.close()


def test_a_pruned_reply_event_keeps_its_ids_and_other_events_are_untouched(
        incoming: IncomingStore) -> None:
    """DEFECT received-text-outlives-retention: the prune erases the sender's number,
    JIDs, push name and text from the pruned reply's event (its ids stay, so an
    application can still match it), and leaves a newer reply's event whole."""
    from actors.messages import IncomingReceived

    for wa_id, at in (("3EB0OLD", 1_767_225_600.0), ("3EB0NEW", 1_767_229_200.0)):
        incoming.add(IncomingReceived(session="default", message_id=wa_id,
                                 chat="4915112345001@s.whatsapp.net",
                                 sender_jid="4915112345001@s.whatsapp.net",
                                 sender_phone="4915112345001", push_name="Jo",
                                 text=f"text of {wa_id}", at=at), at)
    assert incoming.prune(older_than=1_767_225_601.0) == 1
    old, new = ev.events_after(incoming.db, 0, types=("message.received",), limit=10)
    assert old.data["whatsapp_message_id"] == "3EB0OLD" and old.data["incoming_id"]
    assert all(old.data[k] is None for k in ("text", "phone_number", "sender_jid",
                                            "sender_lid", "push_name", "chat"))
    assert new.data["text"] == "text of 3EB0NEW"
    assert new.data["phone_number"] == "4915112345001" and new.data["push_name"] == "Jo"


def test_mark_read_without_keep_text_erases_the_text_from_its_event(
        incoming: IncomingStore) -> None:
    """DEFECT received-text-outlives-retention, the mark-read half: an event written
    while keep_text was on loses its text when the row's text is erased at mark-read
    (keep_text off since), in the same transaction."""
    from actors.messages import IncomingReceived

    stored = incoming.add(IncomingReceived(session="default", message_id="3EB0R",
                                      chat="1@s.whatsapp.net", sender_jid="1@s.whatsapp.net",
                                      text="read me once"), 1_767_225_600.0)
    assert stored is not None
    without_text = IncomingStore(incoming.db, keep_text=False)
    record = without_text.mark_read(stored["id"], 1_767_225_700.0)
    assert record is not None and record["text"] is None
    (event,) = ev.events_after(incoming.db, 0, types=("message.received",), limit=10)
    assert event.data["text"] is None and event.data["incoming_id"] == stored["id"]


def test_a_sender_still_hears_that_a_reply_came_and_an_operator_reads_it(
        site: tuple[Web, MessageStore]) -> None:  # noqa: F811
    """DEFECT sender-reads-replies-via-events, the rule chosen: a role without
    ``messages`` gets the message.received event with its ids and flags and the
    personal fields null; a role with ``messages`` gets it whole."""
    from actors.messages import IncomingReceived

    w, store = site
    stored = IncomingStore(store.db, keep_text=True).add(IncomingReceived(
        session="default", message_id="3EB0K", chat="4915112345001@s.whatsapp.net",
        sender_jid="4915112345001@s.whatsapp.net", sender_phone="4915112345001",
        push_name="Jo", text="STOP", at=1_767_225_600.0), 1_767_225_600.0)
    assert stored is not None
    seen = {}
    for role in ("sender", "operator"):
        result = w.gql(EVENTS, {"t": ["MESSAGE_RECEIVED"]}, add_token(w.config, role, role))
        (edge,) = result["data"]["whatsAppEvents"]["edges"]
        seen[role] = edge["node"]["data"]
    assert seen["sender"]["incoming_id"] == stored["id"]
    assert seen["sender"]["whatsapp_message_id"] == "3EB0K"
    assert all(seen["sender"][k] is None for k in ("text", "phone_number", "sender_jid",
                                                   "sender_lid", "push_name", "chat"))
    assert seen["operator"]["text"] == "STOP"
    assert seen["operator"]["phone_number"] == "4915112345001"
    assert seen["operator"]["push_name"] == "Jo"
