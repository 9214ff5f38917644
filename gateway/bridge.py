"""The web tier's only door into the actor system.

One ``ActorSystem`` handle per web process, made lazily after gunicorn forks, and a
``private()`` context per request: a handle shared by threads misroutes replies
(guides/thespian.md §5). The web tier never *starts* an actor system; when none
answers, every call becomes ``UNAVAILABLE``. A ``None`` reply means timeout or dead.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import structlog

from actors.messages import Failed
from actors.system import SUPERVISOR_NAME, join_system
from gateway.errors import GatewayError

log = structlog.get_logger("wagate.bridge")


class ActorBridge:
    def __init__(self, admin_port: int, timeout: float) -> None:
        self.admin_port = admin_port
        self.timeout = timeout
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._system: Any = None
        self._supervisor: Any = None

    def ask(self, message: Any, timeout: float | None = None) -> Any:
        """Send ``message`` to the supervisor chain and return ``Ok.value``.

        ``Failed`` replies become ``GatewayError`` with the same code and details.
        """
        from thespian.actors import PoisonMessage

        system, supervisor = self._connect()
        wait = self.timeout if timeout is None else timeout
        try:
            with system.private() as context:
                reply = context.ask(supervisor, message, wait)
        except Exception as exc:  # a broken admin connection is an outage, not a 500
            log.warning("actor system call failed", error=repr(exc))
            self._reset()
            raise _unavailable() from exc
        if reply is None:
            raise _unavailable()
        if isinstance(reply, PoisonMessage):
            raise GatewayError("INTERNAL", "the gateway could not handle this request")
        if isinstance(reply, Failed):
            raise GatewayError(reply.code, reply.message, **reply.details)
        return getattr(reply, "value", reply)

    def _connect(self) -> tuple[Any, Any]:
        if self._pid == os.getpid() and self._system is not None:
            return self._system, self._supervisor
        with self._lock:
            if self._pid != os.getpid() or self._system is None:
                try:
                    system = join_system(self.admin_port)
                    supervisor = system.createActor("actors.supervisor.SupervisorActor",
                                                    globalName=SUPERVISOR_NAME)
                except Exception as exc:
                    raise _unavailable() from exc
                self._system, self._supervisor, self._pid = system, supervisor, os.getpid()
        return self._system, self._supervisor

    def _reset(self) -> None:
        with self._lock:
            self._system = self._supervisor = self._pid = None


def _unavailable() -> GatewayError:
    return GatewayError("UNAVAILABLE", "the gateway's actor system is not answering; "
                        "retry in a few seconds and check `wagate status` / the logs")
