"""A launcher killed while it rewrites its run record (``run/gateway.json``) leaves no
temp file for good: the next launcher's claim removes it.

Before the one atomic writer, the record's temp file had one fixed name that every
write removed first; ``write_atomic`` names it at random (``.gateway.json.<random>.tmp``),
so without a sweep each crash at that moment would leave one more file in ``run/``.
Real processes: the crash is a SIGKILL between the write and the rename.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from gateway.cli.run_state import STATE_FILE, Run, read_record
from gateway.core.files import stale_temp_files

ROOT = Path(__file__).parents[2]


def crash_while_writing_the_record(data: Path) -> None:
    """A launcher that claims ``data`` and dies (SIGKILL, no cleanup) in its next
    record update, after the new bytes are on disk and before the rename."""
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from gateway.cli.run_state import Run
        run = Run.claim(Path({str(data)!r}), 4711, "single")
        os.replace = lambda *args: os.kill(os.getpid(), signal.SIGKILL)  # the power cut
        run.update(admin_port=4712)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, stdin=subprocess.DEVNULL)
    assert done.returncode == -9, (done.returncode, done.stderr)


def test_the_next_claim_removes_the_temp_file_a_crashed_launcher_left(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "run").mkdir(parents=True)
    record = data / STATE_FILE
    crash_while_writing_the_record(data)
    assert len(stale_temp_files(record.parent, record.name)) == 1  # the crash's leftover

    with Run.claim(data, 4711, "single") as run:
        assert read_record(data) == run.record
        assert stale_temp_files(record.parent, record.name) == []
    assert sorted(p.name for p in record.parent.iterdir()
                  if p.name.startswith(".")) == []
