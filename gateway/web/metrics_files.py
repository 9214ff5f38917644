"""Where the web workers' metrics live between processes (prometheus-client's
multiprocess mode): a directory under data_dir named in the web process's environment.

A module of its own, without prometheus-client: the launcher (``wagate serve``) makes
the directory and the environment, and every actor is forked from the launcher, so
what it imports every actor carries (the web tier's libraries cost each process start
about a quarter of a second and memory it never uses).
"""

from __future__ import annotations

import shutil
from pathlib import Path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
METRICS_DIR = "run/metrics"


def metrics_dir(data_path: Path) -> Path:
    return data_path / METRICS_DIR


def reset_metrics_dir(data_path: Path) -> Path:
    """Start from zero: files of an earlier run would be summed with this one's, and
    their pids may be reused by new workers."""
    path = metrics_dir(data_path)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, mode=0o700)
    return path
