"""Calls with a hard deadline (gateway/web/deadline.py), and the bridge that makes every
actor call through them (gateway/web/bridge.py) against a peer that never answers.

Every helper a test blocks is released before the test ends, and the pool is closed:
its threads are joined, none outlives the test."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from actors.messages import Ping
from gateway.api.errors import GatewayError
from gateway.web.bridge import ActorBridge
from gateway.web.deadline import Call, CallPool, DeadlinePassed

WAIT = 10.0  # a generous outer bound: only "it came back" is asserted, never how fast
JOINS_GIVE_UP = 90.0  # joins of a silent actor system end on their own, one by one


@pytest.fixture
def pool() -> Iterator[CallPool]:
    made = CallPool(2, "test-call")
    yield made
    made.close(WAIT)
    assert not [t for t in threading.enumerate() if t.name.startswith("test-call")]


def test_a_call_returns_its_result_or_raises_its_error(pool: CallPool) -> None:
    assert pool.run(lambda call: 42, WAIT) == 42

    def fails(call: Call[int]) -> int:
        raise KeyError("boom")

    with pytest.raises(KeyError):
        pool.run(fails, WAIT)
    assert pool.busy() == 0


def test_a_call_stuck_before_its_commit_point_certainly_did_nothing(pool: CallPool) -> None:
    release, committed = threading.Event(), []

    def stuck(call: Call[None]) -> None:
        release.wait(WAIT)  # Thespian stuck in connect, say
        committed.append(call.commit())  # too late: the caller was told "not done"

    with pytest.raises(DeadlinePassed) as caught:
        pool.run(stuck, 0.2)
    assert caught.value.committed is False
    release.set()
    _until(lambda: committed == [False])


def test_a_call_stuck_after_its_commit_point_is_uncertain(pool: CallPool) -> None:
    release = threading.Event()

    def stuck(call: Call[None]) -> None:
        assert call.commit()
        release.wait(WAIT)  # handed on; the answer never comes

    with pytest.raises(DeadlinePassed) as caught:
        pool.run(stuck, 0.2)
    assert caught.value.committed is True
    release.set()


def test_stuck_calls_hold_at_most_the_pool_and_a_queued_call_never_runs_late() -> None:
    pool = CallPool(1, "test-call")
    release, ran = threading.Event(), []
    try:
        with pytest.raises(DeadlinePassed):
            pool.run(lambda call: release.wait(WAIT), 0.2)
        with pytest.raises(DeadlinePassed) as caught:  # no helper free: it waited queued
            pool.run(lambda call: ran.append(call.commit()), 0.2)
        assert caught.value.committed is False
        assert pool.busy() == 2  # one stuck, one queued; no second thread was started
        release.set()
        _until(lambda: pool.busy() == 0)
        assert pool.run(lambda call: "next", WAIT) == "next"
        assert ran == []  # the cancelled call was dropped, never run after its deadline
    finally:
        release.set()
        pool.close(WAIT)
    assert not [t for t in threading.enumerate() if t.name.startswith("test-call")]
    with pytest.raises(RuntimeError):
        pool.run(lambda call: None, WAIT)
    with pytest.raises(ValueError):
        CallPool(0)


@contextlib.contextmanager
def _silent_peer() -> Iterator[tuple[int, list[socket.socket]]]:
    """A port that accepts TCP connections and never reads or answers: an admin port
    across a partition that lets SYNs through, or a frozen actor system. Yields the
    port and the connections it accepted so far."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], held
    finally:
        server.close()
        thread.join(WAIT)
        for connection in held:
            connection.close()


def test_a_call_to_a_peer_that_never_answers_returns_by_its_deadline() -> None:
    """Regression (defect H2): joining an actor system whose admin port accepts and never
    answers took 14.6 s with a 2 s timeout (68.8 s in a partition), holding the web
    thread. Now the call comes back UNAVAILABLE at its deadline; the stuck helper ends
    on its own later (Thespian then forks an Admin of its own, which this test stops).
    A second call, made while the first one's helper is stuck in that join, comes back
    at its deadline too: before, it waited on the bridge's one lock, which the join held,
    until the join gave up."""
    before = _descendants()
    try:
        with _silent_peer() as (port, held):
            bridge = ActorBridge(port, 0.5)
            stuck, first = _asking(bridge)
            _until(lambda: bool(held))  # its helper is joining, and stuck there
            caller, second = _asking(bridge)
            for thread in (stuck, caller):
                thread.join(WAIT)
            for outcome in (first, second):
                assert len(outcome) == 1, outcome
                assert isinstance(outcome[0], GatewayError)
                assert outcome[0].code == "UNAVAILABLE"
            bridge.close()
            _until(lambda: not _helpers(), JOINS_GIVE_UP)
    finally:
        # Each stuck join gives up on its own, one after the other (the first call's,
        # then the second's), and only then do Thespian's own Admins appear: wait for
        # them also when an assertion failed, or they outlive the test.
        with contextlib.suppress(AssertionError):
            _until(lambda: not _helpers(), JOINS_GIVE_UP)
        _stop(_descendants() - before)


def _asking(bridge: ActorBridge) -> tuple[threading.Thread, list[BaseException]]:
    """A caller of ``bridge.ask`` on its own thread, and what it raised (once it ends).
    A daemon: a caller held by a defect must not keep the test run from exiting."""
    outcome: list[BaseException] = []
    caller = threading.Thread(target=lambda: _ask(bridge, Ping("p"), outcome), daemon=True)
    caller.start()
    return caller, outcome


def _helpers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("wagate-ask")]


def _descendants() -> set[int]:
    """This process's live descendants, from /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    stat = f.read().decode(errors="replace")
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2:].split()
            if fields[0] != "Z":
                parents[int(entry)] = int(fields[1])
    found, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _stop(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for pid in pids:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)  # our children; the others are reaped by theirs
    _until(lambda: not (_descendants() & pids))


def _ask(bridge: ActorBridge, message: object, outcome: list[BaseException]) -> None:
    try:
        bridge.ask(message)
    except BaseException as exc:
        outcome.append(exc)


def _until(condition: Callable[[], bool], seconds: float = WAIT) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)
