"""The inotify watch under the simulated connection's bells (actors/transport/bells.py).

Each wait below has a deadline far longer than the event it waits for should take, and
the assertions are about what woke it, never about how fast."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from actors.transport.bells import BellWatch, open_watch
from actors.transport.simulator import SimulatorServer

LONG = 30.0  # a wait no passing test reaches


@pytest.fixture
def watch(tmp_path: Path) -> BellWatch:
    found = open_watch([tmp_path / "a", tmp_path / "b"])
    if found is None:
        pytest.skip("this kernel has no inotify: the simulator polls instead")
    return found


def _ring(path: Path) -> None:
    stamp = time.time_ns()
    os.utime(path, ns=(stamp, stamp))


def _waited(watch: BellWatch, poke: threading.Timer) -> float:
    poke.start()
    started = time.monotonic()
    watch.wait(LONG)
    poke.join()
    return time.monotonic() - started


def test_a_ring_on_either_file_ends_the_wait(watch: BellWatch, tmp_path: Path) -> None:
    try:
        assert (tmp_path / "a").exists() and (tmp_path / "b").exists()  # made to be watched
        for name in ("a", "b"):
            assert _waited(watch, threading.Timer(0.05, _ring, [tmp_path / name])) < LONG
    finally:
        watch.close()


def test_wake_ends_the_wait_and_a_timeout_returns(watch: BellWatch) -> None:
    try:
        assert _waited(watch, threading.Timer(0.05, watch.wake)) < LONG
        watch.wait(0.01)  # nothing pending: returns at its timeout
        for _ in range(100_000 // 4096 + 2):  # a full wake pipe is not an error
            watch.wake()
        watch.wait(LONG)  # returns at once, and drains them all
    finally:
        watch.close()


def test_close_releases_every_descriptor(tmp_path: Path) -> None:
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        found = open_watch([tmp_path / "a"])
        assert found is not None
        found.close()
    assert len(os.listdir("/proc/self/fd")) == before


def test_the_server_rings_what_the_watch_hears(tmp_path: Path) -> None:
    """The simulator's ring (a utime on the session's bell) is what inotify reports."""
    server = SimulatorServer(tmp_path)
    watch = server._watch_bells("s1")
    if watch is None:
        pytest.skip("this kernel has no inotify")
    try:
        assert _waited(watch, threading.Timer(0.05, server.drop, ["s1"])) < LONG
        assert _waited(watch, threading.Timer(0.05, server.drop)) < LONG  # the shared bell
    finally:
        watch.close()
        server.close()
