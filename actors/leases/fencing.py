"""May this process write a session's shared credential store now? Pure: no files, no
database, no actors.

With leases (issue 22, scenario H1) the sealed stores in ``storage.sessions_dir`` are
shared by every host, and only the lease's holder may write them: a process that was
stopped (a stalled VM, SIGSTOP, a long swap) and wakes after its successor connected
must not put back its older credentials, which would roll back the Signal sessions
and prekeys the successor moved forward. Two rules, both needed:

- **the writer holds its lease**, by its own deadline (``LeaseKeeper.holds``: granted,
  not lost, before ``stop_by``), which is ``margin`` before any rival may start;
- **the store on disk is not newer**: every store written under a lease carries its
  epoch (``sealed_store.sealed_epoch``; a store without one counts as 0), and a write
  is refused when the store already carries a higher epoch than the writer's. This
  catches a writer whose own clock was wrong about its deadline (a suspend the
  holder's clock did not see), once its successor has written.

The second check reads the store's header just before the rename that replaces it:
between that read and the rename, a successor's write can still land and then be
overwritten. With a deadline-checked writer that cannot happen (the successor starts
``margin`` after the writer's deadline); only the first rule bounds it, the second
narrows what a wrong deadline can do (README: Deployment on several hosts).
"""

from __future__ import annotations

from dataclasses import dataclass

NOT_HOLDING = "not holding"  # the writer's side of a refusal without a lease


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a write is refused: the writer's epoch (None: it holds no lease now) and
    the epoch of the store on disk."""

    writer_epoch: int | None
    store_epoch: int

    @property
    def reason(self) -> str:
        if self.writer_epoch is None:
            return "this process no longer holds the session's lease"
        return (f"the store was written under lease epoch {self.store_epoch}, newer than "
                f"this process's epoch {self.writer_epoch}")


def refusal(writer_epoch: int | None, store_epoch: int) -> Refusal | None:
    """None when a writer holding ``writer_epoch`` (None: no lease held right now) may
    replace a store that carries ``store_epoch``; else why not. Equal epochs are the
    writer's own earlier writes."""
    if writer_epoch is None or store_epoch > writer_epoch:
        return Refusal(writer_epoch, store_epoch)
    return None
