"""The whole gateway under a wall clock stepped an hour back and an hour forward
(issue 16, part 4): a real ``wagate serve`` with libfaketime preloaded into every
process, its offset changed from outside while messages flow.

libfaketime reads its offset from ``FAKETIME_TIMESTAMP_FILE`` at every call
(``FAKETIME_NO_CACHE=1``), so writing the file steps the wall clock of every gateway
process at once, as an NTP step does; ``FAKETIME_DONT_FAKE_MONOTONIC=1`` leaves the
monotonic clocks (and ``CLOCK_BOOTTIME``) alone, as a step does. The test itself,
``wagate sim`` and the token file stay on the real clock, as other processes on the
host would.

libfaketime 0.9.10 (Debian 12) breaks ``clock_nanosleep(CLOCK_MONOTONIC,
TIMER_ABSTIME)`` when it does not fake the monotonic clock (libfaketime #426): it
hands the kernel a converted time, EINVAL, and Python 3.11's ``time.sleep`` fails.
A shim preloaded in front of it passes monotonic sleeps straight to the kernel;
it is compiled here from the C below (skipped, saying so, without a compiler).
"""

from __future__ import annotations

import glob
import json
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from actors.transport.simulator import SimulatorServer
from tests.integration.harness import Gateway, expect_error, wait_for

pytestmark = pytest.mark.integration

HOUR = 3600
OK = {"sendWhatsAppNotification": True}
LIBFAKETIME = next(iter(sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))), None)

pytestmark = [pytestmark, pytest.mark.skipif(
    LIBFAKETIME is None,
    reason="libfaketime is not installed (scripts/system-deps installs Debian's faketime)")]

SLEEP_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* Monotonic sleeps go to the kernel untouched; the rest to libfaketime. */
int clock_nanosleep(clockid_t clock, int flags, const struct timespec *request,
                    struct timespec *remain) {
    static int (*next)(clockid_t, int, const struct timespec *, struct timespec *);
    if (clock == CLOCK_MONOTONIC || clock == CLOCK_BOOTTIME) {
        return syscall(SYS_clock_nanosleep, clock, flags, request, remain) == 0 ? 0 : errno;
    }
    if (next == NULL) {
        next = dlsym(RTLD_NEXT, "clock_nanosleep");
    }
    return next(clock, flags, request, remain);
}
"""

SEND = ("mutation($i: SendWhatsAppMessageInput!) { sendWhatsAppMessage(input: $i) "
        "{ id state } }")
STATE = "query($id: ID!) { whatsAppMessage(id: $id) { state } }"
STEPPED = "the wall clock stepped"  # the outbox's log line, with the step's size


@pytest.fixture(scope="module")
def sleep_shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build the clock_nanosleep shim libfaketime 0.9.10 needs")
    where = tmp_path_factory.mktemp("faketime")
    source, library = where / "shim.c", where / "shim.so"
    source.write_text(SLEEP_SHIM, encoding="utf-8")
    subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(library), str(source),
                    "-ldl"], check=True, capture_output=True, timeout=60)
    return library


class SteppedClock:
    """The offset file every gateway process reads its wall clock's step from."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.step(0)

    def step(self, seconds: int) -> None:
        """Make the wall clock of every gateway process read real time + ``seconds``
        (atomically: a process never reads a half-written file)."""
        partial = self.path.with_suffix(".partial")
        partial.write_text(f"{seconds:+d}\n", encoding="utf-8")
        partial.replace(self.path)

    def environment(self, shim: Path) -> dict[str, str]:
        return {"LD_PRELOAD": f"{shim} {LIBFAKETIME}", "FAKETIME_TIMESTAMP_FILE": str(self.path),
                "FAKETIME_NO_CACHE": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


def steps_logged(gw: Gateway) -> list[float]:
    """The sizes of the steps the outbox logged (actors.log), oldest first."""
    path = gw.data_dir / "logs" / "actors.log"
    text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
    steps = []
    for line in text.splitlines():
        if STEPPED in line:  # one JSON object per line
            steps.append(float(json.loads(line)["seconds"]))
    return steps


def send_message(gw: Gateway, phone: str, text: str, **extra: object) -> dict[str, str]:
    result = gw.gql(SEND, {"i": {"phoneNumber": phone, "message": text, **extra}})
    assert not result.errors, result
    return dict(result.data["sendWhatsAppMessage"])


def state_of(gw: Gateway, message_id: str) -> str:
    result = gw.gql(STATE, {"id": message_id})
    assert not result.errors, result
    return str(result.data["whatsAppMessage"]["state"])


def texts_to(sim: SimulatorServer, digits: str) -> list[str]:
    return [m["text"] for m in sim.inbox() if m["to"] == digits]


def link(gw: Gateway, sim: SimulatorServer, session: str) -> None:
    """Connect ``session``, scan its QR code from this process (the host's clock, as
    ``wagate sim scan``, without starting one), wait until it is connected."""
    assert not gw.connect(session).errors
    gw.wait_state("QR_PENDING", session)
    wait_for(lambda: sim.pending_qr(session), 10, message=f"a QR code for {session}")
    sim.scan(session)
    gw.wait_state("CONNECTED", session)


def asks_with(gw: Gateway, token: str) -> int:
    """The HTTP status of a harmless query made with ``token``."""
    return gw.http.post(gw.url + "/graphql", json={"query": "{ whatsAppSessions { name } }"},
                        headers={"Authorization": f"Bearer {token}"}, timeout=10).status_code


def test_the_gateway_keeps_its_durations_when_the_wall_clock_steps_an_hour(
        make_gateway: Callable[..., Gateway], sleep_shim: Path, tmp_path: Path) -> None:
    clock = SteppedClock(tmp_path / "faketime.rc")
    gw = make_gateway({"limits": {"per_number_per_minute": 3},
                       # No recipient lookups: a send to a dropped session would wait
                       # for one to time out, which is not what is measured here.
                       "delivery": {"idempotency_hours": 0.5, "retry_base_seconds": 1.0,
                                    "check_recipient": False},
                       "reconnect": {"attempts": 100}},
                      env=clock.environment(sleep_shim)).start()
    sim = SimulatorServer(gw.data_dir)  # the operator's handle, on the real clock
    try:
        run_both_steps(gw, sim, clock)
    finally:
        sim.close()
        clock.step(0)


def run_both_steps(gw: Gateway, sim: SimulatorServer, clock: SteppedClock) -> None:
    link(gw, sim, "default")

    # ---- an hour back: the recipient's window is full before and stays full after
    for i in range(3):
        assert gw.send("+14155550160", f"window {i}").data == OK, i
    error = expect_error(gw.send("+14155550160", "fourth"), "RATE_LIMITED")
    assert error["extensions"]["retryAfterSeconds"] <= 61
    clock.step(-HOUR)
    # Every gateway process runs on the stepped clock: the outbox saw it (its tick).
    wait_for(lambda: any(abs(s + HOUR) < 60 for s in steps_logged(gw)), 10,
             message="the outbox to log the step back")
    for i in range(3):  # no burst: an hour-old window is not a fresh one
        error = expect_error(gw.send("+14155550160", f"after the step {i}"), "RATE_LIMITED")
        assert error["extensions"]["scope"] == "recipient_minute"
        assert error["extensions"]["retryAfterSeconds"] <= 61  # not held back an hour
    assert texts_to(sim, "14155550160") == [f"window {i}" for i in range(3)]
    # A retry after a transient failure is due after its second or two, not an hour.
    sim.fail_next(1, transient=True)
    retried = send_message(gw, "+14155550161", "retried after the step")
    wait_for(lambda: state_of(gw, retried["id"]) in ("SENT", "DELIVERED"), 15,
             message="the retried message to be sent")
    # A QR code shown after the step can be scanned within its window (the scanner
    # runs on the real clock, an hour ahead of the session's).
    link(gw, sim, "second")

    # ---- an hour forward (two from where it was)
    short = gw.make_token("admin", name="half-an-hour", expires=time.time() + HOUR / 2)
    long = gw.make_token("admin", name="two-hours", expires=time.time() + 2 * HOUR)
    assert asks_with(gw, short) == 200 and asks_with(gw, long) == 200
    keyed = send_message(gw, "+14155550162", "sent once", idempotencyKey="clock-1")
    sim.drop("default", down_for=60)
    wait_for(lambda: gw.status()["state"] != "CONNECTED", 10, message="the session to drop")
    waiting = send_message(gw, "+14155550163", "valid two minutes", validForSeconds=120)
    assert waiting["state"] == "QUEUED", waiting
    clock.step(HOUR)
    wait_for(lambda: any(abs(s - HOUR) < 60 for s in steps_logged(gw)), 10,
             message="the outbox to log the step forward")
    # The idempotency window (30 min here) is a duration: the key still dedupes.
    again = send_message(gw, "+14155550162", "sent once", idempotencyKey="clock-1")
    assert again["id"] == keyed["id"]
    # A token's expiry is a date: on the gateway's clock half an hour has passed it.
    assert asks_with(gw, short) == 401 and asks_with(gw, long) == 200
    # The message valid for two minutes is still waiting, then sent once the session is back.
    assert state_of(gw, waiting["id"]) == "QUEUED"
    sim.restore()
    wait_for(lambda: state_of(gw, waiting["id"]) in ("SENT", "DELIVERED"), 15,
             message="the waiting message to be sent, not expired")
    assert texts_to(sim, "14155550162") == ["sent once"]
    assert texts_to(sim, "14155550163") == ["valid two minutes"]
