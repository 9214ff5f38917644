"""Admin actions from the CLI (``wagate token ...``, ``wagate keys rotate``) into the
audit log, without ever making a second writer.

While the gateway runs, its audit actor holds the audit lock and is the only writer:
the entry goes to it through the actor system (loopback only), and the call returns
once the actor confirms it was written. While the gateway is stopped, this process
takes the lock and writes the entry itself. Either way the chain stays one chain.

In multi-host mode with a database the chain is in PostgreSQL (``actors.audit.pg``),
shared by every leader: the entry is appended there directly, whether this host's
gateway runs or not (it may be a standby, which writes nothing). The append goes in
only after the chain's current head, so it never forks the chain; refused because
the active leader appended meanwhile, it reads the new head and tries again.
"""

from __future__ import annotations

import getpass
import os
import time
from typing import Any

from actors.audit.log import (
    TIME_PRECISION,
    AuditError,
    AuditLock,
    AuditLog,
    AuditRefused,
    audit_dir,
    lock_holder,
)
from actors.messages import AuditEvent, RecordAudit
from actors.system import (
    allowed_networks,
    bind_address,
    configure_thespian_log,
    port_listening,
)
from gateway.api.errors import GatewayError
from gateway.core.config import Config, lease_mode
from gateway.core.times import iso_time

MEGABYTE = 1024 * 1024
POLL_SECONDS = 0.05  # between looks at the lock while another writer holds it


def record_admin_action(config: Config, event: str, **fields: Any) -> None:
    """Record ``event`` (e.g. ``token.create``) with ``fields`` (JSON-able; e.g. ``name``,
    ``role``; never a secret or a token) in the audit log of ``config``'s data_dir.

    Adds ``os_user`` (who ran the command) unless given. Waits at most
    ``actors.ask_timeout_seconds`` for a running gateway to confirm, or for another
    writer to release the lock; raises ``AuditError`` (its message says what to do)
    when the entry could not be recorded.
    """
    fields.setdefault("os_user", _os_user())
    directory = audit_dir(config.data_path)
    timeout = config.actors.ask_timeout_seconds
    deadline = time.monotonic() + timeout
    if lease_mode(config):
        _write_database(config, directory, event, fields, deadline)
        return
    lock = AuditLock(directory)
    bridge: Any = None
    problem = "another process holds the audit lock"
    while True:
        try:
            acquired = lock.acquire({"pid": os.getpid(), "writer": "cli",
                                     "since": iso_time(time.time(), TIME_PRECISION)})
        except OSError as exc:
            raise AuditError(f"cannot use the audit directory: {exc}; run the command as "
                             "the user the gateway runs as") from exc
        if acquired:
            try:
                _write(config, directory, event, fields)
            finally:
                lock.release()
            return
        port = (lock_holder(directory) or {}).get("admin_port")
        address = bind_address(config)
        if isinstance(port, int) and port_listening(port, address):
            from gateway.web.bridge import ActorBridge

            # Thespian's own log (refused connections too) next to the gateway's.
            configure_thespian_log(config.data_path / "logs")
            bridge = bridge or ActorBridge(port, timeout, address, allowed_networks(config),
                                           member=config.cluster.role == "member")
            try:
                bridge.ask(RecordAudit(AuditEvent(event, fields)),
                           timeout=max(0.5, deadline - time.monotonic()))
                return
            except GatewayError as exc:
                problem = f"the running gateway did not record it ({exc.message})"
        if time.monotonic() >= deadline:
            raise AuditError(f"could not record {event!r} in the audit log within "
                             f"{timeout:g} s: {problem}; check that the gateway is healthy "
                             "(`wagate status`, data_dir/logs/actors.log) and retry")
        time.sleep(POLL_SECONDS)


def _write(config: Config, directory: Any, event: str, fields: dict[str, Any]) -> None:
    try:
        log = AuditLog.open(directory, int(config.audit.max_file_mb * MEGABYTE),
                            config.audit.recipients, keep_files=config.audit.max_files)
    except OSError as exc:
        raise AuditError(f"cannot open the audit log: {exc}") from exc
    try:
        log.append(event, fields)
    finally:
        log.close()


def _write_database(config: Config, directory: Any, event: str, fields: dict[str, Any],
                    deadline: float) -> None:
    """Append to the chain in PostgreSQL after its current head; a refusal (another
    writer appended first) reads the head again, until ``deadline``."""
    from actors.audit.pg import PgAuditLog

    while True:
        log = PgAuditLog.open(config.cluster.database_url, config.audit.recipients,
                              secret_dir=directory,
                              timeout_seconds=max(0.5, deadline - time.monotonic()))
        try:
            log.append(event, fields)
            return
        except AuditRefused as exc:
            if time.monotonic() >= deadline:
                raise AuditError(f"could not record {event!r} in the audit chain: {exc}; "
                                 "retry") from exc
        finally:
            log.close()
        time.sleep(POLL_SECONDS)


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers): the uid still says who
        return str(os.getuid())
