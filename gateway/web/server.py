"""The HTTP server process (``python -m gateway.web``), started by ``wagate serve``.

It runs in its own process group, apart from the actor system: gunicorn forks
workers, and a process that forks must not hold actor-system threads or Go
runtimes. The configuration arrives as JSON in ``WAGATE_CONFIG_JSON``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from typing import Any

from gunicorn.app.base import BaseApplication

from gateway.core.allocator import allocator_environment
from gateway.core.child_env import secret_variables, web_config, without_secrets
from gateway.core.collector import freeze_long_lived
from gateway.core.config import Config, config_from_dict, config_to_dict
from gateway.core.observability import setup_logging
from gateway.web.metrics_files import MULTIPROC_ENV, metrics_dir

CONFIG_ENV = "WAGATE_CONFIG_JSON"


def config_env(config: Config) -> dict[str, str]:
    """The web process's environment: its config, and where every worker writes its
    metrics (read by prometheus-client when it is first imported, so it must be set
    before the process starts)."""
    return {CONFIG_ENV: json.dumps(config_to_dict(config)),
            MULTIPROC_ENV: str(metrics_dir(config.data_path))}


def web_environment(config: Config, environ: Mapping[str, str]) -> dict[str, str]:
    """The web process's whole environment: the launcher's without the secrets the web
    tier never needs (the storage key's variable), and the config without the proxy's
    address (gateway/core/child_env.py), with the launcher's malloc arena limit and no
    per-thread malloc cache (gateway/core/allocator.py)."""
    return {**without_secrets(environ, secret_variables(config)),
            **allocator_environment(environ), **config_env(web_config(config))}


def _worker_exited(_server: Any, worker: Any) -> None:
    """gunicorn ``child_exit`` hook: drop the dead worker's live gauges (its counters
    stay: they still count towards the totals)."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def _worker_exiting(_server: Any, worker: Any) -> None:
    """gunicorn ``worker_exit`` hook, in the worker: the audit entries that still wait
    leave before it ends (``ActorBridge.close``)."""
    from gateway.web.state import EXTENSION

    state = getattr(getattr(worker, "wsgi", None), "extensions", {}).get(EXTENSION)
    close = getattr(getattr(state, "bridge", None), "close", None)
    if close is not None:
        close()


def _worker_loaded(_worker: Any) -> None:
    """gunicorn ``post_worker_init`` hook, in the worker once its app is made: the app
    lives as long as the worker, so it is frozen, and the collector's full collections
    then weigh only what requests leave behind. Without this, the app's tracked
    objects (about 80 000) put the next full collection off for hours, and the cycles
    requests leave piled up meanwhile (``gateway.core.collector``, issue 16)."""
    freeze_long_lived()


class _Gunicorn(BaseApplication):
    def __init__(self, config: Config) -> None:
        self.gateway_config = config
        super().__init__()

    def load_config(self) -> None:
        http = self.gateway_config.http
        settings: dict[str, Any] = {
            "bind": f"{http.host}:{http.port}",
            "workers": http.workers,
            "threads": http.threads,
            "worker_class": "gthread",
            "preload_app": False,  # the actor-system handle must be made after the fork
            "graceful_timeout": 10,
            "timeout": 120,  # a send may wait send_timeout for WhatsApp's ack
            "accesslog": None,  # the app logs every request itself, with its request id
            "errorlog": "-",
            "loglevel": "warning",
            "proc_name": "wagate-web",
            "post_worker_init": _worker_loaded,
            "child_exit": _worker_exited,
            "worker_exit": _worker_exiting,
        }
        for key, value in settings.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        # Imported here: the launcher imports this module for web_environment, and every
        # actor is forked from the launcher (gateway/web/metrics_files.py).
        from gateway.web.app import create_app

        return create_app(self.gateway_config)


def main() -> int:
    # Imported before gunicorn forks, so that its workers inherit the loaded modules
    # instead of each importing them (preload_app is off: the app itself is made after
    # the fork, the modules need not be).
    from gateway.web.app import create_app

    config = config_from_dict(json.loads(os.environ[CONFIG_ENV]))
    setup_logging(config.logging, console=config.http.dev)
    if config.http.dev:
        create_app(config).run(config.http.host, config.http.port, threaded=True,
                               use_reloader=False)
    else:
        # The modules imported above are shared with every worker forked from here; a
        # collector that never examines them never copies their pages into a worker.
        freeze_long_lived()
        _Gunicorn(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
