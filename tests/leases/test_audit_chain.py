"""The audit chain in PostgreSQL (actors/audit/pg.py) beside the file log: one format
and one verifier, so each tampering is found the same way in a file and in the table;
two writers after one head never fork the chain; a new leader continues it."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from actors.audit.log import (
    GENESIS,
    AuditLog,
    AuditNotLeader,
    AuditRefused,
    Verification,
    entry_hash,
    log_files,
    verify,
)
from actors.audit.pg import PgAuditLog, PgAuditQueue, read_tail_pg, verify_pg
from actors.leases.leader import LeaderLock
from gateway.cli.audit_client import record_admin_action
from gateway.cli.wagate import main
from gateway.core.config import load_config
from tests.pg import PgCluster


class Chain(Protocol):
    """One implementation of the chain, as the tests see it."""

    where: str  # "file" or "table": how a problem names its place

    def write(self, count: int) -> None: ...
    def lines(self) -> list[str]: ...
    def rewrite(self, lines: list[str]) -> None: ...
    def verify(self, expect_hash: str | None = None) -> Verification: ...


def _append_some(log: AuditLog | PgAuditLog, count: int) -> None:
    for i in range(count):
        log.append("mutation", {"operation": "sendWhatsAppNotification", "n": i,
                                "recipient": "14155552671", "text": "never recorded"},
                   f"req-{i}")


class FileChain:
    where = "file"

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def write(self, count: int) -> None:
        log = AuditLog.open(self.directory, 1 << 20)
        _append_some(log, count)
        log.close()

    def _path(self) -> Path:
        return log_files(self.directory)[0][1]

    def lines(self) -> list[str]:
        return [line.rstrip("\n") for line in self._path().read_text().splitlines()]

    def rewrite(self, lines: list[str]) -> None:
        self._path().write_text("".join(line + "\n" for line in lines))

    def verify(self, expect_hash: str | None = None) -> Verification:
        return verify(self.directory, expect_hash=expect_hash)


class TableChain:
    where = "table"

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def write(self, count: int) -> None:
        log = PgAuditLog.open(self.dsn)
        _append_some(log, count)
        log.close()

    def lines(self) -> list[str]:
        with psycopg.connect(self.dsn) as conn:
            return [r[0] for r in conn.execute("SELECT entry FROM wagate_audit ORDER BY seq")]

    def rewrite(self, lines: list[str]) -> None:
        """The rows replaced by ``lines``, row i+1 holding line i (as an operator with
        write access could; prev and hash columns kept unique whatever the text)."""
        with psycopg.connect(self.dsn) as conn:
            conn.execute("DELETE FROM wagate_audit")
            for i, line in enumerate(lines, start=1):
                conn.execute("INSERT INTO wagate_audit (seq, prev, hash, entry) "
                             "VALUES (%s, %s, %s, %s)", (i, f"p{i}", f"h{i}", line))

    def verify(self, expect_hash: str | None = None) -> Verification:
        return verify_pg(self.dsn, expect_hash=expect_hash)


@pytest.fixture(params=["file", "table"])
def chain(request: pytest.FixtureRequest, tmp_path: Path) -> Chain:
    if request.param == "file":
        return FileChain(tmp_path / "audit")
    return TableChain(request.getfixturevalue("pg_dsn"))


def forge(after: dict[str, Any], **fields: object) -> str:
    """A well-formed entry with a correct hash that continues from ``after``."""
    entry = {"seq": after["seq"] + 1, "time": after["time"], "event": "mutation", **fields,
             "prev": after["hash"]}
    entry["hash"] = entry_hash(entry, after["hash"])
    return json.dumps(entry, separators=(",", ":"))


def problem_at(result: Verification, chain: Chain, line: int, kind: str) -> None:
    assert result.problem is not None, "the tampering was not found"
    assert (result.problem.line, result.problem.kind) == (line, kind), str(result.problem)
    assert str(result.problem).startswith(chain.where)


# ---- both implementations -----------------------------------------------------------------


def test_a_written_chain_verifies_and_has_the_one_format(chain: Chain) -> None:
    chain.write(5)
    result = chain.verify()
    assert result.ok, result.problem
    assert (result.entries, result.last_seq) == (5, 5)
    entries = [json.loads(line) for line in chain.lines()]
    assert entries[0]["prev"] == GENESIS
    assert all(e["recipient"] == "+1********71" and "text" not in e for e in entries)
    assert result.last_hash == entries[-1]["hash"]
    assert chain.verify(expect_hash=entries[2]["hash"]).ok


def test_reopening_continues_the_chain(chain: Chain) -> None:
    chain.write(3)
    chain.write(2)
    result = chain.verify()
    assert result.ok and result.entries == 5


Tamper = Callable[[list[str]], list[str]]


def _edit(lines: list[str]) -> list[str]:
    lines[2] = lines[2].replace('"n":2', '"n":7')
    return lines


def _edit_and_rehash(lines: list[str]) -> list[str]:
    entry = json.loads(lines[2])
    entry["n"] = 7
    del entry["hash"]
    entry["hash"] = entry_hash(entry, entry["prev"])
    lines[2] = json.dumps(entry, separators=(",", ":"))
    return lines


def _reformat(lines: list[str]) -> list[str]:
    lines[1] = json.dumps(json.loads(lines[1]))  # same values, spaces added
    return lines


def _remove(lines: list[str]) -> list[str]:
    del lines[2]
    return lines


def _swap(lines: list[str]) -> list[str]:
    lines[1], lines[2] = lines[2], lines[1]
    return lines


def _insert_forged(lines: list[str]) -> list[str]:
    lines.insert(2, forge(json.loads(lines[1]), operation="forged"))
    return lines


def _replay(lines: list[str]) -> list[str]:
    lines.append(lines[1])
    return lines


def _unreadable(lines: list[str]) -> list[str]:
    lines[3] = "not json"
    return lines


@pytest.mark.parametrize(("tamper", "line", "kind"), [
    (_edit, 3, "edited"),
    (_edit_and_rehash, 3, "edited"),
    (_reformat, 2, "edited"),
    (_remove, 3, "removed"),
    (_swap, 2, "reordered"),
    (_insert_forged, 3, "inserted"),
    (_replay, 6, "inserted"),
    (_unreadable, 4, "unreadable"),
])
def test_tampering_is_found_with_its_kind_and_place(chain: Chain, tamper: Tamper,
                                                   line: int, kind: str) -> None:
    chain.write(5)
    chain.rewrite(tamper(chain.lines()))
    problem_at(chain.verify(), chain, line, kind)


def test_a_cut_tail_is_only_found_against_a_hash_kept_elsewhere(chain: Chain) -> None:
    chain.write(5)
    kept = chain.verify().last_hash
    chain.rewrite(chain.lines()[:3])
    assert chain.verify().ok  # a shorter chain is still a chain
    result = chain.verify(expect_hash=kept)
    assert result.problem is not None and result.problem.kind == "truncated"


# ---- the table only -----------------------------------------------------------------------


def test_an_edited_row_is_named_by_its_seq(pg_dsn: str) -> None:
    TableChain(pg_dsn).write(4)
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("UPDATE wagate_audit SET entry = replace(entry, '\"n\":1', '\"n\":9') "
                     "WHERE seq = 2")
    result = verify_pg(pg_dsn)
    assert result.problem is not None
    assert str(result.problem).startswith("table wagate_audit row 2: edited")
    assert result.entries == 1


def test_an_empty_database_verifies_as_an_empty_chain(pg_dsn: str) -> None:
    result = verify_pg(pg_dsn)
    assert result.ok and result.entries == 0
    assert read_tail_pg(pg_dsn, 5) == []


def test_the_tail_reads_the_last_entries_oldest_first(pg_dsn: str) -> None:
    TableChain(pg_dsn).write(6)
    assert [json.loads(line)["seq"] for line in read_tail_pg(pg_dsn, 3)] == [4, 5, 6]


def test_two_writers_after_one_head_exactly_one_wins(pg_dsn: str) -> None:
    """Both opened at the same head; each appends as often as it can, at once. Every
    append either went in or was refused, exactly one per seq went in, and the chain
    verifies: the refused writer never forked it."""
    TableChain(pg_dsn).write(2)
    writers = [PgAuditLog.open(pg_dsn), PgAuditLog.open(pg_dsn)]
    assert writers[0].seq == writers[1].seq == 2
    start = threading.Barrier(2)
    outcomes: list[list[str]] = [[], []]

    def run(index: int) -> None:
        log = writers[index]
        start.wait()
        for _ in range(40):
            try:
                log.append("race", {"writer": index})
                outcomes[index].append("written")
            except AuditRefused:
                outcomes[index].append("refused")
                log.close()
                log = writers[index] = PgAuditLog.open(pg_dsn)  # reads the new head

    threads = [threading.Thread(target=run, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    for log in writers:
        log.close()
    # Both first appends followed entry 2: exactly one of them went in.
    assert sorted(o[0] for o in outcomes) == ["refused", "written"]
    written = sum(o.count("written") for o in outcomes)
    result = verify_pg(pg_dsn)
    assert result.ok, result.problem
    assert result.entries == 2 + written
    assert len(set(json.loads(line)["prev"] for line in TableChain(pg_dsn).lines())) == \
        result.entries


def test_the_writer_behind_the_head_is_refused_and_writes_nothing(pg_dsn: str) -> None:
    first = PgAuditLog.open(pg_dsn)
    second = PgAuditLog.open(pg_dsn)
    try:
        first.append("one")
        second_entry_before = second.seq
        with pytest.raises(AuditRefused, match="another writer appended"):
            second.append("two")
        assert second.broken and second.seq == second_entry_before
        with pytest.raises(Exception, match="closed"):
            second.append("three")  # a refused writer must reopen first
    finally:
        first.close()
        second.close()
    assert verify_pg(pg_dsn).entries == 1


def test_a_new_writer_continues_after_the_old_ones_last_entry(pg_dsn: str) -> None:
    old = PgAuditLog.open(pg_dsn)
    _append_some(old, 3)
    last = old.last_hash
    old.close()  # the old leader is gone
    new = PgAuditLog.open(pg_dsn)
    assert (new.seq, new.last_hash) == (3, last)
    entry = new.append("leader.active")
    new.close()
    assert entry["prev"] == last and entry["seq"] == 4
    result = verify_pg(pg_dsn)
    assert result.ok and result.entries == 4


@pytest.fixture
def leaders(pg_dsn: str) -> Iterator[tuple[LeaderLock, LeaderLock]]:
    first = LeaderLock(pg_dsn, address="127.0.0.1:1901", host="one", pid=1)
    second = LeaderLock(pg_dsn, address="127.0.0.1:1902", host="two", pid=2)
    try:
        yield first, second
    finally:
        first.release()
        second.release()


def _for(lock: LeaderLock, dsn: str) -> PgAuditLog:
    return PgAuditLog.open(dsn, leader_address=lock.address, leader_host=lock.host)


def test_only_the_active_leader_writes_and_the_chain_goes_on_across_a_takeover(
        pg_dsn: str, leaders: tuple[LeaderLock, LeaderLock]) -> None:
    first, second = leaders
    assert first.try_acquire()
    with pytest.raises(AuditNotLeader):
        _for(second, pg_dsn)  # a standby cannot open the chain for writing
    old = _for(first, pg_dsn)
    old.append("leader.active", {"host": "one"})
    old.append("mutation", {"n": 1})
    first.release()  # the old leader's lock is gone (its connection ended)
    assert second.try_acquire()
    with pytest.raises(AuditNotLeader, match="no longer holds"):
        old.append("mutation", {"n": 2})  # the old leader writes nothing more
    new = _for(second, pg_dsn)
    new.append("leader.active", {"host": "two"})
    new.close()
    old.close()
    result = verify_pg(pg_dsn)
    assert result.ok, result.problem
    events = [json.loads(line)["event"] for line in TableChain(pg_dsn).lines()]
    assert events == ["leader.active", "mutation", "leader.active"]


# ---- the CLI in multi-host mode -----------------------------------------------------------


@pytest.fixture
def pg_url(pg_cluster: PgCluster, pg_dsn: str) -> str:
    """``pg_dsn``'s database as the URL ``cluster.database_url`` takes."""
    return pg_cluster.url(str(conninfo_to_dict(pg_dsn)["dbname"]))


def _leader_config_file(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(f"""
[storage]
data_dir = "{tmp_path / 'data'}"

[cluster]
role = "leader"
host_name = "one"
advertise_address = "127.0.0.1"
allow_networks = ["127.0.0.1/32"]
database_url = "{url}"
""")
    return path


def test_cli_verify_and_tail_read_the_database_in_multi_host_mode(
        pg_dsn: str, pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _leader_config_file(tmp_path, pg_url)
    TableChain(pg_dsn).write(4)
    head = verify_pg(pg_dsn).last_hash
    assert main(["audit", "verify", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert f"audit chain OK: 4 entries in the database table wagate_audit, last hash {head}" \
        in out
    assert main(["audit", "verify", "--config", str(config), "--expect-hash", head]) == 0
    capsys.readouterr()
    assert main(["audit", "tail", "-n", "2", "--config", str(config)]) == 0
    out_lines = capsys.readouterr().out.splitlines()
    assert len(out_lines) == 2 and out_lines[0].startswith("#3 ")
    assert not (tmp_path / "data" / "audit").exists() or not log_files(tmp_path / "data"
                                                                       / "audit")

    with psycopg.connect(pg_dsn) as conn:
        conn.execute("UPDATE wagate_audit SET entry = replace(entry, '\"n\":2', '\"n\":5') "
                     "WHERE seq = 3")
    assert main(["audit", "verify", "--config", str(config)]) == 1
    assert "table wagate_audit row 3: edited" in capsys.readouterr().out


def test_admin_actions_in_multi_host_mode_go_into_the_shared_chain(
        pg_dsn: str, pg_url: str, tmp_path: Path, leaders: tuple[LeaderLock, LeaderLock]
) -> None:
    """The CLI appends to the database whether or not this host leads: after the
    current head, so the active leader's writer is refused once and goes on after it."""
    config = load_config(_leader_config_file(tmp_path, pg_url))
    first, _ = leaders
    assert first.try_acquire()
    writer = _for(first, pg_dsn)
    writer.append("leader.active")
    record_admin_action(config, "token.create", name="ci", role="sender")
    with pytest.raises(AuditRefused):
        writer.append("mutation")  # its head is behind: nothing written, reopen
    writer.close()
    writer = _for(first, pg_dsn)
    writer.append("mutation")
    writer.close()
    result = verify_pg(pg_dsn)
    assert result.ok, result.problem
    events = [json.loads(line)["event"] for line in TableChain(pg_dsn).lines()]
    assert events == ["leader.active", "token.create", "mutation"]


# ---- the queue of entries for the active leader -------------------------------------------


def _queued(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM wagate_audit_queue").fetchone()
    return int(row[0]) if row else 0


def test_a_standbys_entries_are_queued_and_chained_once_by_the_active_leader(
        pg_dsn: str, leaders: tuple[LeaderLock, LeaderLock]) -> None:
    first, _second = leaders
    assert first.try_acquire()
    leader = _for(first, pg_dsn)
    leader.append("leader.active", {"host": "one"})
    standby = PgAuditQueue.open(pg_dsn, "two")
    queued = standby.append("gateway.started", {"recipient": "14155552671", "text": "x"},
                            "req-1")
    standby.append("leader.standby", {"host": "two"})
    standby.close()
    assert queued["seq"] == 0 and queued["recipient"] == "+1********71"
    assert "text" not in queued and _queued(pg_dsn) == 2
    assert leader.drain() == 2
    assert leader.drain() == 0  # each queued entry is chained once
    leader.append("mutation")
    leader.close()
    assert _queued(pg_dsn) == 0
    result = verify_pg(pg_dsn)
    assert result.ok, result.problem
    chain = [json.loads(line) for line in TableChain(pg_dsn).lines()]
    assert [e["event"] for e in chain] == ["leader.active", "gateway.started",
                                           "leader.standby", "mutation"]
    started = chain[1]
    assert started["queued_by"] == "two" and started["request_id"] == "req-1"
    assert started["queued_at"] == queued["time"]
    assert started["recipient"] == "+1********71"  # rendered once, by the standby


def test_a_drain_refused_to_a_leader_that_lost_the_lock_leaves_the_queue(
        pg_dsn: str, leaders: tuple[LeaderLock, LeaderLock]) -> None:
    first, second = leaders
    assert first.try_acquire()
    old = _for(first, pg_dsn)
    old.append("leader.active")
    queue = PgAuditQueue.open(pg_dsn, "two")
    queue.append("leader.standby")
    queue.close()
    first.release()
    assert second.try_acquire()
    with pytest.raises(AuditNotLeader):
        old.drain()
    old.close()
    assert _queued(pg_dsn) == 1  # the refused transaction chained nothing, deleted nothing
    new = _for(second, pg_dsn)
    assert new.drain() == 1
    new.close()
    assert verify_pg(pg_dsn).entries == 2


def test_verify_reads_the_table_a_batch_at_a_time(pg_dsn: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import actors.audit.pg as pg_module

    monkeypatch.setattr(pg_module, "BATCH_ROWS", 2)
    TableChain(pg_dsn).write(5)
    result = verify_pg(pg_dsn)
    assert result.ok and result.entries == 5, result.problem
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("DELETE FROM wagate_audit WHERE seq = 4")
    result = verify_pg(pg_dsn)
    assert result.problem is not None and str(result.problem).startswith(
        "table wagate_audit row 5: removed"), result.problem
