"""The HTTP server process (``python -m gateway.web``), started by ``wagate serve``.

It runs in its own process group, apart from the actor system: gunicorn forks
workers, and a process that forks must not hold actor-system threads or Go
runtimes. The configuration arrives as JSON in ``WAGATE_CONFIG_JSON``.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from gunicorn.app.base import BaseApplication

from gateway.app import create_app
from gateway.config import Config, config_from_dict, config_to_dict
from gateway.observability import setup_logging

CONFIG_ENV = "WAGATE_CONFIG_JSON"


def config_env(config: Config) -> dict[str, str]:
    return {CONFIG_ENV: json.dumps(config_to_dict(config))}


class _Gunicorn(BaseApplication):  # type: ignore[misc]
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
        }
        for key, value in settings.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        return create_app(self.gateway_config)


def main() -> int:
    config = config_from_dict(json.loads(os.environ[CONFIG_ENV]))
    setup_logging(config.logging, console=config.http.dev)
    if config.http.dev:
        create_app(config).run(config.http.host, config.http.port, threaded=True,
                               use_reloader=False)
    else:
        _Gunicorn(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
