"""The soak's figures (``tests/perf/soak.py``): a wrong fit would misread a run, and a
soak takes 45 minutes, so its arithmetic is checked here on series with known answers."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.perf.soak import Sample, samples_kept, slope_at_fixed_threads, slope_per_hour


def threads_at(seconds: float) -> int:
    """A pool that grows by four threads at minute 20 (a new peak of overlap)."""
    return 6 + (4 if seconds > 1200 else 0)


def test_a_creep_and_a_thread_step_are_told_apart() -> None:
    # 0.5 MiB/hour of creep, and 100 KiB for each thread
    points = [(t, threads_at(t), 60 + 0.5 * t / 3600 + 0.1 * threads_at(t))
              for t in range(600, 3000, 10)]
    fitted = slope_at_fixed_threads([(t, float(h), v) for t, h, v in points])
    assert fitted is not None
    assert fitted[0] == pytest.approx(0.5)
    assert fitted[1] == pytest.approx(0.1)
    # the plain slope, which the verdict uses, counts the step as growth
    assert slope_per_hour([(t, v) for t, _, v in points]) > 1.0


def test_a_step_with_no_creep_fits_a_flat_slope() -> None:
    points = [(float(t), float(threads_at(t)), 60 + 0.09 * threads_at(t))
              for t in range(600, 3000, 10)]
    fitted = slope_at_fixed_threads(points)
    assert fitted is not None
    assert fitted[0] == pytest.approx(0.0, abs=1e-9)
    assert fitted[1] == pytest.approx(0.09)


@pytest.mark.parametrize("threads", [lambda t: 7.0, float],
                         ids=["flat threads", "threads in step with time"])
def test_no_fit_when_threads_cannot_be_told_from_time(
        threads: Callable[[float], float]) -> None:
    points = [(float(t), threads(float(t)), 60 + t / 3600) for t in range(0, 3000, 10)]
    assert slope_at_fixed_threads(points) is None


def test_slope_per_hour() -> None:
    assert slope_per_hour([(0.0, 1.0), (1800.0, 1.5), (3600.0, 2.0)]) == pytest.approx(1.0)
    assert slope_per_hour([(5.0, 1.0), (5.0, 2.0)]) == 0.0


def test_a_run_that_fails_keeps_the_samples_it_took(tmp_path: Path) -> None:
    """The samples were written only after the report, so a run that failed or was
    stopped 40 minutes in left nothing to read its memory from."""
    series = {("outbox", 42): [Sample(at=10.0, rss_kib=1000, anon_kib=800, file_kib=200,
                                      fds=9, threads=3)]}
    out = tmp_path / "samples.csv"
    with pytest.raises(KeyboardInterrupt), samples_kept(series, out):
        raise KeyboardInterrupt
    rows = list(csv.reader(out.open()))
    assert rows[1] == ["outbox", "42", "10.0", "1000", "800", "200", "9", "3"]
    with samples_kept(series, tmp_path / "unused.csv"):
        pass  # a run that reaches its report writes them after it, not here
    assert not (tmp_path / "unused.csv").exists()
