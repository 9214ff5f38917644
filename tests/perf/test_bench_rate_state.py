"""pytest entry point: the rate-state benchmark, ``pytest tests/perf/test_bench_rate_state.py
-s``. The benchmark lives in ``bench_rate_state`` so it also runs as a plain script; the
default test run skips tests/perf. No figure is asserted: timings depend on the machine
and on what else runs on it."""

from __future__ import annotations

import pytest

from tests.perf.bench_rate_state import main


@pytest.mark.timeout(300)
def test_bench_rate_state_smoke() -> None:
    """A small run: every step, in a few seconds."""
    assert main(["--sends", "200", "--recipients", "20", "--rounds", "1"]) == 0


@pytest.mark.timeout(900)
def test_bench_rate_state() -> None:
    """Runs the whole benchmark and prints its report (use ``-s`` to see it)."""
    assert main([]) == 0
