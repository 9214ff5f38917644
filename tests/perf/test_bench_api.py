"""pytest entry point for the API benchmark: ``pytest tests/perf -s``.

The benchmark lives in ``bench_api`` so it also runs as a plain script
(``python -m tests.perf.bench_api``); this file only lets pytest collect it (pytest
collects ``test_*.py`` files). The default test run skips tests/perf (pyproject's
``--ignore=tests/perf``): it takes about three and a half minutes and loads the
whole machine.
No figure is asserted: timings depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import pytest

from tests.perf.bench_api import main


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_bench_api() -> None:
    """Runs the whole benchmark and prints its table (use ``-s`` to see it)."""
    assert main([]) == 0
