"""pytest entry point for the backlog benchmark: ``pytest tests/perf/test_bench_backlog.py -s``.

The benchmark lives in ``bench_backlog`` so it also runs as a plain script
(``python -m tests.perf.bench_backlog``); this file only lets pytest collect it. The
default test run skips tests/perf (pyproject's ``--ignore=tests/perf``): it takes
about three minutes, loads both cores and writes a 100 000-message store
(``--backlog 100000,1000000``: about five, and a store of a million).
No figure is asserted: timings depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import pytest

from tests.perf.bench_backlog import main


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_bench_backlog() -> None:
    """Runs the whole benchmark and prints its table (use ``-s`` to see it)."""
    assert main([]) == 0
