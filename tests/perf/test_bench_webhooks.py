"""pytest entry point: the webhook delivery benchmark,
``pytest tests/perf/test_bench_webhooks.py -s``.

The benchmark lives in ``bench_webhooks`` so it also runs as a plain script (``python -m
tests.perf.bench_webhooks``); this file only lets pytest collect it. The default test
run skips tests/perf (pyproject's ``--ignore=tests/perf``): the full run takes about
three minutes under load, loads both cores and starts loopback receivers. The smoke test
runs it small, to show that everything works end to end (the figures then mean little);
the full one runs it as documented. No figure is asserted: timings depend on the machine
and on what else runs on it.
"""

from __future__ import annotations

import pytest

from tests.perf.bench_webhooks import main


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_bench_webhooks_smoke() -> None:
    """A small run: every step, check and report, in about a minute."""
    assert main(["--sends", "300", "--floor-requests", "300", "--idle", "1"]) == 0


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_bench_webhooks() -> None:
    """Runs the whole benchmark and prints its report (use ``-s`` to see it)."""
    assert main([]) == 0
