"""Every actor of ours answers ``WhoAreYou`` with its process's ids.

Two callers ask: the launcher asks the supervisor (whose process group it sweeps at
stop), and the supervisor asks each of its children, once every few seconds, whether
it still reads its mail (its watchdog, ``actors.supervisor.watchdog``). The answer is
sent from the actor's own message loop, so a process stuck in a handler cannot give it.
"""

from __future__ import annotations

import os
from typing import Any

from actors.messages import ProcessInfo, WhoAreYou


class TellsItsProcess:
    """A mixin for an actor class (before Thespian's classes among its bases)."""

    def receiveMsg_WhoAreYou(self, msg: WhoAreYou, sender: Any) -> None:
        self.send(sender, ProcessInfo(os.getpid(), os.getpgrp(), os.getppid()))  # type: ignore[attr-defined]
