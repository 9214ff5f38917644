"""WhatsApp transports: the interface and events (``base``), the real engine
(``neonize``) and a simulated service (``simulator``).

``create_transport`` is the one place that maps the configured engine name to a
class. Both engines are imported lazily, inside their branch: ``neonize`` loads a Go
runtime and must only ever be imported inside a session actor process.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from actors.transport.base import Transport

if TYPE_CHECKING:
    from gateway.core.config import Config


# How many sends of one session may be in the engine at once. whatsmeow serialises a
# client's sends itself (``Client.messageSendLock`` in send.go, held from before the
# recipient's device lookup until the server's ack), so a second worker only queues
# inside Go, where nothing bounds the wait: the real engine gets one. The simulator
# sends in parallel (benchmarks rely on it).
PARALLEL_SENDS = {"neonize": 1, "simulator": 4}


def parallel_sends(engine: str) -> int:
    """Send workers for a session of ``engine`` (one for an engine not listed)."""
    return PARALLEL_SENDS.get(engine, 1)


def create_transport(engine: str, session_id: str, data_dir: Path, config: Config,
                     store_dir: Path | None = None) -> Transport:
    """Build the transport for one session from the whole gateway configuration.

    ``store_dir`` is where the engine keeps the session's credentials: the session's
    decrypted working copy when stores are encrypted, else (None) the session's
    directory under ``storage.sessions_dir`` (default ``data_dir/sessions``).
    """
    if store_dir is None and config.storage.sessions_dir:
        store_dir = config.sessions_path / session_id
    if engine == "simulator":
        from actors.transport.simulator import SimulatorTransport

        server_dir = config.simulator_path if config.simulator.server_dir else None
        return SimulatorTransport(session_id, data_dir, config.qr, config.simulator,
                                  store_dir=store_dir, server_dir=server_dir,
                                  host_name=config.cluster.host_name)
    if engine == "neonize":
        from actors.transport.neonize import NeonizeTransport

        return NeonizeTransport(session_id, data_dir, config, store_dir=store_dir)
    raise ValueError(f"unknown transport engine {engine!r}; use 'neonize' or 'simulator'")


def preload_for_forks(engine: str) -> list[str]:
    """Load, in a process that will fork session processes, what every session of
    ``engine`` would otherwise load by itself, so that the forks share it instead of
    each holding a private copy (issue 17). Only what is safe before a fork: for the
    real engine the libraries and generated message modules it imports, never the
    engine itself (``actors.transport.neonize.preload_engine_modules``). Returns the
    modules loaded."""
    if engine != "neonize":
        return []
    from actors.transport.neonize import preload_engine_modules

    return preload_engine_modules()
