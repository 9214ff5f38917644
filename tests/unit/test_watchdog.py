"""The supervisor's watchdog (``actors.supervisor.watchdog``): which children count as
hung, on a clock the test moves, and the guard on the pid it kills."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from actors.supervisor.watchdog import (
    MIN_PROBE_SECONDS,
    Watchdog,
    kill_child,
    parent_of,
    probe_every,
)
from tests.integration.harness import wait_for

HANG = 8.0  # asked every 2 s


def answered_once(dog: Watchdog[str], key: str = "outbox", at: float = 0.0) -> None:
    assert dog.to_ask([key], at) == [key]
    dog.answered(key, 4242)


def test_a_child_that_keeps_answering_is_never_hung() -> None:
    dog: Watchdog[str] = Watchdog(HANG)
    for tick in range(1000):  # 1000 s of heartbeats, each question answered at once
        for key in dog.to_ask(["outbox"], float(tick)):
            dog.answered(key, 4242)
        assert dog.hung(float(tick)) == []


def test_a_question_left_open_longer_than_hang_seconds_makes_a_hang() -> None:
    dog: Watchdog[str] = Watchdog(HANG)
    answered_once(dog)
    assert dog.to_ask(["outbox"], 2.0) == ["outbox"]  # ... and never answered
    assert dog.hung(2.0 + HANG) == []  # not longer yet
    [hung] = dog.hung(2.0 + HANG + 0.5)
    assert (hung.key, hung.pid, hung.silent_for) == ("outbox", 4242, HANG + 0.5)
    assert dog.hung(100.0) == []  # one kill per process: forgotten once found


def test_one_question_at_a_time() -> None:
    """A stuck process's mail must not pile up one question per heartbeat."""
    dog: Watchdog[str] = Watchdog(HANG)
    answered_once(dog)
    assert dog.to_ask(["outbox"], 2.0) == ["outbox"]
    assert [dog.to_ask(["outbox"], t) for t in (3.0, 4.0, 5.0, 6.0)] == [[], [], [], []]
    dog.answered("outbox", 4242)
    assert dog.to_ask(["outbox"], 6.5) == ["outbox"]
    dog.answered("outbox", 4242)  # answered at once: the next question waits a period
    assert dog.to_ask(["outbox"], 8.0) == []
    assert dog.to_ask(["outbox"], 8.5) == ["outbox"]


def look_every_second(dog: Watchdog[str], start: float, end: float) -> list[str]:
    """The supervisor's heartbeat from ``start`` to ``end``: what it found hung."""
    found: list[str] = []
    for tick in range(int(start), int(end) + 1):
        found += [h.key for h in dog.hung(float(tick))]
    return found


def test_a_held_supervisor_judges_nobody_for_the_time_it_was_held() -> None:
    """The whole host held and resumed together (SIGSTOP of the run, a paused VM): the
    answers of its children wait unread in the supervisor's mailbox, so the time it was
    held counts for nobody."""
    dog: Watchdog[str] = Watchdog(HANG)
    answered_once(dog)
    assert look_every_second(dog, 0.0, 1.0) == []
    assert dog.to_ask(["outbox"], 2.0) == ["outbox"]
    assert look_every_second(dog, 2.0, 2.0) == []
    assert look_every_second(dog, 600.0, 600.0 + HANG) == []  # held from 2 s to 600 s
    assert look_every_second(dog, 601.0 + HANG, 601.0 + HANG) == ["outbox"]  # silent on


def test_a_child_that_never_answered_is_slow_not_hung() -> None:
    """An outbox that still checks a large journal at start has not read its mail yet."""
    dog: Watchdog[str] = Watchdog(HANG)
    assert dog.to_ask(["outbox"], 0.0) == ["outbox"]
    assert look_every_second(dog, 0.0, 10 * HANG) == []
    dog.answered("outbox", 4242)  # the start is over
    assert dog.to_ask(["outbox"], 10 * HANG) == ["outbox"]
    assert look_every_second(dog, 10 * HANG, 11 * HANG + 1) == ["outbox"]


def test_a_replaced_process_starts_afresh() -> None:
    """The question open to a process that exited is not held against its successor."""
    dog: Watchdog[str] = Watchdog(HANG)
    answered_once(dog)
    dog.to_ask(["outbox"], 2.0)
    dog.forget("outbox")  # it exited; a new process starts
    assert dog.to_ask(["outbox"], 3.0) == ["outbox"]
    assert dog.hung(3.0 + 2 * HANG) == []  # the new one has not answered yet


def test_only_the_children_kept_are_judged() -> None:
    """A session asked to exit logs out first, which may take longer than a hang: it is
    no longer watched (nor one moved to another host)."""
    dog: Watchdog[str] = Watchdog(HANG)
    for key in ("outbox", "session:a"):
        answered_once(dog, key)
    dog.to_ask(["outbox", "session:a"], 2.0)
    dog.keep(["outbox"])
    assert [h.key for h in dog.hung(2.0 + HANG + 1)] == ["outbox"]


def test_each_child_is_judged_alone() -> None:
    dog: Watchdog[str] = Watchdog(HANG)
    for key in ("outbox", "session:a"):
        answered_once(dog, key)
    dog.to_ask(["outbox", "session:a"], 2.0)
    dog.answered("session:a", 777)
    assert [h.key for h in dog.hung(2.0 + HANG + 1)] == ["outbox"]


@pytest.mark.parametrize(("hang", "period"), [(1.0, MIN_PROBE_SECONDS), (3.0, 1.0),
                                              (60.0, 15.0), (86400.0, 21600.0)])
def test_questions_are_spread_over_a_hang_but_never_more_than_once_a_second(
        hang: float, period: float) -> None:
    assert probe_every(hang) == period


def test_only_a_child_of_this_process_is_killed() -> None:
    """A pid the child named may belong to another process by the time it is killed:
    the guard is that only this process's own children are."""
    assert parent_of(os.getpid()) == os.getppid()
    assert not kill_child(os.getppid())  # not a child of ours: left alone
    assert parent_of(2**22 + 1) is None  # above any pid_max: no such process
    assert not kill_child(2**22 + 1)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        os.kill(child.pid, signal.SIGSTOP)  # a stopped process, as a hung one may be
        assert kill_child(child.pid)
        assert wait_for(lambda: child.poll(), 10, 0.01, "the child to die") == -signal.SIGKILL
    finally:
        child.kill()
        child.wait()
