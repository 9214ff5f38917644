"""One command of a peer process: a test's own actor system in a process of its own, as
Thespian keeps one actor system per process (``leader_lookup_peer``, ``bridge_peer``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STEP_SECONDS = 60.0  # one command of a peer: an outer bound, never asserted on


def run_peer(module: str, log: Path, *args: object) -> str:
    """Run ``python -m module args``; its output goes to files, never pipes: a started
    Admin daemonises and would hold a pipe open past the command's end."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out, err = log.with_suffix(".out"), log.with_suffix(".err")
    with out.open("w") as stdout, err.open("w") as stderr:
        done = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT,
                              env=env, text=True, stdin=subprocess.DEVNULL, stdout=stdout,
                              stderr=stderr, timeout=STEP_SECONDS, check=False)
    assert done.returncode == 0, err.read_text()[-3000:]
    return out.read_text()
