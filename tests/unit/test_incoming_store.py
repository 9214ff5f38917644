"""Received messages on disk: once per WhatsApp id, paged by cursor in arrival order,
text erased at mark-read without keep_text, pruned by age, never in a repr.

The outbox's own database, opened as the outbox opens it: a real SQLite file, and a real
PostgreSQL database (multi-host mode); the migrations of old files are SQLite's only.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from actors.messages import IncomingPage, IncomingReceived
from actors.outbox.events import events_after
from actors.outbox.incoming import (
    IncomingStore,
    cursor_of,
    decode_cursor,
    is_opt_out,
)
from actors.outbox.store import MessageStore
from actors.session.actor import incoming_received
from actors.transport.base import IncomingMessage
from actors.transport.simulator import SimulatorServer, incoming_of

# MessageStore(directory, ...) on the test's backend (tests/conftest.py: SQLite and
# PostgreSQL): each test that takes it runs on both.
OpenStore = Callable[..., MessageStore]

NOW = 1_767_225_600.0
SECRET = "my private reply 5b1e"


def message(wa_id: str, session: str = "default", text: str = SECRET) -> IncomingReceived:
    return IncomingReceived(session=session, message_id=wa_id, chat="4915112345001@s.whatsapp.net",
                       sender_jid="4915112345001@s.whatsapp.net", sender_phone="4915112345001",
                       text=text, at=NOW - 5)


@pytest.fixture(params=[True, False], ids=["keep_text", "erase_text"])
def stores(tmp_path: Path, request: pytest.FixtureRequest, open_store: OpenStore
           ) -> Iterator[IncomingStore]:
    outbox = open_store(tmp_path / "outbox", keep_text=request.param)
    try:
        yield IncomingStore(outbox.db, keep_text=request.param)
    finally:
        outbox.close()


def test_a_message_is_stored_once_per_session_and_whatsapp_id(stores: IncomingStore) -> None:
    first = stores.add(message("3EB0A"), NOW)
    assert first is not None and first["text"] == SECRET and first["sent_at"] == NOW - 5
    assert stores.add(message("3EB0A"), NOW + 1) is None  # a redelivery
    assert stores.add(message("3EB0A", session="other"), NOW + 1) is not None
    assert stores.count() == 2


def test_pages_run_oldest_first_from_just_after_the_cursor(stores: IncomingStore) -> None:
    for n in range(5):
        stores.add(message(f"3EB0{n}", session="a" if n % 2 else "b"), NOW + n)
    page, more = stores.page(first=2)
    assert [r["wa_message_id"] for r in page] == ["3EB00", "3EB01"] and more
    rest, more = stores.page(first=10, after=cursor_of(page[-1]))
    assert [r["wa_message_id"] for r in rest] == ["3EB02", "3EB03", "3EB04"] and not more
    only_a, _ = stores.page(session="a")
    assert [r["wa_message_id"] for r in only_a] == ["3EB01", "3EB03"]
    assert stores.page(after=cursor_of(rest[-1])) == ([], False)  # nothing new yet


@pytest.mark.parametrize("cursor", ["", "bm90IGEgY3Vyc29y", "aTotMQ", "aTrZoQ", "%%%"])
def test_a_cursor_this_store_did_not_make_is_refused(cursor: str) -> None:
    """Empty, foreign, negative, a non-ASCII digit, not base64 at all."""
    with pytest.raises(ValueError):
        decode_cursor(cursor)


def test_mark_read_notes_the_first_time_and_erases_text_only_without_keep_text(
        stores: IncomingStore) -> None:
    record = stores.add(message("3EB0A"), NOW)
    assert record is not None
    marked = stores.mark_read(record["id"], NOW + 10)
    assert marked is not None and marked["read_at"] == NOW + 10
    assert marked["text"] == (SECRET if stores.keep_text else None)
    assert marked["text_hash"] == record["text_hash"]
    again = stores.mark_read(record["id"], NOW + 20)
    assert again is not None and again["read_at"] == NOW + 10
    assert stores.mark_read("unknown", NOW) is None


def test_prune_forgets_by_arrival(stores: IncomingStore) -> None:
    stores.add(message("3EB0OLD"), NOW - 100)
    stores.add(message("3EB0NEW"), NOW)
    assert stores.prune(NOW - 50) == 1
    assert [r["wa_message_id"] for r in stores.page()[0]] == ["3EB0NEW"]


def test_the_table_lives_in_the_outboxs_database_and_survives_a_reopen(
        tmp_path: Path, open_store: OpenStore, store_backend: str) -> None:
    outbox = open_store(tmp_path / "outbox")
    IncomingStore(outbox.db).add(message("3EB0A"), NOW)
    outbox.close()
    reopened = open_store(tmp_path / "outbox")
    try:
        assert IncomingStore(reopened.db).count() == 1
    finally:
        reopened.close()
    if store_backend:
        return  # PostgreSQL: the table is in the database, no file here
    with sqlite3.connect(tmp_path / "outbox" / "messages.sqlite3") as db:
        assert db.execute("SELECT COUNT(*) FROM incoming").fetchone()[0] == 1


def test_the_text_is_in_no_repr_on_its_way_from_the_transport_to_the_api() -> None:
    """Thespian logs messages it could not deliver: none of these may show the text."""
    event = IncomingMessage(message_id="3EB0A", chat="c@s.whatsapp.net",
                            sender_jid="c@s.whatsapp.net", text=SECRET)
    received = incoming_received("default", event)
    assert isinstance(received, IncomingReceived) and received.text == SECRET
    page = IncomingPage(({"text": SECRET},), ("c",), False)
    for value in (event, received, page):
        assert SECRET not in repr(value)


def test_a_simulated_reply_becomes_an_incoming_direct_text(tmp_path: Path) -> None:
    server = SimulatorServer(tmp_path)
    try:
        entry = server.reply("default", "+4915112345001", SECRET, quote="3EB0Q", push_name="Ann")
        (waiting,) = server._take_incoming("default")
        assert server._take_incoming("default") == []  # reported once
    finally:
        server.close()
    event = incoming_of(waiting)
    assert event == IncomingMessage(
        message_id=entry["id"], chat="4915112345001@s.whatsapp.net",
        sender_jid="4915112345001@s.whatsapp.net", sender_phone="4915112345001",
        sender_lid=event.sender_lid, push_name="Ann", text=SECRET, quoted_id="3EB0Q",
        at=entry["at"])
    assert event.sender_lid.endswith("@lid") and "4915112345001" not in event.sender_lid


@pytest.mark.parametrize("text, expected", [
    ("STOP", True), ("stop", True), ("  Stop. ", True), ("STOP!", True),
    ("unsubscribe", True), ("\uff33\uff34\uff2f\uff30", True), ("please stop", False),
    ("don't stop the reminders", False), ("", False), ("   ", False),
])
def test_an_opt_out_is_a_whole_message_that_is_a_keyword(text: str, expected: bool) -> None:
    assert is_opt_out(text, frozenset({"stop", "unsubscribe"})) is expected
    assert is_opt_out(text, frozenset()) is False  # off by default


def test_opt_outs_are_flagged_and_still_stored(tmp_path: Path, open_store: OpenStore) -> None:
    """A flag for the application, never a filter; only text counts (a caption does not)."""
    outbox = open_store(tmp_path / "outbox")
    try:
        store = IncomingStore(outbox.db, opt_out_keywords=("STOP", " ", ""))
        flagged = store.add(message("3EB0A", text="Stop"), NOW)
        plain = store.add(message("3EB0B", text="thanks"), NOW)
        caption = store.add(IncomingReceived("default", "3EB0C", "c@s.whatsapp.net",
                                             "c@s.whatsapp.net", kind="image", text="stop"),
                            NOW)
        blank = store.add(message("3EB0D", text=" "), NOW)
        assert flagged is not None and flagged["opt_out"] is True
        assert [r["opt_out"] for r in (plain, caption, blank) if r is not None] == [
            False, False, False]
        assert store.count() == 4
    finally:
        outbox.close()


def test_each_stored_message_has_its_received_event_and_a_redelivery_none(
        stores: IncomingStore) -> None:
    """The row and its message.received event commit together; the text rides along
    only where text is kept."""
    stored = stores.add(message("3EB0B"), NOW)
    assert stored is not None
    assert stores.add(message("3EB0B"), NOW + 1) is None  # no second event either
    logged = events_after(stores.db, 0, types=["message.received"], limit=10)
    assert [(e.session, e.data["incoming_id"], e.data["whatsapp_message_id"])
            for e in logged] == [("default", stored["id"], "3EB0B")]
    assert logged[0].data["text"] == (SECRET if stores.keep_text else None)
    assert logged[0].data["phone_number"] == "4915112345001"


# ---- the incoming table is version 2 of the outbox store -----------------------------


def _store_at_version_1(path: Path, with_incoming: bool) -> None:
    """A store as the previous version left it: messages and the event log (version 1);
    with ``with_incoming``, also the incoming table as that version made it at open
    (outside the versions, before opt_out and truncated existed), holding one reply."""
    from actors.outbox import events as ev
    from gateway.core.migrations import statements

    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE TABLE messages (id TEXT PRIMARY KEY, session TEXT NOT NULL, "
               "phone TEXT NOT NULL, text TEXT, text_hash TEXT NOT NULL, state TEXT NOT NULL, "
               "accepted_at REAL NOT NULL, updated_at REAL NOT NULL, "
               "next_attempt_at REAL NOT NULL DEFAULT 0, valid_until REAL, "
               "attempts INTEGER NOT NULL DEFAULT 0, wa_message_id TEXT, "
               "reason TEXT NOT NULL DEFAULT '', error TEXT NOT NULL DEFAULT '', "
               "request_id TEXT NOT NULL DEFAULT '', requester TEXT NOT NULL DEFAULT '', "
               "idempotency_key TEXT, is_test INTEGER NOT NULL DEFAULT 0, "
               "uncertain INTEGER NOT NULL DEFAULT 0, history TEXT NOT NULL)")
    for statement in statements(ev.EVENTS_SCHEMA):
        db.execute(statement)
    if with_incoming:
        db.execute("CREATE TABLE incoming (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                   "id TEXT NOT NULL UNIQUE, session TEXT NOT NULL, wa_message_id TEXT NOT NULL, "
                   "chat TEXT NOT NULL, sender_jid TEXT NOT NULL, "
                   "sender_phone TEXT NOT NULL DEFAULT '', sender_lid TEXT NOT NULL DEFAULT '', "
                   "push_name TEXT NOT NULL DEFAULT '', is_group INTEGER NOT NULL DEFAULT 0, "
                   "kind TEXT NOT NULL, text TEXT, text_hash TEXT NOT NULL, "
                   "quoted_id TEXT NOT NULL DEFAULT '', sent_at REAL NOT NULL, "
                   "received_at REAL NOT NULL, read_at REAL, meta TEXT NOT NULL DEFAULT '{}')")
        db.execute("INSERT INTO incoming (id, session, wa_message_id, chat, sender_jid, kind, "
                   "text, text_hash, sent_at, received_at) VALUES ('r1', 'default', '3EB0OLD', "
                   "'c', 's', 'text', 'kept', 'h', 1, 1)")
    db.execute("PRAGMA user_version = 1")
    db.close()


@pytest.mark.parametrize("with_incoming", [False, True], ids=["without", "made_at_open"])
def test_a_sqlite_store_of_the_previous_version_gains_the_incoming_table(
        tmp_path: Path, with_incoming: bool) -> None:
    from actors.outbox.store import MIGRATIONS
    from gateway.core.migrations import schema_version

    (tmp_path / "outbox").mkdir()
    _store_at_version_1(tmp_path / "outbox" / "messages.sqlite3", with_incoming)
    outbox = MessageStore(tmp_path / "outbox")
    try:
        assert schema_version(outbox.db) == len(MIGRATIONS) == 3
        store = IncomingStore(outbox.db)
        old = [r["wa_message_id"] for r in store.page()[0]]
        assert old == (["3EB0OLD"] if with_incoming else [])
        added = store.add(message("3EB0NEW"), NOW)
        assert added is not None and added["truncated"] is False and added["opt_out"] is False
        indexes = {r[0] for r in outbox.db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {"incoming_by_wa_id", "incoming_by_session", "events_by_incoming"} <= indexes
    finally:
        outbox.close()


def test_a_sqlite_store_at_the_new_version_is_opened_unchanged(tmp_path: Path) -> None:
    from gateway.core.migrations import schema_version

    outbox = MessageStore(tmp_path / "outbox")
    IncomingStore(outbox.db).add(message("3EB0A"), NOW)
    outbox.close()
    path = tmp_path / "outbox" / "messages.sqlite3"
    db = sqlite3.connect(path)
    schema = db.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall()
    db.close()
    reopened = MessageStore(tmp_path / "outbox")
    try:
        assert [tuple(r) for r in reopened.db.execute(
            "SELECT sql FROM sqlite_master ORDER BY name")] == schema
        assert schema_version(reopened.db) == 3
        assert IncomingStore(reopened.db).count() == 1
    finally:
        reopened.close()


def test_a_sqlite_store_of_a_newer_version_is_refused_before_the_incoming_table(
        tmp_path: Path) -> None:
    from gateway.core.migrations import NewerStoreError, schema_version

    (tmp_path / "outbox").mkdir()
    path = tmp_path / "outbox" / "messages.sqlite3"
    _store_at_version_1(path, with_incoming=False)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA user_version = 4")
    db.close()
    with pytest.raises(NewerStoreError, match=r"schema version 4.*up to 3"):
        MessageStore(tmp_path / "outbox")
    db = sqlite3.connect(path)
    assert schema_version(db) == 4
    assert not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'incoming'").fetchall()
    db.close()


# ---- a received text is bounded (messages.max_incoming_text_chars) -------------------

TEN_MB = 10 * 1024 * 1024


def test_a_ten_megabyte_simulator_reply_is_cut_and_flagged_in_record_and_event(
        stores: IncomingStore) -> None:
    entry = {"id": "3EB0HUGE", "from": "4915112345001", "text": "ü" * TEN_MB, "quote": "",
             "push_name": "", "at": NOW}
    told = incoming_received("default", incoming_of(entry))
    assert told.truncated and len(told.text) == 65536 and told.text == "ü" * 65536
    record = stores.add(told, NOW)
    assert record is not None and record["truncated"] is True
    assert record["text"] == ("ü" * 65536 if stores.keep_text else record["text"])
    (event,) = events_after(stores.db, 0, types=["message.received"], limit=9)
    assert event.data["truncated"] is True
    assert event.data["text"] == ("ü" * 65536 if stores.keep_text else None)


def test_a_ten_megabyte_engine_message_is_cut_by_the_session(stores: IncomingStore) -> None:
    """The neonize mapping passes the engine's text on whole; the session cuts it
    before it crosses to the outbox's process."""
    from neonize.proto import Neonize_pb2 as proto

    from actors.transport.incoming_map import incoming_from_event

    event = proto.Message()
    source = event.Info.MessageSource
    source.Chat.User, source.Chat.Server = "4915112345001", "s.whatsapp.net"
    source.Sender.User, source.Sender.Server = "4915112345001", "s.whatsapp.net"
    event.Info.ID, event.Info.Timestamp = "3EB0ENGINE", int(NOW)
    event.Message.conversation = "a" * TEN_MB
    found = incoming_from_event(event, lambda source: "4915112345001")
    assert found is not None and len(found.text) == TEN_MB
    told = incoming_received("default", found, max_text_chars=1000)
    assert told.truncated and told.text == "a" * 1000
    assert stores.add(told, NOW) is not None


@pytest.mark.parametrize(("text", "limit", "cut"), [
    ("abc", 3, False), ("abcd", 3, True), ("", 1, False), ("😀😀", 1, True)])
def test_the_bound_counts_code_points(text: str, limit: int, cut: bool) -> None:
    from gateway.core.validation import bounded_text

    assert bounded_text(text, limit) == (text[:limit], cut)


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), 1_000_001, 10**30])
def test_the_bound_s_config_key_refuses_what_is_out_of_range(bad: object) -> None:
    from gateway.core.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"messages\.max_incoming_text_chars"):
        load_config(overrides={"messages.max_incoming_text_chars": bad})


def test_wagate_sim_reply_text_file_takes_utf8_and_refuses_the_rest(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``--text-file`` (a text longer than a command line may be): UTF-8 is queued whole,
    from a file or stdin; a file that is not UTF-8, or not there, is refused (exit 2)
    before anything is queued; ``--text`` and ``--text-file`` together are a usage error."""
    import io

    from gateway.cli.wagate import main

    data = tmp_path / "data"
    data.mkdir()
    argv = ["sim", "reply", "--data-dir", str(data), "--from", "+4915112345001"]
    latin1, text = tmp_path / "latin1.txt", tmp_path / "reply.txt"
    latin1.write_bytes(b"caf\xe9")
    assert main([*argv, "--text-file", str(latin1)]) == 2
    assert "--text-file" in capsys.readouterr().err
    assert main([*argv, "--text-file", str(tmp_path / "missing.txt")]) == 2
    text.write_text("ü" * 200_000, encoding="utf-8")  # over a command line's 128 KiB
    assert main([*argv, "--text-file", str(text)]) == 0
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"from stdin")))
    assert main([*argv, "--text-file", "-"]) == 0
    with pytest.raises(SystemExit):
        main([*argv, "--text", "x", "--text-file", str(text)])
    server = SimulatorServer(data, data / "simulator")
    try:
        queued = server._take_incoming("default")
    finally:
        server.close()
    assert [e["text"] for e in queued] == ["ü" * 200_000, "from stdin"]


def test_a_file_that_could_not_be_stored_is_marked_missing_with_its_kind(
        stores: IncomingStore) -> None:
    """The session could not store the received file (a full disk): the message is
    stored with its caption, the kind its bytes show, and why the file is missing, in
    the row, the API's record and the message.received event."""
    from actors.media.incoming import MISSING_DISK_FULL, kind_of_bytes
    from gateway.api.records import incoming_record
    from tests import media_fixtures as fx

    event = IncomingMessage(message_id="3EB0M", chat="4915112345001@s.whatsapp.net",
                            sender_jid="4915112345001@s.whatsapp.net",
                            sender_phone="4915112345001", kind="media", text="look",
                            media_data=fx.png(), file_name="p.png")
    missing = (MISSING_DISK_FULL, kind_of_bytes(fx.png(), "media"))
    record = stores.add(incoming_received("default", event, missing=missing), NOW)
    assert record is not None and record["kind"] == "image"
    api = incoming_record(record)
    assert api.media is None and api.mediaMissing == "DISK_FULL" and api.kind == "image"
    (logged,) = events_after(stores.db, 0, types=["message.received"], limit=9)
    assert logged.data["media_missing"] == "DISK_FULL" and "media" not in logged.data
    plain = stores.add(message("3EB0N"), NOW)
    assert plain is not None and incoming_record(plain).mediaMissing is None
