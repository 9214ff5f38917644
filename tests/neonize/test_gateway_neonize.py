"""The real engine (neonize) inside a real gateway: ``wagate serve``, HTTP, actors.

``test_neonize_transport.py`` proves the transport alone; these tests prove that a
whole gateway turns the real Go client's dial failures into the documented session
states (README: ``RECONNECTING`` with ``reconnectAttempt``, then ``FAILED`` with
``lastError``), honours ``reconnect.*`` and shuts down while a dial hangs.

Nothing may leave 127.0.0.0/8. Every gateway here gets ``transport.proxy`` on
127.0.0.1 (a ``FaultProxy``, or a port nothing listens on), and every test checks
that the traffic really went there: the proxy saw ``CONNECT web.whatsapp.com:443``,
or the dial error names the refused loopback port. As a second fence, the standard
proxy variables point at a refused loopback port too, so a client that ignored
``transport.proxy`` but honoured the environment (Go's default transport,
``requests`` in neonize's library downloader) could not get out either.

neonize is loaded only in the gateway's session processes, never in pytest (a
process with neonize's Go runtime must not fork, see ``test_neonize_transport``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import os
import socket
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from actors.transport.engine import (
    BOT_TAG,
    adds_bot_node,
    engine_environment,
    exec_environment,
    library_file_name,
)
from tests.integration.harness import Gateway, expect_error, wait_for
from tests.neonize.fault_proxy import FaultProxy, refused_port

pytestmark = pytest.mark.integration

if importlib.util.find_spec("neonize") is None:
    pytest.skip("neonize is not installed (pip install -e '.[test]' installs it)",
                allow_module_level=True)

ATTEMPTS = 5
DELAY = 0.3  # reconnect.delay_seconds, shrunk from the spec's 30 s
CONNECT_REQUEST = "CONNECT web.whatsapp.com:443 HTTP/1.1"
# Go's own limit for a TLS handshake that never completes (docs/engine-behaviour.md,
# "How a connect fails before it reaches WhatsApp"): a tunnel the
# client closed sooner than this after the CONNECT was cut short by us, not by Go.
GO_TLS_HANDSHAKE_TIMEOUT = 10.0
STOP_BOUND = 30.0  # a gateway stop may never wait for a hanging dial longer than this
PRIVATE_DIR, PRIVATE_FILE = 0o700, 0o600


# --------------------------------------------------------------------------- helpers


class TimedProxy(FaultProxy):
    """A ``FaultProxy`` that also notes when each client connection began and ended,
    so a test can measure the spacing of attempts and how long a tunnel stayed open."""

    def __init__(self, mode: str) -> None:
        super().__init__(mode)
        self._spans: list[list[float | None]] = []  # [opened, closed], monotonic

    def _serve(self, conn: socket.socket) -> None:
        with self._lock:
            span: list[float | None] = [time.monotonic(), None]
            self._spans.append(span)
        try:
            super()._serve(conn)
        finally:
            with self._lock:
                span[1] = time.monotonic()

    @property
    def opened(self) -> list[float]:
        """When each connection was accepted, in order."""
        with self._lock:
            return [float(opened) for opened, _ in self._spans if opened is not None]

    def spans(self) -> list[tuple[float, float | None]]:
        """(opened, closed or None while still open) per connection, in order."""
        with self._lock:
            return [(float(opened or 0.0), closed) for opened, closed in self._spans]

    def open_tunnels(self) -> int:
        return sum(1 for _, closed in self.spans() if closed is None)


@dataclass
class Trace:
    """What polling ``whatsAppStatus`` saw, one entry per change of
    (state, reconnectAttempt, lastError)."""

    started: float  # monotonic, just before whatsAppConnect was sent
    steps: list[tuple[float, dict[str, Any]]] = field(default_factory=list)

    @property
    def final(self) -> dict[str, Any]:
        return self.steps[-1][1]

    @property
    def final_at(self) -> float:
        """Seconds from the connect call until the final state was first seen."""
        return self.steps[-1][0] - self.started

    def states(self) -> list[str]:
        return [status["state"] for _, status in self.steps]

    def attempts(self, state: str) -> list[int]:
        return [status["reconnectAttempt"] for _, status in self.steps
                if status["state"] == state]


def connect_and_trace(gw: Gateway, until: str, timeout: float) -> Trace:
    """``whatsAppConnect``, then poll the status until it is ``until``, recording
    every change on the way (a deadline, not a sleep, bounds the wait)."""
    trace = Trace(started=time.monotonic())
    assert gw.connect().data == {"whatsAppConnect": True}

    def key(status: dict[str, Any]) -> tuple[Any, ...]:
        return status["state"], status["reconnectAttempt"], status["lastError"]

    def settled() -> bool:
        status = gw.status()
        if not trace.steps or key(status) != key(trace.steps[-1][1]):
            trace.steps.append((time.monotonic(), status))
        return status["state"] == until

    wait_for(settled, timeout, 0.01, f"the session to be {until}")
    return trace


def process_gone(pid: int) -> bool:
    """The process has exited (a zombie not yet reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return True
    return fields[0] == "Z"


def session_entry(gw: Gateway, session: str = "default") -> dict[str, Any]:
    health = gw.health()
    (entry,) = [s for s in health["sessions"] if s["session"] == session]
    return entry


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# --------------------------------------------------------------------------- fixtures


@contextlib.contextmanager
def _fenced_environment() -> Iterator[None]:
    """Standard proxy variables pointing at a refused loopback port (inherited by
    ``wagate serve`` and its session processes); loopback itself is exempt, so the
    tests still reach the gateway and the gateway still reaches its proxy."""
    dead_end = f"http://127.0.0.1:{refused_port()}"
    with pytest.MonkeyPatch.context() as patch:
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
            patch.setenv(name, dead_end)
            patch.setenv(name.lower(), dead_end)
        patch.setenv("NO_PROXY", "127.0.0.1,localhost")
        patch.setenv("no_proxy", "127.0.0.1,localhost")
        yield


@contextlib.contextmanager
def _neonize_gateways(root: Path) -> Iterator[Callable[..., Gateway]]:
    """Build gateways running the real engine behind ``proxy`` (a loopback URL).

    At the end each is stopped gracefully, which must succeed (exit 0, no process
    group left), and anything still alive is killed and fails the test: the same
    contract as ``tests/integration``'s ``make_gateway``.
    """
    made: list[Gateway] = []

    def make(proxy: str, reconnect: dict[str, Any] | None = None,
             transport: dict[str, Any] | None = None) -> Gateway:
        assert proxy.startswith("http://127.0.0.1:"), proxy  # never beyond loopback
        gw_root = root / f"gw{len(made)}"
        gw_root.mkdir()
        overrides = {"transport": {**(transport or {}), "proxy": proxy},
                     "reconnect": {"attempts": ATTEMPTS, "delay_seconds": DELAY,
                                   "connect_timeout_seconds": 5.0, **(reconnect or {})}}
        gw = Gateway(gw_root, overrides, engine="neonize")
        made.append(gw)
        return gw

    with _fenced_environment():
        try:
            yield make
        finally:
            problems = []
            for gw in made:
                try:
                    gw.stop(STOP_BOUND)
                except AssertionError as exc:
                    problems.append(str(exc))
            problems += [f"left behind: {item}" for gw in made for item in gw.cleanup()]
    assert not problems, "\n".join(problems)


@pytest.fixture
def make_gateway(tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    with _neonize_gateways(tmp_path) as make:
        yield make


@pytest.fixture
def proxies() -> Iterator[Callable[[str], TimedProxy]]:
    """Fault proxies on 127.0.0.1, stopped at the end with none of their threads left."""
    started: list[TimedProxy] = []

    def start(mode: str) -> TimedProxy:
        proxy = TimedProxy(mode).start()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()
    assert [p.threads_alive() for p in started if p.threads_alive()] == []


@dataclass
class RefusedRun:
    gw: Gateway
    port: int
    trace: Trace
    session_pid: int


@pytest.fixture(scope="module")
def refused(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RefusedRun]:
    """One gateway whose proxy port refuses connections, connected once until FAILED.

    Shared by the checks that only look at the end state (status, health, sends,
    storage): each connect costs a gateway start and five attempts.
    """
    with _neonize_gateways(tmp_path_factory.mktemp("refused")) as make:
        port = refused_port()
        gw = make(f"http://127.0.0.1:{port}").start()
        trace = connect_and_trace(gw, "FAILED", timeout=30.0)
        yield RefusedRun(gw, port, trace, session_entry(gw)["pid"])


# --------------------------------------------------------------------------- tests


def test_a_refused_proxy_port_fails_the_session_after_every_attempt(
        refused: RefusedRun) -> None:
    """The initial connect is ours to retry (whatsmeow never retries it): exactly
    ``reconnect.attempts`` attempts, then FAILED with Go's dial error kept for the
    operator, who otherwise cannot tell a dead proxy from a dead network."""
    trace = refused.trace
    final = trace.final
    assert final["state"] == "FAILED" and final["connected"] is False
    assert final["reconnectAttempt"] == ATTEMPTS
    error = final["lastError"]
    assert error["code"] == "RECONNECT_FAILED"
    assert f"gave up after {ATTEMPTS} connect attempts" in error["message"]
    # Go's dial error, through the refused loopback port and nowhere else:
    assert f"dial tcp 127.0.0.1:{refused.port}: connect: connection refused" in error["message"]
    # NEW -> CONNECTING -> RECONNECTING (attempts counting up) -> FAILED
    states = trace.states()
    assert states[-1] == "FAILED" and states.count("FAILED") == 1
    assert "RECONNECTING" in states
    assert set(states) <= {"NEW", "CONNECTING", "RECONNECTING", "FAILED"}
    seen = trace.attempts("RECONNECTING")
    assert seen == sorted(seen) and set(seen) <= set(range(1, ATTEMPTS + 1)), seen
    for _, status in trace.steps:
        if status["state"] == "RECONNECTING":
            assert status["lastError"]["code"] == "CONNECT_FAILED"
            assert "connection refused" in status["lastError"]["message"]
    # Four waits of reconnect.delay_seconds separate the five attempts.
    assert trace.final_at >= (ATTEMPTS - 1) * DELAY


def test_every_attempt_is_one_proxy_connect_spaced_by_the_delay(
        proxies: Callable[[str], TimedProxy], make_gateway: Callable[..., Gateway]) -> None:
    """The proxy counts what the status can only claim: one real dial per attempt,
    none after FAILED, and ``reconnect.delay_seconds`` between them (hammering
    WhatsApp's servers can get an account flagged)."""
    proxy = proxies("http502")
    gw = make_gateway(proxy.address).start()
    trace = connect_and_trace(gw, "FAILED", timeout=30.0)
    error = trace.final["lastError"]
    assert error["code"] == "RECONNECT_FAILED"
    assert f"gave up after {ATTEMPTS} connect attempts" in error["message"]
    assert "Bad Gateway" in error["message"]
    # A FAILED session is retired: once its process is gone no attempt can follow.
    pid = session_entry(gw)["pid"]
    wait_for(lambda: process_gone(pid), 10.0, message=f"session process {pid} to exit")
    assert proxy.connections == ATTEMPTS
    assert proxy.requests == [CONNECT_REQUEST] * ATTEMPTS
    gaps = [later - earlier for earlier, later in itertools.pairwise(proxy.opened)]
    assert len(gaps) == ATTEMPTS - 1
    assert min(gaps) >= DELAY, gaps


def test_a_session_process_is_replaced_after_its_client_budget_and_goes_on_counting(
        proxies: Callable[[str], TimedProxy], make_gateway: Callable[..., Gateway]) -> None:
    """Every engine client leaves a database pool open in its process (see
    test_neonize_transport's descriptor count); after transport.max_clients_per_process
    clients the session asks for a fresh process. The attempts go on where they were:
    still exactly reconnect.attempts dials, then FAILED, each process with at most
    the budget's clients."""
    budget = 2
    proxy = proxies("http502")
    gw = make_gateway(proxy.address, transport={"max_clients_per_process": budget}).start()
    pids: list[int] = []

    def note_pid() -> bool:
        entries = [s for s in gw.health()["sessions"] if s["session"] == "default"]
        pid = entries[0]["pid"] if entries else None  # listed once its process reported
        if pid and (not pids or pids[-1] != pid):
            pids.append(pid)
        return bool(entries) and entries[0]["state"] == "FAILED"

    assert gw.connect().data == {"whatsAppConnect": True}
    wait_for(note_pid, 60.0, 0.01, "the session to be FAILED")
    final = gw.status()
    assert final["reconnectAttempt"] == ATTEMPTS
    assert f"gave up after {ATTEMPTS} connect attempts" in final["lastError"]["message"]
    assert proxy.connections == ATTEMPTS  # no attempt lost or repeated by a replacement
    # 5 attempts, 2 clients per process: three processes (2 + 2 + 1).
    assert len(set(pids)) == -(-ATTEMPTS // budget), pids
    for pid in pids[:-1]:
        assert process_gone(pid), pid


def test_hanging_tls_dials_time_out_and_never_hold_up_a_stop(
        proxies: Callable[[str], TimedProxy], make_gateway: Callable[..., Gateway]) -> None:
    """A dial that hangs gets no event from Go for 10 s (TLS) or 60 s (CONNECT): only
    ``reconnect.connect_timeout_seconds`` ends such an attempt. neonize's stop cannot
    interrupt the dial, so retiring a session and stopping the gateway must not wait
    for it."""
    timeout, attempts = 2.0, 2
    proxy = proxies("tls_hang")
    gw = make_gateway(proxy.address, {"attempts": attempts,
                                      "connect_timeout_seconds": timeout}).start()
    trace = connect_and_trace(gw, "FAILED", timeout=20.0)

    error = trace.final["lastError"]
    assert error["code"] == "RECONNECT_FAILED"
    assert f"gave up after {attempts} connect attempts" in error["message"]
    assert "connect attempt timed out" in error["message"]
    assert trace.final["reconnectAttempt"] == attempts
    # Each attempt waited its full connect timeout, and the delay between them.
    assert trace.final_at >= attempts * timeout + DELAY
    # The dial got as far as the TLS handshake through the loopback proxy. Attempt 2
    # may never dial: the stop of attempt 1 holds the process-wide Go lock until Go
    # abandons the hanging handshake (10 s), longer than attempt 2's timeout.
    assert 1 <= proxy.connections <= attempts
    assert proxy.requests == [CONNECT_REQUEST] * proxy.connections
    assert proxy.drained_bytes > 0  # the client's TLS hello, never answered

    # The FAILED session is retired at once; its exit cuts the hanging dial short.
    pid = session_entry(gw)["pid"]
    wait_for(lambda: process_gone(pid), 10.0, message=f"session process {pid} to exit")
    wait_for(lambda: proxy.open_tunnels() == 0, 10.0, message="the tunnels to close")
    for began, ended in proxy.spans():
        assert ended is not None and ended - began < GO_TLS_HANDSHAKE_TIMEOUT

    # Connect again (a new session process) and stop the gateway while its dial hangs.
    before, hello = proxy.connections, proxy.drained_bytes
    assert gw.connect().data == {"whatsAppConnect": True}
    wait_for(lambda: (proxy.connections > before and proxy.open_tunnels() == 1
                      and proxy.drained_bytes > hello), 10.0,
             message="a new dial hanging in its TLS handshake")
    status = gw.status()
    assert status["state"] in ("CONNECTING", "RECONNECTING"), status
    live_pid = session_entry(gw)["pid"]
    assert live_pid != pid and not process_gone(live_pid)
    began = time.monotonic()
    gw.stop(STOP_BOUND)  # asserts exit 0 and that no process group survived
    assert time.monotonic() - began < STOP_BOUND
    assert process_gone(live_pid)
    wait_for(lambda: proxy.open_tunnels() == 0, 10.0, message="the last tunnel to close")
    opened, closed = proxy.spans()[-1]
    assert closed is not None and closed - opened < GO_TLS_HANDSHAKE_TIMEOUT


def test_a_never_linked_neonize_session_refuses_sends(refused: RefusedRun) -> None:
    """A message for a session that never linked could wait forever: refused at once."""
    gw = refused.gw
    expect_error(gw.send("4917012345678", "hello"), "NOT_CONNECTED", "default")
    expect_error(gw.send_test("4917012345678"), "NOT_CONNECTED", "default")
    assert f"127.0.0.1:{refused.port}" in gw.status()["lastError"]["message"]


def test_admin_health_shows_the_failed_session_and_its_error(refused: RefusedRun) -> None:
    """Monitoring reads /admin/health, not GraphQL: it must see the failure and why."""
    health = refused.gw.health()
    assert health["status"] == "degraded"
    entry = session_entry(refused.gw)
    assert entry["state"] == "FAILED"
    assert entry["connected"] is False
    assert entry["reconnectAttempt"] == ATTEMPTS
    assert entry["lastError"]["code"] == "RECONNECT_FAILED"
    assert "connection refused" in entry["lastError"]["message"]
    assert f"127.0.0.1:{refused.port}" in entry["lastError"]["message"]
    assert entry["pid"] == refused.session_pid


def test_the_session_database_is_private_after_a_failed_connect(refused: RefusedRun) -> None:
    """whatsmeow creates its store on the first dial, failed or not; once linked it
    holds the account's keys, so it is private from the start."""
    assert f"127.0.0.1:{refused.port}" in refused.trace.final["lastError"]["message"]
    sessions = refused.gw.data_dir / "sessions"
    session_dir = sessions / "default"
    assert mode_of(sessions) == PRIVATE_DIR
    assert mode_of(session_dir) == PRIVATE_DIR
    assert mode_of(session_dir / "neonize.db") == PRIVATE_FILE
    for companion in ("neonize.db-wal", "neonize.db-shm", "neonize.db-journal"):
        if (session_dir / companion).exists():
            assert mode_of(session_dir / companion) == PRIVATE_FILE, companion
    # Only whatsmeow's store lives there; nothing the simulator would have written.
    assert not (session_dir / "simulator.json").exists()


@pytest.mark.parametrize("mark_as_bot", [False, True])
def test_a_session_started_by_the_gateway_runs_with_the_operators_bot_tag_choice(
        make_gateway: Callable[..., Gateway], monkeypatch: pytest.MonkeyPatch,
        mark_as_bot: bool) -> None:
    """The engine badges every message to a person with WhatsApp's "AI" label unless
    NEONIZE_BOT_TAG is off in the environment its process was exec'd with. The gateway
    is started from an environment saying the opposite of ``transport.mark_as_bot``:
    the session process that loaded the engine (and dialled through it) must carry the
    operator's choice in its start environment, which is all the Go side reads."""
    monkeypatch.setenv(BOT_TAG, engine_environment(not mark_as_bot)[BOT_TAG])
    gw = make_gateway(f"http://127.0.0.1:{refused_port()}",
                      {"delay_seconds": 60.0, "first_delay_seconds": 60.0},
                      {"mark_as_bot": mark_as_bot}).start()
    assert gw.connect().data == {"whatsAppConnect": True}
    status = gw.wait_state("RECONNECTING", timeout=30.0)  # one real dial failed
    assert status["lastError"]["code"] == "CONNECT_FAILED", status
    pid = session_entry(gw)["pid"]
    with open(f"/proc/{pid}/maps", encoding="utf-8") as maps:
        assert library_file_name() in maps.read()  # the engine is loaded in that process
    started_with = exec_environment(pid)
    assert started_with[BOT_TAG] == engine_environment(mark_as_bot)[BOT_TAG]
    assert adds_bot_node(started_with[BOT_TAG]) is mark_as_bot
    assert gw.process is not None  # the launcher re-executed itself: same pid, new block
    assert exec_environment(gw.process.pid)[BOT_TAG] == started_with[BOT_TAG]


def test_only_the_session_process_loads_the_engine_though_the_launcher_preloads_its_modules(
        make_gateway: Callable[..., Gateway]) -> None:
    """Issue 17: the launcher preloads the modules neonize imports (never the engine)
    so the sessions share them. A process that loaded the engine must not fork: the
    launcher, the supervisor and the outbox (all forking or forked before any session)
    must not have the engine's library mapped, and the session, forked after the
    preload, loads and runs it (one real dial, refused on loopback)."""
    gw = make_gateway(f"http://127.0.0.1:{refused_port()}",
                      {"delay_seconds": 60.0, "first_delay_seconds": 60.0}).start()
    assert gw.connect().data == {"whatsAppConnect": True}
    status = gw.wait_state("RECONNECTING", timeout=30.0)
    assert status["lastError"]["code"] == "CONNECT_FAILED", status

    def engine_loaded(pid: int) -> bool:
        with open(f"/proc/{pid}/maps", encoding="utf-8") as maps:
            return library_file_name() in maps.read()

    assert engine_loaded(session_entry(gw)["pid"])
    processes = gw.health()["processes"]
    assert gw.process is not None
    others = {"launcher": gw.process.pid, "supervisor": processes["supervisor"],
              "outbox": processes["outbox"]}
    assert {name: engine_loaded(pid) for name, pid in others.items()} == dict.fromkeys(
        others, False)


def test_a_missing_engine_library_fails_the_session_with_engine_unavailable(
        make_gateway: Callable[..., Gateway], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """The gateway runs against a copy of neonize without its native library (first on
    PYTHONPATH): neonize would download one at import; the session refuses instead,
    FAILED with ENGINE_UNAVAILABLE naming the file and the version to reinstall."""
    import importlib.metadata
    import shutil

    spec = importlib.util.find_spec("neonize")
    assert spec is not None and spec.submodule_search_locations
    root = tmp_path / "site"
    shutil.copytree(next(iter(spec.submodule_search_locations)), root / "neonize",
                    ignore=shutil.ignore_patterns(library_file_name(), "__pycache__"))
    repo = Path(__file__).resolve().parents[2]
    monkeypatch.setenv("PYTHONPATH", f"{root}{os.pathsep}{repo}")
    gw = make_gateway(f"http://127.0.0.1:{refused_port()}").start()
    assert gw.connect().data == {"whatsAppConnect": True}
    status = gw.wait_state("FAILED", timeout=30.0)
    error = status["lastError"]
    assert error["code"] == "ENGINE_UNAVAILABLE", error
    assert str(root / "neonize" / library_file_name()) in error["message"]
    version = importlib.metadata.version("neonize")
    assert f"version {version}" in error["message"] and "never downloads" in error["message"]
    assert not (root / "neonize" / library_file_name()).exists()  # nothing was fetched


def test_an_engine_reinstalled_under_the_running_gateway_says_restart_not_reinstall(
        make_gateway: Callable[..., Gateway], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """The gateway runs against a complete copy of neonize (first on PYTHONPATH, with its
    metadata); while it runs, the copy is "reinstalled" as pip does (new metadata
    directory) and left without its library. A new session then cannot load the
    engine: reinstalling is what broke it, so the advice is to restart the gateway."""
    import importlib.metadata
    import shutil

    spec = importlib.util.find_spec("neonize")
    assert spec is not None and spec.submodule_search_locations
    dist = importlib.metadata.distribution("neonize")
    metadata_dir = Path(dist._path)  # type: ignore[attr-defined]
    root = tmp_path / "site"
    shutil.copytree(next(iter(spec.submodule_search_locations)), root / "neonize",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(metadata_dir, root / metadata_dir.name)
    repo = Path(__file__).resolve().parents[2]
    monkeypatch.setenv("PYTHONPATH", f"{root}{os.pathsep}{repo}")
    gw = make_gateway(f"http://127.0.0.1:{refused_port()}").start()
    # pip's install: the package's files replaced, the metadata directory made anew.
    (root / "neonize" / library_file_name()).unlink()
    os.rename(root / metadata_dir.name, root / "old.dist-info")
    shutil.copytree(root / "old.dist-info", root / metadata_dir.name)
    shutil.rmtree(root / "old.dist-info")
    assert gw.connect().data == {"whatsAppConnect": True}
    error = gw.wait_state("FAILED", timeout=30.0)["lastError"]
    assert error["code"] == "ENGINE_UNAVAILABLE", error
    message = error["message"]
    assert "changed under the running gateway" in message and "restart it" in message
    assert message.index("restart it") < message.index("reinstall"), message
