"""A session process's hold on its lease: acquire, renew, and let go in time by itself.

The session actor must never connect without a lease and must be disconnected before
a rival may take it (issue 22). Both must hold when the database is gone, the network
is cut or the actor's own thread is stuck in a call into the engine, so the keeper
runs on threads of its own and counts on the holder's clock (``timing.holder_clock``):

- the **renewer** acquires the lease (asking again every renew interval while someone
  else holds it, or the database does not answer), reports ``on_granted(epoch)``, and
  renews it every ``renew`` seconds. A refused renewal (the lease was taken, or
  expired) ends the hold at once; an unanswered one is tried again until the deadline.
- the **fence** watches the deadline (``Holding.stop_by``: the request that last
  granted or renewed the lease was sent ``lease`` seconds ago). At the deadline it
  calls ``on_lost(reason)`` once (the actor closes its client and asks for a fresh
  process), and if the process still runs half a margin later it calls
  ``exit_hard`` (by default ``os._exit``): the kernel closes every socket, so the
  account is disconnected before any rival may start, whatever the actor was doing.

``stop`` (the actor's clean exit, after its client is closed) ends both threads and,
with ``release``, lets the lease go at once so the successor need not wait for it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

import structlog

from actors.leases.store import LeaseStore, LeaseStoreUnavailable
from actors.leases.timing import Due, Holding, holder_clock

log = structlog.get_logger("wagate.lease")

EXIT_LEASE_LOST = 75  # the process's exit status after a hard exit (EX_TEMPFAIL)
_RETRY_FRACTION = 0.25  # an unanswered renewal is tried again after this much of renew


def exit_hard() -> None:
    """End this process at once, without cleanup: the lease is over, nothing of this
    process may touch the account or shared state any more."""
    os._exit(EXIT_LEASE_LOST)


class LeaseKeeper:
    """Holds one session's lease on behalf of this process."""

    def __init__(self, store: LeaseStore, session: str, *,
                 on_granted: Callable[[int], None], on_lost: Callable[[str], None],
                 exit_hard: Callable[[], None] = exit_hard,
                 clock: Callable[[], float] = holder_clock) -> None:
        self.store = store
        self.session = session
        self._on_granted = on_granted
        self._on_lost = on_lost
        self._exit_hard = exit_hard
        self._clock = clock
        self._cond = threading.Condition()
        self._holding: Holding | None = None
        self._stopped = False
        self._lost: str | None = None
        self._threads: list[threading.Thread] = []
        self._schema_ready = False

    # ------------------------------------------------------------------- interface

    def start(self) -> None:
        for name, target in (("renew", self._renewer), ("fence", self._fence)):
            thread = threading.Thread(target=target, daemon=True,
                                      name=f"lease-{name}-{self.session}")
            self._threads.append(thread)
            thread.start()

    @property
    def holding(self) -> Holding | None:
        """The current hold, None before the grant and after it ended."""
        with self._cond:
            return self._holding

    @property
    def lost(self) -> str | None:
        """Why the hold ended by itself, None while it has not."""
        with self._cond:
            return self._lost

    def epoch_held(self) -> int | None:
        """The epoch this process holds right now (by its own clock), None when it
        holds none: what a write of shared state may carry (``actors.leases.fencing``)."""
        with self._cond:
            holding = self._holding
            if holding is None or self._lost is not None or self._clock() >= holding.stop_by:
                return None
            return holding.epoch

    def holds(self) -> bool:
        """Whether this process may be connected right now (by its own clock)."""
        with self._cond:
            return (self._holding is not None and self._lost is None
                    and self._clock() < self._holding.stop_by)

    def stop(self, release: bool = True, timeout: float = 2.0) -> None:
        """End the threads (and the hard exit); release the lease if still held. Waits
        at most about ``2 * timeout``: a renewal stuck in a call to an unanswering
        database holds the connection, and an exit must not wait for it."""
        with self._cond:
            self._stopped = True
            holding, self._holding = self._holding, None
            lost = self._lost
            self._cond.notify_all()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout)
        last = threading.Thread(target=self._let_go,
                                args=(holding if release and lost is None else None,),
                                daemon=True, name=f"lease-release-{self.session}")
        last.start()
        last.join(timeout)

    def _let_go(self, holding: Holding | None) -> None:
        if holding is not None:
            try:
                self.store.release(self.session, holding.epoch)
            except LeaseStoreUnavailable as exc:
                log.warning("could not release the lease; it expires by itself",
                            session=self.session, error=str(exc))
        self.store.close()

    # ---------------------------------------------------------------------- threads

    def _renewer(self) -> None:
        timing = self.store.timing
        while not self._wait(0.0):
            holding = self.holding
            if holding is None:
                if not self._acquire():
                    self._wait(timing.renew)
                continue
            now = self._clock()
            due = holding.due(now)
            if due is Due.STOP:
                return  # the fence acts
            if due is Due.RENEW and not self._renew(holding):
                return
            holding = self.holding
            if holding is None:
                return
            pause = holding.renew_at - self._clock()
            if pause <= 0:  # the renewal went unanswered: try again soon
                pause = timing.renew * _RETRY_FRACTION
            self._wait(min(pause, max(0.0, holding.stop_by - self._clock())))

    def _acquire(self) -> bool:
        try:
            if not self._schema_ready:  # the first process of a new database makes it
                self.store.ensure_schema()
                self._schema_ready = True
            sent = self._clock()
            lease = self.store.acquire(self.session)
        except LeaseStoreUnavailable as exc:
            log.warning("cannot reach the lease database", session=self.session,
                        error=str(exc))
            return False
        if lease is None:
            return False
        with self._cond:
            if self._stopped:
                return True  # stop() saw no holding: the lease expires by itself
            self._holding = Holding(lease.epoch, sent, self.store.timing)
            self._cond.notify_all()
        log.info("lease granted", session=self.session, epoch=lease.epoch)
        self._on_granted(lease.epoch)
        return True

    def _renew(self, holding: Holding) -> bool:
        """False when the hold is over (refused)."""
        sent = self._clock()
        try:
            lease = self.store.renew(self.session, holding.epoch)
        except LeaseStoreUnavailable as exc:
            log.warning("lease renewal unanswered", session=self.session, error=str(exc))
            return True  # unknown: try again until the deadline
        if lease is None:
            self._end("the lease was taken over or expired (renewal refused)")
            return False
        with self._cond:
            if self._holding is not None and self._holding.epoch == holding.epoch:
                self._holding = self._holding.renewed(sent)
                self._cond.notify_all()
        return True

    def _fence(self) -> None:
        while True:
            with self._cond:
                if self._stopped:
                    return
                holding = self._holding
                lost = self._lost
            if lost is None and holding is not None and self._clock() >= holding.stop_by:
                self._end("the lease could not be renewed in time")
                lost = self.lost
            if lost is not None:
                self._hard_exit_later()
                return
            wait = 0.05 if holding is None else min(0.05, holding.stop_by - self._clock())
            self._wait(max(wait, 0.001))

    def _end(self, reason: str) -> None:
        with self._cond:
            if self._lost is not None or self._stopped:
                return
            self._lost = reason
            self._cond.notify_all()
        log.error("lease lost: disconnecting", session=self.session, reason=reason)
        self._on_lost(reason)

    def _hard_exit_later(self) -> None:
        """Half a margin for the actor to close its client and go; then the kernel."""
        if not self._wait(self.store.timing.margin / 2):
            log.error("the session did not stop after losing its lease: exiting now",
                      session=self.session)
            self._exit_hard()

    def _wait(self, seconds: float) -> bool:
        """Sleep ``seconds``, or less if stopped meanwhile; returns whether stopped."""
        with self._cond:
            if seconds > 0:
                self._cond.wait_for(lambda: self._stopped, seconds)
            return self._stopped
