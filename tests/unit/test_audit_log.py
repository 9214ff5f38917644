"""The audit log's chain on real files: it verifies, and every kind of tampering is
found with the right kind and line."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from actors.audit.log import (
    GENESIS,
    AuditError,
    AuditLock,
    AuditLog,
    entry_hash,
    file_name,
    load_secret,
    lock_holder,
    log_files,
    read_tail,
    render_recipient,
    verify,
)
from gateway.cli.audit_client import record_admin_action
from gateway.cli.wagate import main
from gateway.core.config import load_config


def make_log(directory: Path, count: int, max_bytes: int = 1 << 20,
             recipients: str = "masked", keep_files: int | None = None) -> AuditLog:
    log = AuditLog.open(directory, max_bytes, recipients, keep_files=keep_files)
    for i in range(count):
        log.append("mutation", {"operation": "sendWhatsAppNotification", "n": i,
                                "recipient": "14155552671", "outcome": "ok"}, f"req-{i}")
    log.close()
    return log


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def forge(after: dict, **fields: object) -> str:
    """A well-formed entry with a correct hash that continues from ``after``."""
    entry = {"seq": after["seq"] + 1, "time": after["time"], "event": "mutation", **fields,
             "prev": after["hash"]}
    entry["hash"] = entry_hash(entry, after["hash"])
    return json.dumps(entry, separators=(",", ":")) + "\n"


@pytest.fixture
def audit(tmp_path: Path) -> Path:
    return tmp_path / "audit"


def only_file(directory: Path) -> Path:
    files = log_files(directory)
    assert len(files) == 1
    return files[0][1]


# ---- a real log ----------------------------------------------------------------------------


def test_a_real_log_verifies_and_has_the_documented_format(audit: Path) -> None:
    log = make_log(audit, 25)
    result = verify(audit)
    assert result.ok, result.problem
    assert (result.entries, result.files, result.last_seq) == (25, 1, 25)
    assert result.last_hash == log.last_hash

    lines = lines_of(only_file(audit))
    first = json.loads(lines[0])
    assert list(first)[:3] == ["seq", "time", "event"]
    assert list(first)[-2:] == ["prev", "hash"]
    assert first["prev"] == GENESIS and first["seq"] == 1
    assert first["time"].endswith("Z") and "T" in first["time"]
    assert first["request_id"] == "req-0"
    body = {k: v for k, v in first.items() if k != "hash"}
    assert first["hash"] == entry_hash(body, GENESIS)
    second = json.loads(lines[1])
    assert second["prev"] == first["hash"]

    assert stat.S_IMODE(audit.stat().st_mode) == 0o700
    assert stat.S_IMODE(only_file(audit).stat().st_mode) == 0o600


def test_reopening_continues_the_chain(audit: Path) -> None:
    make_log(audit, 3)
    log = AuditLog.open(audit, 1 << 20)
    assert (log.seq, log.torn) == (3, None)
    entry = log.append("admin.test", {"name": "x"})
    log.close()
    assert entry["seq"] == 4
    result = verify(audit)
    assert result.ok and result.entries == 4


def test_rollover_keeps_one_chain_across_files(audit: Path) -> None:
    make_log(audit, 30, max_bytes=1500)
    files = log_files(audit)
    assert len(files) > 3
    assert [n for n, _ in files] == list(range(1, len(files) + 1))
    for _, path in files:
        assert path.stat().st_size <= 1500
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    last_of_first = json.loads(lines_of(files[0][1])[-1])
    first_of_second = json.loads(lines_of(files[1][1])[0])
    assert first_of_second["prev"] == last_of_first["hash"]
    assert first_of_second["seq"] == last_of_first["seq"] + 1
    result = verify(audit)
    assert result.ok and (result.entries, result.files) == (30, len(files))
    # and it goes on after a reopen, in the last file
    log = AuditLog.open(audit, 1500)
    log.append("more", {})
    log.close()
    assert verify(audit).entries == 31


# ---- tampering -----------------------------------------------------------------------------


def tampered(audit: Path, edit: object, count: int = 10) -> tuple[str, int, str]:
    make_log(audit, count)
    path = only_file(audit)
    lines = lines_of(path)
    path.write_text("".join(edit(lines)))  # type: ignore[operator]
    problem = verify(audit).problem
    assert problem is not None, "tampering not found"
    return problem.kind, problem.line, str(problem)


def test_an_edited_line_is_found(audit: Path) -> None:
    def edit(lines: list[str]) -> list[str]:
        lines[4] = lines[4].replace('"outcome":"ok"', '"outcome":"FORBIDDEN"')
        return lines

    kind, line, text = tampered(audit, edit)
    assert (kind, line) == ("edited", 5)
    assert text.startswith(f"file {file_name(1)} line 5: edited")


def test_an_edited_line_with_a_recomputed_hash_is_found(audit: Path) -> None:
    def edit(lines: list[str]) -> list[str]:
        entry = json.loads(lines[4])
        entry["outcome"] = "FORBIDDEN"
        del entry["hash"]
        entry["hash"] = entry_hash(entry, entry["prev"])
        lines[4] = json.dumps(entry, separators=(",", ":")) + "\n"
        return lines

    assert tampered(audit, edit)[:2] == ("edited", 5)


def test_a_line_with_a_duplicate_key_is_found_as_edited(audit: Path) -> None:
    """A JSON parser keeps one value of a repeated key, so the entry still hashes right
    while grep (or a parser that keeps the first value) shows the forged one."""
    def edit(lines: list[str]) -> list[str]:
        lines[4] = lines[4].replace('"outcome":"ok"', '"outcome":"FORBIDDEN","outcome":"ok"')
        return lines

    kind, line, text = tampered(audit, edit)
    assert (kind, line) == ("edited", 5)
    assert "as written" in text


def _seq_moved(line: str) -> str:
    entry = json.loads(line)
    seq = entry.pop("seq")
    return json.dumps({"time": entry.pop("time"), "seq": seq, **entry},
                      separators=(",", ":")) + "\n"


@pytest.mark.parametrize("reformat", [
    lambda line: line.replace('","', '", "', 1),  # a space
    lambda line: line.replace('"mutation"', '"\\u006dutation"', 1),  # an escaped letter
    lambda line: line.rstrip("\n") + "\r\n",  # another line ending
    _seq_moved,  # the chain's own keys in another order
], ids=["space", "escape", "crlf", "moved-key"])
def test_a_reformatted_line_is_found_as_edited(audit: Path, reformat: object) -> None:
    """Bytes that differ from what the writer wrote are an edit, even when they parse to
    the same values: verification covers the bytes as written."""
    def edit(lines: list[str]) -> list[str]:
        changed = reformat(lines[4])  # type: ignore[operator]
        assert changed != lines[4] and json.loads(changed) == json.loads(lines[4])
        lines[4] = changed
        return lines

    assert tampered(audit, edit)[:2] == ("edited", 5)


def test_a_removed_line_is_found(audit: Path) -> None:
    kind, line, text = tampered(audit, lambda lines: lines[:3] + lines[4:])
    assert (kind, line) == ("removed", 4)
    assert "entry 4 is missing" in text


def test_swapped_lines_are_found(audit: Path) -> None:
    def swap(lines: list[str]) -> list[str]:
        lines[5], lines[6] = lines[6], lines[5]
        return lines

    kind, line, text = tampered(audit, swap)
    assert (kind, line) == ("reordered", 6)
    assert "entry 7 comes before entry 6" in text


def test_an_inserted_forged_line_is_found(audit: Path) -> None:
    def insert(lines: list[str]) -> list[str]:
        return [*lines[:3], forge(json.loads(lines[2]), operation="whatsAppDisconnect"), *lines[3:]]

    assert tampered(audit, insert)[:2] == ("inserted", 4)


def test_an_inserted_line_with_a_bad_hash_is_found(audit: Path) -> None:
    def insert(lines: list[str]) -> list[str]:
        fake = json.loads(lines[2])
        fake["outcome"] = "ok-forged"
        return [*lines[:3], json.dumps(fake) + "\n", *lines[3:]]

    assert tampered(audit, insert)[:2] == ("inserted", 4)


def test_a_replayed_line_is_found(audit: Path) -> None:
    kind, line, text = tampered(audit, lambda lines: [*lines[:7], lines[2], *lines[7:]])
    assert (kind, line) == ("inserted", 8)
    assert "appears again" in text


def test_a_cut_last_line_is_found(audit: Path) -> None:
    kind, line, text = tampered(audit, lambda lines: [*lines[:-1], lines[-1][:40]])
    assert (kind, line) == ("truncated", 10)
    assert "incomplete" in text


def test_an_unreadable_line_is_found(audit: Path) -> None:
    def garble(lines: list[str]) -> list[str]:
        lines[2] = "this is not json\n"
        return lines

    assert tampered(audit, garble)[:2] == ("unreadable", 3)


def test_a_removed_middle_file_is_found(audit: Path) -> None:
    make_log(audit, 30, max_bytes=1500)
    files = log_files(audit)
    files[1][1].unlink()
    problem = verify(audit).problem
    assert problem is not None
    assert (problem.file, problem.line, problem.kind) == (files[2][1].name, 1, "removed")
    assert file_name(2) in problem.detail


def test_a_removed_first_file_is_found(audit: Path) -> None:
    make_log(audit, 30, max_bytes=1500)
    log_files(audit)[0][1].unlink()
    problem = verify(audit).problem
    assert problem is not None and (problem.kind, problem.line) == ("removed", 1)


def test_a_file_cut_at_a_line_boundary_is_found_at_the_next_file(audit: Path) -> None:
    make_log(audit, 30, max_bytes=1500)
    files = log_files(audit)
    lines = lines_of(files[0][1])
    files[0][1].write_text("".join(lines[:-2]))
    problem = verify(audit).problem
    assert problem is not None
    assert (problem.file, problem.line, problem.kind) == (files[1][1].name, 1, "truncated")


def test_removing_every_file_is_found(audit: Path) -> None:
    lock = AuditLock(audit)
    assert lock.acquire({"pid": 1})
    make_log(audit, 3)
    lock.release()
    for _, path in log_files(audit):
        path.unlink()
    problem = verify(audit).problem
    assert problem is not None and problem.kind == "removed"


def test_a_cut_tail_is_only_found_against_a_hash_kept_elsewhere(audit: Path) -> None:
    make_log(audit, 10)
    kept = verify(audit).last_hash
    assert verify(audit, expect_hash=kept).ok
    path = only_file(audit)
    path.write_text("".join(lines_of(path)[:-2]))
    assert verify(audit).ok  # a shorter chain is still a chain
    problem = verify(audit, expect_hash=kept).problem
    assert problem is not None and problem.kind == "truncated" and kept in problem.detail


# ---- retention -------------------------------------------------------------------------------


def directory_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir())


def test_retention_keeps_the_newest_files_and_says_where_the_chain_starts(
        audit: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = make_log(audit, 300, max_bytes=1500, keep_files=3)
    files = log_files(audit)
    assert len(files) == 3 and files[0][0] > 1
    assert [n for n, _ in files] == list(range(files[0][0], files[0][0] + 3))
    assert directory_bytes(audit) <= 3 * 1500  # the files; nothing else grows
    first_kept = json.loads(lines_of(files[0][1])[0])
    assert first_kept["seq"] > 1 and first_kept["prev"] != GENESIS
    result = verify(audit)
    assert result.ok, result.problem
    assert (result.first_seq, result.first_file) == (first_kept["seq"], files[0][1].name)
    assert result.last_hash == log.last_hash and result.retention_seq > first_kept["seq"]
    records = [json.loads(line) for _, path in files for line in lines_of(path)
               if '"audit.retention"' in line]
    assert records and records[-1]["kept_file"] == files[0][1].name
    assert (records[-1]["kept_seq"], records[-1]["kept_prev"]) == (
        first_kept["seq"], first_kept["prev"])

    assert main(["audit", "verify", "--data-dir", str(audit.parent)]) == 0
    out = capsys.readouterr().out
    assert "audit log OK:" in out
    assert (f"the oldest file, {files[0][1].name}, starts at entry #{first_kept['seq']}: "
            f"entries 1 to {first_kept['seq'] - 1} were removed by retention") in out


def test_a_retained_file_removed_by_hand_is_still_found(audit: Path) -> None:
    make_log(audit, 300, max_bytes=1500, keep_files=3)
    oldest = log_files(audit)[0][1]
    oldest.unlink()
    problem = verify(audit).problem
    assert problem is not None and (problem.kind, problem.line) == ("removed", 1)
    assert "no audit.retention entry records removing them" in problem.detail


def test_a_hash_kept_elsewhere_that_retention_removed_says_so(audit: Path) -> None:
    make_log(audit, 3, max_bytes=1500, keep_files=3)
    kept = verify(audit).last_hash
    make_log(audit, 300, max_bytes=1500, keep_files=3)
    problem = verify(audit, expect_hash=kept).problem
    assert problem is not None and "removed by retention" in problem.detail


def test_a_crash_during_retention_leaves_a_log_that_verifies_and_is_finished_later(
        audit: Path, tmp_path: Path) -> None:
    """The record is written (and synced) before any file goes: a crash after it, or
    between two removals, leaves files the record already covers."""
    make_log(audit, 300, max_bytes=1500)  # no retention yet: every file kept
    backup = {path.name: path.read_bytes() for _, path in log_files(audit)}
    count = len(backup)
    assert count > 10
    log = AuditLog.open(audit, 1500, keep_files=4)  # a lowered setting: applied at open
    log.close()
    assert len(log_files(audit)) == 4 and verify(audit).ok

    removed = sorted(set(backup) - {p.name for _, p in log_files(audit)})
    (audit / removed[-1]).write_bytes(backup[removed[-1]])  # a crash before the last unlink
    result = verify(audit)
    assert result.ok and result.first_file == removed[-1], result.problem
    for name in removed:  # a crash right after the record: nothing removed yet
        (audit / name).write_bytes(backup[name])
    assert verify(audit).ok and len(log_files(audit)) >= count

    log = AuditLog.open(audit, 1500, keep_files=4)
    log.close()
    assert len(log_files(audit)) == 4
    assert verify(audit).ok


def test_torn_lines_set_aside_go_with_their_file(audit: Path) -> None:
    make_log(audit, 2, max_bytes=1500, keep_files=3)
    with open(log_files(audit)[-1][1], "a") as f:
        f.write('{"seq":3,"time":"2026-01-')  # a crash in the middle of a write
    make_log(audit, 300, max_bytes=1500, keep_files=3)
    assert not list(audit.glob("torn-*.bin"))
    assert verify(audit).ok


def test_retention_stops_at_a_damaged_first_kept_entry_and_says_so(audit: Path) -> None:
    make_log(audit, 60, max_bytes=1500)
    files = log_files(audit)
    for _, path in files[:-1]:  # whichever file would be kept first is damaged
        lines = lines_of(path)
        path.write_text(lines[0].replace('"outcome":"ok"', '"outcome":"no"')
                        + "".join(lines[1:]))
    log = AuditLog.open(audit, 1500, keep_files=len(files) - 1)
    log.close()
    assert {p for _, p in files} <= {p for _, p in log_files(audit)}  # nothing removed
    last = json.loads(lines_of(log_files(audit)[-1][1])[-1])
    assert last["event"] == "audit.retention_blocked" and last["kept_file"] in {
        p.name for _, p in files}


def test_file_numbers_past_six_digits_stay_in_the_chain(audit: Path) -> None:
    """Retention lets a log live forever, so its file numbers outgrow six digits."""
    make_log(audit, 30, max_bytes=1500)
    files = log_files(audit)
    for number, path in files:
        path.rename(audit / file_name(999_997 + number))
    names = [p.name for _, p in log_files(audit)]
    assert len(names) == len(files) and names[-1] == f"audit-{999_997 + len(files)}.jsonl"
    log = AuditLog.open(audit, 1500, keep_files=3)
    log.append("more", {})
    log.close()
    result = verify(audit)
    assert result.ok, result.problem
    assert len(log_files(audit)) == 3 and result.first_file.startswith("audit-1000")


@pytest.mark.parametrize("keep", [-1, 0, 1])
def test_retention_keeps_at_least_two_files(audit: Path, keep: int) -> None:
    with pytest.raises(AuditError, match=r"audit\.max_files"):
        AuditLog.open(audit, 1500, keep_files=keep)


# ---- torn tails ----------------------------------------------------------------------------


def test_a_torn_last_line_is_set_aside_explicitly(audit: Path) -> None:
    make_log(audit, 5)
    path = only_file(audit)
    with open(path, "a") as f:
        f.write('{"seq":6,"time":"2026-01-')  # a crash in the middle of a write
    assert verify(audit).problem.kind == "truncated"  # type: ignore[union-attr]
    assert verify(audit, live=True).ok  # a writer may be in the middle of it right now

    log = AuditLog.open(audit, 1 << 20)
    log.close()
    assert log.torn is not None
    saved = audit / log.torn.saved_as
    assert saved.read_text() == '{"seq":6,"time":"2026-01-'
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    result = verify(audit)
    assert result.ok and result.entries == 6
    last = json.loads(lines_of(path)[-1])
    assert last["event"] == "audit.torn_tail"
    assert (last["bytes"], last["saved_as"], last["offset"]) == (
        log.torn.size, log.torn.saved_as, log.torn.offset)


def test_a_whole_entry_missing_only_its_newline_is_completed(audit: Path) -> None:
    make_log(audit, 5)
    path = only_file(audit)
    lines = lines_of(path)
    path.write_text("".join(lines)[:-1])  # the last entry lost its newline
    log = AuditLog.open(audit, 1 << 20)
    log.append("next", {})
    log.close()
    assert log.torn is None
    result = verify(audit)
    assert result.ok and result.entries == 6


def test_an_unterminated_last_line_not_as_written_is_set_aside_not_completed(
        audit: Path) -> None:
    """Completing a line vouches for its bytes: one with a duplicate key is not whole."""
    make_log(audit, 5)
    path = only_file(audit)
    lines = lines_of(path)
    forged = lines[-1].replace('"outcome":"ok"', '"outcome":"FORBIDDEN","outcome":"ok"')
    path.write_text("".join(lines[:-1]) + forged.rstrip("\n"))
    log = AuditLog.open(audit, 1 << 20)
    log.close()
    assert log.torn is not None and log.torn.size == len(forged) - 1
    result = verify(audit)
    assert result.ok and result.entries == 5  # four entries, then audit.torn_tail
    assert "FORBIDDEN" not in path.read_text()


def test_a_damaged_last_line_stops_the_writer_with_a_clear_error(audit: Path) -> None:
    make_log(audit, 3)
    path = only_file(audit)
    path.write_text("".join(lines_of(path)[:-1]) + "garbage\n")
    with pytest.raises(AuditError, match="audit verify"):
        AuditLog.open(audit, 1 << 20)


# ---- recipients and fields ---------------------------------------------------------------


def test_recipient_modes(tmp_path: Path) -> None:
    assert render_recipient("14155552671", "full") == "+14155552671"
    assert render_recipient("14155552671", "masked") == "+1********71"
    assert render_recipient("4915123456789", "masked") == "+49*********89"
    assert render_recipient("+1 (415) 555-2671", "masked") == "+1********71"
    assert render_recipient("", "masked") is None
    secret = load_secret(tmp_path / "a")
    assert stat.S_IMODE((tmp_path / "a" / "recipient.key").stat().st_mode) == 0o600
    assert load_secret(tmp_path / "a") == secret
    hashed = render_recipient("14155552671", "hashed", secret)
    assert hashed is not None and hashed.startswith("hmac:") and "4155" not in hashed
    assert render_recipient("14155552671", "hashed", secret) == hashed
    assert render_recipient("14155552672", "hashed", secret) != hashed
    assert render_recipient("14155552671", "hashed", load_secret(tmp_path / "b")) != hashed


@pytest.mark.parametrize("mode", ["full", "masked", "hashed"])
def test_the_log_renders_recipients_and_never_records_text(audit: Path, mode: str) -> None:
    log = AuditLog.open(audit, 1 << 20, mode)
    entry = log.append("mutation", {"recipient": "14155552671", "text": "Your code is 123456",
                                    "message": "x", "body": "y", "messageId": None,
                                    "hash": "mine", "operation": "o" * 5000})
    log.close()
    raw = only_file(audit).read_text()
    assert "123456" not in raw and "Your code" not in raw
    assert not {"text", "message", "body", "messageId"} & set(entry)
    assert entry["field_hash"] == "mine"  # a caller cannot overwrite the chain's fields
    assert len(entry["operation"]) < 600
    assert ("14155552671" in raw) == (mode == "full")
    assert verify(audit).ok


# ---- the lock and the CLI --------------------------------------------------------------------


def test_the_lock_admits_one_writer_and_names_it(audit: Path) -> None:
    first, second = AuditLock(audit), AuditLock(audit)
    assert lock_holder(audit) is None
    assert first.acquire({"pid": 123, "admin_port": 19999})
    assert not second.acquire({"pid": 456})
    assert lock_holder(audit) == {"pid": 123, "admin_port": 19999}
    first.release()
    assert lock_holder(audit) is None
    assert second.acquire({"pid": 456})
    second.release()


def test_admin_actions_without_a_gateway_are_written_directly(tmp_path: Path) -> None:
    config = load_config(None, {"storage.data_dir": str(tmp_path / "data")})
    record_admin_action(config, "token.create", name="ci", role="sender")
    record_admin_action(config, "token.revoke", name="ci")
    audit = tmp_path / "data" / "audit"
    result = verify(audit)
    assert result.ok and result.entries == 2
    entries = [json.loads(line) for line in read_tail(audit, 5)]
    assert [e["event"] for e in entries] == ["token.create", "token.revoke"]
    assert entries[0]["name"] == "ci" and entries[0]["os_user"]
    assert lock_holder(audit) is None


def test_admin_actions_wait_for_a_writer_and_then_say_why_not(tmp_path: Path) -> None:
    config = load_config(None, {"storage.data_dir": str(tmp_path / "data"),
                                "actors.ask_timeout_seconds": 0.3})
    lock = AuditLock(tmp_path / "data" / "audit")
    assert lock.acquire({"pid": 1})  # a writer that is not a gateway (no port)
    try:
        with pytest.raises(AuditError, match=r"could not record 'token\.create'"):
            record_admin_action(config, "token.create", name="ci")
    finally:
        lock.release()


def test_cli_verify_and_tail(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    log = make_log(data / "audit", 4)
    assert main(["audit", "verify", "--data-dir", str(data)]) == 0
    out = capsys.readouterr().out
    assert f"audit log OK: 4 entries in 1 file, last hash {log.last_hash}" in out
    assert main(["audit", "verify", "--data-dir", str(data), "--expect-hash",
                 log.last_hash]) == 0
    capsys.readouterr()

    assert main(["audit", "tail", "-n", "2", "--data-dir", str(data)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[0].startswith("#3 ") and "mutation" in out[0]
    assert "prev=" not in out[0]

    path = only_file(data / "audit")
    path.write_text(path.read_text().replace('"n":1', '"n":7'))
    assert main(["audit", "verify", "--data-dir", str(data)]) == 1
    assert f"file {file_name(1)} line 2: edited" in capsys.readouterr().out
    assert main(["audit", "verify", "--data-dir", str(data), "--expect-hash", "xyz"]) == 2
