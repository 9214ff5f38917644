"""LeaderWatch: a member's check of the wagate its convention leader runs.

Created by a member's launcher on its own actor system. Thespian tells it when a
leader registers with this member (``ActorSystemConventionUpdate``, the leader's
capabilities included); it tells the launcher which wagate that leader runs and,
when it is another one (``actors.protocol``), why this member must not take part:
the launcher then stops rather than exchange pickles that the other side would
misread.
"""

from __future__ import annotations

from typing import Any

from thespian.actors import ActorSystemConventionUpdate, ActorTypeDispatcher

from actors.messages import LeaderSeen, WatchLeader
from actors.protocol import describe, incompatibility


class LeaderWatch(ActorTypeDispatcher):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.launcher: Any = None

    def receiveMsg_WatchLeader(self, msg: WatchLeader, sender: Any) -> None:
        self.launcher = sender
        # Thespian answers at once with every system already registered, then with
        # each (re-)registration.
        self.notifyOnSystemRegistrationChanges(True)

    def receiveMsg_ActorSystemConventionUpdate(self, msg: ActorSystemConventionUpdate,
                                               sender: Any) -> None:
        """On a member, the only systems that register are its leaders."""
        if self.launcher is None or not msg.remoteAdded:
            return
        caps = msg.remoteCapabilities or {}
        self.send(self.launcher, LeaderSeen(str(msg.remoteAdminAddress), describe(caps),
                                            incompatibility(caps)))
