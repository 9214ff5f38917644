"""Starting, joining and stopping the Thespian actor system, and sweeping leftovers.

Facts this module is built on (guides/thespian.md §7, §11):
- the Admin daemonises (setsid + double fork), so every actor ends up in the
  Admin's process group: that group is what we sweep after a stop or a crash;
- Thespian binds every socket to all interfaces and speaks pickle, so in
  single-host mode we rewrite the bind address to 127.0.0.1 before the first
  ``ActorSystem(...)``; forked children inherit the patch;
- ``ActorSystem(...)`` *starts* an Admin when none listens, so processes that only
  want to join (web workers) must probe the port first.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

SYSTEM_BASE = "multiprocTCPBase"
SUPERVISOR_NAME = "wagate.supervisor"
LOOPBACK = "127.0.0.1"

_patched = False


def bind_loopback_only() -> None:
    """Rewrite Thespian's all-interfaces bind address to 127.0.0.1 (idempotent).

    Relies on ``IPActorAddress.bindname`` of thespian 4.0.1 (pinned); the
    integration tests list the gateway's listening sockets to catch a regression.
    """
    global _patched
    if _patched:
        return
    from thespian.system.transport import IPBase

    original_init = IPBase.IPActorAddress.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        host = self.bindname[0]
        if host in ("", "0.0.0.0"):
            self.bindname = (LOOPBACK, *self.bindname[1:])

    IPBase.IPActorAddress.__init__ = init
    os.environ["THESPIAN_BASE_IPADDR"] = LOOPBACK
    _patched = True


def configure_thespian_log(log_dir: Path) -> None:
    """Thespian's own log defaults to /tmp/thespian.log (shared, 50 KB): keep ours."""
    log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.environ["THESPLOG_FILE"] = str(log_dir / "thespian.log")
    os.environ.setdefault("THESPLOG_FILE_MAXSIZE", str(5 * 1024 * 1024))
    os.environ.setdefault("THESPLOG_THRESHOLD", "WARNING")


def capabilities(admin_port: int) -> dict[str, Any]:
    return {"Admin Port": admin_port, "Process Startup Method": "fork"}


def port_listening(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def join_system(admin_port: int) -> Any:
    """The actor system of a running gateway, for processes that must not start one."""
    from thespian.actors import ActorSystem

    bind_loopback_only()
    if not port_listening(admin_port):
        raise ConnectionError(f"no actor system listens on {LOOPBACK}:{admin_port}")
    return ActorSystem(SYSTEM_BASE, capabilities(admin_port))


# ---- process sweeping -----------------------------------------------------------


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group, read from /proc."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...; comm may contain spaces and parentheses
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def group_alive(pgid: int) -> bool:
    return bool(_group_members(pgid))


def wait_group_gone(pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if not _group_members(pgid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def sweep_group(pgid: int, settle: float = 2.0, grace: float = 5.0) -> str:
    """Make sure nothing of a process group survives.

    Returns ``clean`` (it ended by itself), ``sigterm`` or ``sigkill`` (what it
    took); tests fail on anything but ``clean`` after a graceful stop.
    """
    if pgid <= 1 or pgid == os.getpgrp():
        return "clean"  # never signal our own group (or init's)
    if wait_group_gone(pgid, settle):
        return "clean"
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    if wait_group_gone(pgid, grace):
        return "sigterm"
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    wait_group_gone(pgid, grace)
    return "sigkill"
