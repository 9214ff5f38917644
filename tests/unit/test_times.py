"""One iso_time (gateway/core/times.py): whole seconds for the API, microseconds for the
audit log, and an audit log written before there was one function still verifies."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from actors.audit.log import AuditLog, file_name, verify
from gateway.core.times import iso_time

ROOT = Path(__file__).parents[2]
MOMENT = 1764687600.123456  # 2025-12-02T15:00:00.123456Z

# Three lines exactly as the audit log wrote them before this change (its own iso_time,
# microseconds), with a fixed clock: the chain's hashes cover this text.
BEFORE = """\
{"seq":1,"time":"2025-12-02T15:00:00.123973Z","event":"gateway.started","sessions":1,"engine":"simulator","pid":4242,"prev":"0000000000000000000000000000000000000000000000000000000000000000","hash":"a900f80acc3ad2dc4171af6fa453818d0569b78520114807bde95ca7a642c500"}
{"seq":2,"time":"2025-12-02T15:00:00.124490Z","event":"mutation","request_id":"req-1","operation":"sendWhatsAppNotification","recipient":"+1********71","outcome":"ok","prev":"a900f80acc3ad2dc4171af6fa453818d0569b78520114807bde95ca7a642c500","hash":"8f6810de36421dac9e8186422208cf4986642c81a66b0a95be97cb353a312403"}
{"seq":3,"time":"2025-12-02T15:00:00.125007Z","event":"gateway.stopping","prev":"8f6810de36421dac9e8186422208cf4986642c81a66b0a95be97cb353a312403","hash":"1e9c386aef2e1386ff2dd437e450a17f202b9f566dc524d5604a4796b05cd4af"}
"""


def test_the_api_writes_whole_seconds_in_utc() -> None:
    assert iso_time(MOMENT) == "2025-12-02T15:00:00Z"
    assert iso_time(0.0) == "1970-01-01T00:00:00Z"
    assert iso_time(None) is None


def test_the_audit_precision_is_microseconds() -> None:
    assert iso_time(MOMENT, "microseconds") == "2025-12-02T15:00:00.123456Z"
    assert iso_time(None, "microseconds") is None


def test_an_audit_log_written_before_goes_on_verifying_and_continuing(tmp_path: Path) -> None:
    audit = tmp_path / "audit"
    audit.mkdir(mode=0o700)
    (audit / file_name(1)).write_text(BEFORE)
    before = verify(audit)
    assert before.ok, before.problem
    assert before.last_seq == 3

    clock = iter([MOMENT + 1, MOMENT + 2])
    log = AuditLog.open(audit, 1 << 20, clock=lambda: next(clock))
    log.append("gateway.started", {"sessions": 1})
    log.close()
    after = verify(audit)
    assert after.ok, after.problem
    assert (after.entries, after.last_seq) == (4, 4)
    lines = (audit / file_name(1)).read_text().splitlines()
    assert lines[:3] == BEFORE.splitlines()  # never rewritten
    assert json.loads(lines[3])["time"] == "2025-12-02T15:00:01.123456Z"  # same format


def test_there_is_one_iso_time() -> None:
    found = [f"{path.relative_to(ROOT)}"
             for folder in ("gateway", "actors") for path in sorted((ROOT / folder).rglob("*.py"))
             if re.search(r"^def iso_time\(", path.read_text(encoding="utf-8"), re.M)]
    assert found == ["gateway/core/times.py"]


@pytest.mark.parametrize(("moment", "shown"), [
    (1e14, "9999-12-31T23:59:59Z"), (float("inf"), "9999-12-31T23:59:59Z"),
    (-1e14, "0001-01-01T00:00:00Z"), (float("-inf"), "0001-01-01T00:00:00Z"),
    (float("nan"), "1970-01-01T00:00:00Z")])
def test_a_moment_no_calendar_shows_is_held_to_the_nearest_one_written(
        moment: float, shown: str) -> None:
    """A stored time out of datetime's range (a peer's clock) must not fail the page."""
    assert iso_time(moment) == shown
    assert iso_time(moment, "microseconds").startswith(shown[:-1])
