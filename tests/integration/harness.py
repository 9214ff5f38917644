"""A real gateway for tests: ``wagate serve`` as a subprocess on free loopback ports.

Every process the gateway starts is recorded (launcher, actor process group, web
process group); ``stop()`` asserts that a graceful stop leaves none of them behind,
and the fixture's finaliser kills and *fails* on anything that survived.

Whatever ends the test run, what the harness started stops: a SIGTERM or SIGHUP to
pytest becomes a KeyboardInterrupt (pytest then tears every fixture down, as after
Ctrl-C), and every launcher dies with pytest (``PR_SET_PDEATHSIG``: it gets SIGTERM,
its own graceful stop, even when pytest is SIGKILLed).
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import itertools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from gateway.auth.tokens import TokenEntry, TokenFile, new_token, token_hash
from gateway.cli.ownership import Mark, owned_processes, signal_owned, sweep_owned, wait_owned_gone
from gateway.cli.run_state import read_record
from gateway.core.networks import parse_networks

# Shrunk delays: tests wait on conditions, never on the spec's 30 s / 60 s.
FAST = {
    "reconnect": {"attempts": 5, "delay_seconds": 0.3, "connect_timeout_seconds": 5.0},
    "qr": {"first_seconds": 30.0, "next_seconds": 10.0, "codes": 3},
    "simulator": {"poll_interval_seconds": 0.02},
    "supervisor": {"restart_backoff_seconds": [0.2, 0.5, 1.0]},
    "http": {"workers": 1, "threads": 8},
    "messages": {"send_timeout_seconds": 5.0},
    "logging": {"level": "INFO"},
}


PR_SET_PDEATHSIG = 1  # linux/prctl.h
_previous_handlers: dict[int, Any] = {}


# ---- process groups (to look at, never to signal): what a test checks is gone


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group, read from /proc."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...; comm may contain spaces and parentheses
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def group_alive(pgid: int) -> bool:
    return bool(group_members(pgid))


def _stop_the_run(signum: int, _frame: Any) -> None:
    """A SIGTERM/SIGHUP to pytest: stop the run as Ctrl-C does, so that every fixture's
    teardown (gateways, browsers) runs. A second one acts as it would have."""
    for number, handler in _previous_handlers.items():
        signal.signal(number, handler)
    raise KeyboardInterrupt(f"pytest got signal {signal.Signals(signum).name}")


def stop_on_termination() -> None:
    """Install ``_stop_the_run`` for SIGTERM and SIGHUP (once, from the main thread).

    Python's default for SIGTERM ends the process at once, without teardown: the
    gateways a test started kept running after ``kill <pytest pid>``."""
    if _previous_handlers or threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGHUP):
        _previous_handlers[signum] = signal.signal(signum, _stop_the_run)


def _die_with_parent(parent: int) -> Callable[[], None]:
    """For ``preexec_fn``: the child gets SIGTERM when the test process dies, however it
    dies (a SIGKILL included). If the parent died before the call, the child exits.
    The kernel sends it when the *thread* that started the child ends: gateways are
    started from the main thread (``launch`` refuses any other)."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork

    def arm() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)
    return arm


# The gateway's default ports are never handed out: a command run without --config
# must not find a test's gateway there (nor a test a gateway someone runs by hand).
_HANDED_OUT: set[int] = {8080, 19500}


def _ephemeral_low() -> int:
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text(encoding="utf-8")
        return int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range: a port the kernel may
    also hand out as the local end of an outgoing connection (the actors connect to
    each other all the time) can be taken by one between this call and the gateway's
    bind ("Address already in use" on a restart). Never the same port twice per run."""
    low = max(1025, min(_ephemeral_low(), 65536) - 1)
    for _ in range(1000):
        port = random.randint(min(10000, low - 1), low)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError("no free loopback port below the ephemeral range")


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05,
             message: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {message} (last: {last!r})")


def expect_error(result: GraphQLResult, code: str, *fragments: str) -> dict[str, Any]:
    """Assert that ``result`` failed with exactly one error of ``code`` whose message
    names every one of ``fragments`` (case-insensitive); returns that error."""
    assert result.errors, f"expected {code}, got {result!r}"
    # Every root field is non-null, so a failed one nulls ``data`` as a whole: a client
    # can never mistake a failure for ``false`` (or, worse, ``true``).
    assert result.data is None, result
    error = result.error
    assert error.get("extensions", {}).get("code") == code, result
    message = error.get("message", "")
    missing = [f for f in fragments if f.lower() not in message.lower()]
    assert not missing, f"message {message!r} lacks {missing}"
    return error


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = {k: dict(v) for k, v in base.items()}
    for section, values in extra.items():
        merged.setdefault(section, {}).update(values)
    return merged


def _toml(config: dict[str, dict[str, Any]]) -> str:
    lines = []
    for section, values in config.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


class GraphQLResult:
    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body
        self.data = body.get("data")
        self.errors = body.get("errors") or []

    @property
    def error_code(self) -> str | None:
        return self.errors[0].get("extensions", {}).get("code") if self.errors else None

    @property
    def error(self) -> dict[str, Any]:
        """The only error of a failed operation (a failed single field has exactly one)."""
        assert len(self.errors) == 1, self
        return self.errors[0]

    def __repr__(self) -> str:
        return f"GraphQLResult({self.body!r})"


class Gateway:
    def __init__(self, root: Path, overrides: dict[str, Any] | None = None,
                 engine: str = "simulator", key_file: Path | None = None,
                 code_dir: Path | None = None, prefix: tuple[str, ...] = (),
                 host: str = "127.0.0.1", env: dict[str, str] | None = None) -> None:
        """``engine`` is forced over ``overrides``: the simulator unless a test asks
        for the real engine (which must then get a loopback ``transport.proxy``).
        ``key_file``: another gateway's storage key (the hosts of a cluster share the
        session stores, so they share the key); by default a new one. ``code_dir``:
        run the wagate found there (another version) instead of this one. ``prefix``:
        a command that runs ``wagate serve`` elsewhere, e.g. ``ip netns exec NAME``
        (tests/netns.py), where its web server listens on ``host``. ``env``: variables
        added to the launcher's environment, which every gateway process inherits
        (e.g. libfaketime's, tests/integration/test_clock_steps.py)."""
        self.root = root
        self.env = dict(env or {})
        self.code_dir = code_dir
        self.prefix = prefix
        self._names = itertools.count(1)
        self.data_dir = root / "data"
        self.port = free_port()
        self.admin_port = free_port()
        self.config_path = root / "gateway.toml"
        # Like production: API tokens in a token file, the storage key outside data_dir.
        self.tokens_file = root / "tokens.toml"
        self.key_file = key_file or root / "store.key"
        if key_file is None:
            self.key_file.write_bytes(base64.urlsafe_b64encode(os.urandom(32)) + b"\n")
            self.key_file.chmod(0o600)
        config = _merge({"auth": {"tokens_file": str(self.tokens_file)},
                         "encryption": {"key_file": str(self.key_file)}}, FAST)
        config = _merge(config, overrides or {})
        if host != "127.0.0.1":
            config = _merge(config, {"http": {"host": host}})
        config = _merge(config, {"storage": {"data_dir": str(self.data_dir)},
                                 "transport": {"engine": engine}})
        self.config_path.write_text(_toml(config), encoding="utf-8")
        self.process: subprocess.Popen[bytes] | None = None
        self.groups: set[int] = set()
        self.marks: list[Mark] = []  # of every run seen: the cleanup sweeps by them
        self.launchers: list[subprocess.Popen[bytes]] = []
        self.url = f"http://{host}:{self.port}"
        self.token = self.make_token("admin", name="harness-admin")
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {self.token}"

    def make_token(self, role: str, sessions: list[str] | None = None,
                   networks: list[str] | None = None, expires: float | None = None,
                   name: str | None = None) -> str:
        """Add an API token to this gateway's token file (a running gateway accepts it
        from the next request on) and return it."""
        token = new_token()
        TokenFile(self.tokens_file).add(TokenEntry(
            name=name or f"{role}-{next(self._names)}", role=role, hash=token_hash(token),
            networks=parse_networks(networks or [], "test"),
            sessions=frozenset(sessions) if sessions is not None else None,
            expires=expires))
        return token

    def revoke_token(self, name: str) -> None:
        TokenFile(self.tokens_file).revoke(name, time.time())

    # ---- lifecycle ------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> Gateway:
        """Start ``wagate serve`` (again, after ``stop`` or ``kill_launcher``: same ports,
        same data dir) and wait until *this* launcher's gateway is ready."""
        self.launch()
        state = wait_for(self._ready, timeout, 0.1, f"gateway on port {self.port} to be ready")
        self.groups.update(int(state[k]) for k in ("actor_pgid", "web_pgid"))
        self.mark()
        return self

    def start_refused(self, timeout: float = 60.0) -> tuple[int, str]:
        """Start ``wagate serve`` expecting it to give up by itself (at start, or soon
        after); returns its exit code and its log (serve.log and actors.log)."""
        process = self.launch()
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"wagate serve still runs after {timeout} s:\n"
                                 + self.log_tail()) from None
        self.process = None
        state = self.run_state() or {}
        self.groups.update(int(state[k]) for k in ("actor_pgid", "web_pgid") if k in state)
        return code, self.log_tail(200)

    def launch(self) -> subprocess.Popen[bytes]:
        """Start ``wagate serve`` without waiting for it (``start`` waits)."""
        assert threading.current_thread() is threading.main_thread(), \
            "start gateways from the main thread: a launcher dies with the thread that started it"
        stop_on_termination()
        log = open(self.root / "serve.log", "ab")  # noqa: SIM115 (kept for the process)
        self.process = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", "gateway.cli", "serve",
             "--config", str(self.config_path), "--port", str(self.port),
             "--admin-port", str(self.admin_port)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.code_dir,
            env={**os.environ, **self.env} if self.env else None,
            preexec_fn=_die_with_parent(os.getpid()))
        log.close()
        self.launchers.append(self.process)
        return self.process

    def run_state(self) -> dict[str, Any] | None:
        """``data_dir/run/gateway.json``: the launcher's pid and its process groups."""
        try:
            return json.loads((self.data_dir / "run" / "gateway.json").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def _ready(self) -> dict[str, Any] | None:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"wagate serve exited with {self.process.returncode}:\n"
                                 + self.log_tail())
        # After kill_launcher() the orphans of the old launcher still answer /readyz until
        # the new one sweeps them: only a state file written by *this* launcher counts.
        state = self.run_state()
        if (self.process is None or state is None or state.get("launcher") != self.process.pid
                or "web_pgid" not in state):
            return None
        try:
            # Not on the pooled session: a refused connection's traceback keeps a socket
            # alive in a reference cycle, and any connection still open to gunicorn
            # makes its graceful stop linger (STOP_KEEPALIVE_LINGER, 2 s).
            ready = requests.get(self.url + "/readyz", timeout=2,
                                 headers={"Connection": "close"}).status_code == 200
        except requests.RequestException:
            return None
        return state if ready else None

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful stop (SIGTERM); asserts that no process of the gateway survives and
        that the launcher exits with 0."""
        if self.process is None:
            return
        self.http.close()  # idle keep-alive connections would delay gunicorn's stop
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError("wagate serve did not stop within "
                                 f"{timeout} s:\n{self.log_tail()}") from None
        self.process = None
        survivors = [g for g in self.groups if group_alive(g)]
        assert not survivors, f"process groups left running after stop: {survivors}"
        assert code == 0, f"wagate serve exited with {code}:\n{self.log_tail()}"

    def kill_launcher(self) -> None:
        """SIGKILL the launcher only: its actor and web processes are left behind."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)
        self.process = None

    def mark(self) -> Mark | None:
        """The mark of the current run (every process of it holds it), remembered for
        the cleanup; None when no run is recorded."""
        record = read_record(self.data_dir)
        if record is None:
            return None
        if record.mark not in self.marks:
            self.marks.append(record.mark)
        return record.mark

    def signal_process(self, pid: int, signum: int) -> None:
        """Send ``signum`` to ``pid``, which must be a process of the current run (never
        to an id alone: the process may have been replaced by then)."""
        mark = self.mark()
        assert mark is not None, "no gateway run is recorded"
        assert signal_owned(mark, pid, signum), f"pid {pid} is no process of this gateway"

    def kill_processes(self, pgid: int | None = None) -> None:
        """SIGKILL every process of the current run (of process group ``pgid`` only,
        when given) but the launcher, and wait until they are gone."""
        mark = self.mark()
        assert mark is not None, "no gateway run is recorded"
        for pid in owned_processes(mark, pgid):
            signal_owned(mark, pid, signal.SIGKILL)
        assert wait_owned_gone(mark, 10, pgid), "processes of the gateway survived SIGKILL"

    def kill_everything(self) -> None:
        """SIGKILL the launcher and every process of its run, as a host that loses
        power would (nothing gets to say goodbye); waits until all are gone."""
        if self.process is not None:
            self.process.kill()  # our own child, not yet reaped
            self.process.wait(10)
            self.process = None
        self.kill_processes()

    def cleanup(self) -> list[str]:
        """Finaliser: kill whatever is still running; returns what had to be killed."""
        leaked = []
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            leaked.append(f"launcher {self.process.pid}")
        for launcher in self.launchers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                launcher.wait(10)
        self.mark()
        for mark in self.marks:
            outcome = sweep_owned(mark, settle=0.5, grace=3)
            if outcome != "clean":
                leaked.append(f"processes of run {mark.path}: {outcome}")
        self.http.close()
        return leaked

    def log_tail(self, lines: int = 40) -> str:
        text = ""
        for name in ("serve.log", "data/logs/actors.log"):
            path = self.root / name
            if path.exists():
                text += f"--- {name}\n" + "\n".join(
                    path.read_text(errors="replace").splitlines()[-lines:]) + "\n"
        return text

    # ---- API ------------------------------------------------------------------------------

    def post_graphql(self, body: Any, timeout: float = 30.0, **kwargs: Any) -> requests.Response:
        """POST ``body`` (as JSON) to /graphql and return the raw response.

        Every response is checked for a leaked stack trace: whatever went wrong, a
        client must never see one (README: The API, Error codes).
        """
        response = self.http.post(self.url + "/graphql", json=body, timeout=timeout, **kwargs)
        assert "Traceback" not in response.text, response.text
        return response

    def gql(self, query: str, variables: dict[str, Any] | None = None,
            timeout: float = 30.0) -> GraphQLResult:
        response = self.post_graphql({"query": query, "variables": variables or {}}, timeout)
        assert response.status_code == 200, response.text
        return GraphQLResult(response.json())

    def status(self, session: str = "default") -> dict[str, Any]:
        result = self.gql("query($s: String) { whatsAppStatus(session: $s) { connected state "
                          "qrCode qrCodeSvg qrCodeRaw qrExpiresAt phoneNumber reconnectAttempt "
                          "lastError { code message } } }", {"s": session})
        assert not result.errors, result
        return result.data["whatsAppStatus"]

    def wait_state(self, state: str, session: str = "default", timeout: float = 15.0
                   ) -> dict[str, Any]:
        return wait_for(lambda: (s := self.status(session))["state"] == state and s, timeout,
                        message=f"session {session} to be {state}")

    def connect(self, session: str = "default") -> GraphQLResult:
        return self.gql("mutation($s: String) { whatsAppConnect(session: $s) }", {"s": session})

    def send(self, phone: str, message: str, session: str = "default") -> GraphQLResult:
        return self.gql(
            "mutation($p: String!, $m: String!, $s: String) { "
            "sendWhatsAppNotification(phoneNumber: $p, message: $m, session: $s) }",
            {"p": phone, "m": message, "s": session})

    def disconnect(self, session: str = "default", keep_session: bool = False
                   ) -> GraphQLResult:
        return self.gql("mutation($s: String, $k: Boolean) { "
                        "whatsAppDisconnect(session: $s, keepSession: $k) }",
                        {"s": session, "k": keep_session})

    def send_test(self, phone: str, session: str = "default") -> GraphQLResult:
        return self.gql("mutation($p: String!, $s: String) { "
                        "testWhatsAppConnection(phoneNumber: $p, session: $s) }",
                        {"p": phone, "s": session})

    def credentials_path(self, session: str = "default") -> Path:
        """The simulated client's stored credentials (what a restart resumes from),
        encrypted with ``key_file`` unless a test configured no key."""
        return self.data_dir / "sessions" / session / "simulator.json"

    def link(self, session: str = "default") -> dict[str, Any]:
        """Connect, wait for a QR code, scan it with the simulated phone, wait connected."""
        assert not self.connect(session).errors
        self.wait_state("QR_PENDING", session)
        self.sim("scan", "--session", session)
        return self.wait_state("CONNECTED", session)

    def sim(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "sim", *args, "--config", str(self.config_path)],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        if check:
            assert done.returncode == 0, done.stderr
        return done

    def inbox(self) -> list[dict[str, Any]]:
        return json.loads(self.sim("inbox", "--json").stdout)

    def health(self) -> dict[str, Any]:
        return self.http.get(self.url + "/admin/health", timeout=10).json()

    def actor_pids(self) -> list[int]:

        return [pid for g in self.groups for pid in group_members(g)]

    def session_pid(self, session: str = "default") -> int:
        for entry in self.health()["sessions"]:
            if entry["session"] == session and entry["pid"]:
                return int(entry["pid"])
        raise AssertionError(f"no process of session {session} in /admin/health")
