"""The overlap maths of the connection log (actors/transport/connection_log.py)."""

from __future__ import annotations

from actors.transport.connection_log import (
    ConnectionRecord,
    Overlap,
    intervals,
    overlaps,
    parse_records,
    total_overlap_seconds,
)

S = 1_000_000_000  # nanoseconds in a second


def up(at: float, conn: str, pid: int, host: str = "h1", account: str = "+1555") -> \
        ConnectionRecord:
    return ConnectionRecord(int(at * S), "up", "s1", account, host, pid, conn)


def down(at: float, conn: str, pid: int, host: str = "h1", account: str = "+1555") -> \
        ConnectionRecord:
    return ConnectionRecord(int(at * S), "down", "s1", account, host, pid, conn)


def test_one_connection_after_another_never_overlaps() -> None:
    records = [up(0, "a", 1), down(5, "a", 1), up(5, "b", 2), down(9, "b", 2),
               up(12, "c", 1), down(13, "c", 1)]
    assert overlaps(records, until_ns=20 * S) == []


def test_two_processes_connected_at_once_overlap_exactly_that_long() -> None:
    records = [up(0, "a", 1), up(3, "b", 2, host="h2"), down(5, "a", 1), down(9, "b", 2,
                                                                             host="h2")]
    assert overlaps(records, until_ns=20 * S) == [
        Overlap("+1555", 3 * S, 5 * S, 2, (("h1", 1), ("h2", 2)))]


def test_overlaps_are_per_account() -> None:
    records = [up(0, "a", 1), up(1, "b", 2, account="+1666"), down(4, "a", 1),
               down(4, "b", 2, account="+1666")]
    assert overlaps(records, until_ns=10 * S) == []


def test_three_at_once_is_one_stretch_with_the_most_connections() -> None:
    records = [up(0, "a", 1), up(1, "b", 2), up(2, "c", 3), down(3, "c", 3), down(4, "b", 2),
               down(6, "a", 1)]
    found = overlaps(records, until_ns=10 * S)
    assert found == [Overlap("+1555", 1 * S, 4 * S, 3, (("h1", 1), ("h1", 2), ("h1", 3)))]
    assert total_overlap_seconds(found) == 3.0


def test_a_connection_without_its_down_lasts_until_its_process_died_or_the_end() -> None:
    """A SIGKILLed process writes no ``down``: it counts as connected until the death
    the caller saw, else until the end, so a lost record never hides an overlap."""
    records = [up(0, "a", 1), up(4, "b", 2), down(8, "b", 2)]
    assert overlaps(records, until_ns=10 * S) == [
        Overlap("+1555", 4 * S, 8 * S, 2, (("h1", 1), ("h1", 2)))]
    assert overlaps(records, until_ns=10 * S, died={("h1", 1): 4 * S}) == []
    assert overlaps(records, until_ns=10 * S, died={("h1", 1): 5 * S}) == [
        Overlap("+1555", 4 * S, 5 * S, 2, (("h1", 1), ("h1", 2)))]
    [killed, _] = intervals(records, until_ns=10 * S)
    assert killed.closed is False and killed.end_ns == 10 * S


def test_one_process_with_two_connections_of_one_account_overlaps_too() -> None:
    records = [up(0, "a", 1), up(1, "b", 1), down(2, "a", 1), down(3, "b", 1)]
    assert overlaps(records, until_ns=5 * S) == [Overlap("+1555", S, 2 * S, 2, (("h1", 1),))]


def test_records_round_trip_and_a_torn_line_is_skipped() -> None:
    records = [up(0.5, "a", 1), down(1.25, "a", 1)]
    text = "".join(r.to_line() for r in records)
    assert parse_records(text + '{"at_ns": 3, "kind": "up", "sess') == records
    assert parse_records('{"at_ns": 1, "kind": "sideways", "session": "s", "account": "a", '
                         '"host": "h", "pid": 1, "conn": "c"}\n') == []
