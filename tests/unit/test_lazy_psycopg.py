"""psycopg is loaded only where a PostgreSQL store is used (multi-host mode with
leases): every actor process imports ``actors.messages``, which reaches the outbox's
store interface, and an eager import there cost every process about 90 modules and
6 MiB (measured in the soak, issue 16). Checked in a fresh interpreter, as a process
of the gateway starts."""

from __future__ import annotations

import subprocess
import sys

# What a single host's processes import: the launcher, every actor, the web tier.
MODULES = ("gateway.cli.serve", "actors.supervisor.actor", "actors.session.actor",
           "actors.outbox.actor", "actors.audit.actor", "actors.webhooks.actor",
           "gateway.web.app")


def test_no_process_of_a_single_host_loads_psycopg() -> None:
    code = ("import importlib, sys\n"
            f"for name in {MODULES!r}:\n"
            "    importlib.import_module(name)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'psycopg'))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout
