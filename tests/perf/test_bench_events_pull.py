"""pytest entry point: the event pull benchmark, ``pytest tests/perf/test_bench_events_pull.py -s``.

The benchmark lives in ``bench_events_pull`` so it also runs as a plain script (``python
-m tests.perf.bench_events_pull``); this file only lets pytest collect it. The default
test run skips tests/perf (pyproject's ``--ignore=tests/perf``): the full run takes a
few minutes (5 000 sends fill the log first) and loads both cores. The smoke test runs
it small, to show that everything works end to end (the figures then mean little); the
full one runs it as documented. No figure is asserted: timings depend on the machine and
on what else runs on it.
"""

from __future__ import annotations

import pytest

from tests.perf.bench_events_pull import main


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_bench_events_pull_smoke() -> None:
    """A small run: every step, check and report, in about a minute."""
    assert main(["--events", "1000"]) == 0


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_bench_events_pull() -> None:
    """Runs the whole benchmark and prints its report (use ``-s`` to see it)."""
    assert main([]) == 0
