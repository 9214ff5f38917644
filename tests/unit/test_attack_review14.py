"""Attack review of issue #14 (event log, incoming messages): each test here failed on
main when written and names the DEFECT it shows (see the review report)."""

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
    """fails on main: DEFECT event-cursor-overflow. ``decode_event_cursor`` admits 19
    digits, but 9223372036854775808..9999999999999999999 do not fit SQLite's INTEGER:
    the forged cursor passes validation and ``events_after`` raises OverflowError in
    the outbox (an INTERNAL answer and a traceback instead of a validation error)."""
    with pytest.raises(ValueError):
        ev.decode_event_cursor(cursor("e:" + BEYOND_SQLITE))


def test_a_forged_huge_event_cursor_is_a_validation_error_over_http(
        site: tuple[Web, MessageStore]) -> None:  # noqa: F811
    """fails on main: DEFECT event-cursor-overflow, through the real Flask app and the
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


@pytest.mark.parametrize("digits", [BEYOND_SQLITE, "9" * 400])
def test_a_huge_incoming_cursor_is_a_value_error_the_outbox_answers(
        incoming: IncomingStore, digits: str) -> None:
    """fails on main: DEFECT incoming-cursor-overflow. ``incoming.decode_cursor`` has no
    bound at all; ``page`` then raises OverflowError, which the outbox's
    ``receiveMsg_ListIncoming`` does not catch (it turns only ValueError into
    GRAPHQL_VALIDATION_FAILED): the message fails in the outbox actor (Thespian
    retries it, then returns it as a PoisonMessage) instead of a validation answer."""
    with pytest.raises(ValueError):
        incoming.page(after=_incoming_cursor(digits))


def _incoming_cursor(digits: str) -> str:
    from actors.outbox import incoming as module
    return cursor(f"{module._CURSOR_PREFIX}{digits}")
