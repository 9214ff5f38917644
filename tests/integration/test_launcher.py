"""The launcher (``wagate serve``) and the processes it owns: it signals only its own,
a stop signal at any moment of start-up leaves nothing running, and processes that
need no secret get none.

A recorded pid or process-group id proves nothing about the process that has it now
(a reboot, a pid wrap, a state file copied from elsewhere or edited by someone who
can write ``data_dir``); these tests put a stranger's ids into the launcher's state
file and check that the stranger survives.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from actors.system import port_listening
from gateway.cli.ownership import owned_processes
from tests.integration.harness import Gateway, free_port, wait_for


def processes_using(directory: Path) -> set[int]:
    """Live processes (not this one) with a file under ``directory`` open: every actor
    process writes its log there and holds the stores lock, the launcher too."""
    root = str(directory.resolve())
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{entry}/fd/{fd}")
            except OSError:
                continue
            if target == root or target.startswith(root + "/"):
                found.add(int(entry))
                break
    return found


def kill_if_using(pid: int, directory: Path) -> None:
    """SIGKILL ``pid`` if it (still) uses ``directory``: through a pidfd opened before
    the check, so a pid reused meanwhile gets nothing."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        if pid in processes_using(directory):
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    finally:
        os.close(pidfd)


def start_ticks(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rfind(")") + 2:].split()[19])


def write_state(gw: Gateway, state: dict[str, object]) -> None:
    (gw.data_dir / "run" / "gateway.json").write_text(json.dumps(state), encoding="utf-8")


def name_stranger(state: dict[str, object], stranger: int) -> dict[str, object]:
    """Every process id the state file records now names ``stranger`` (and every start
    time is the stranger's): what a pid wrap, a reboot or a hostile edit can produce."""
    ticks = start_ticks(stranger)
    named = dict(state)
    for key in state:
        if key == "launcher" or key.endswith(("_pid", "_pgid")):
            named[key] = stranger
        elif key.endswith("_start"):
            named[key] = ticks
    return named


@pytest.fixture
def stranger() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start processes that are not the gateway's (each in a session of its own, as a
    daemon would be); each must still be running at the end of the test."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*argv: str) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(list(argv or ("sleep", "600")), start_new_session=True,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        started.append(process)
        return process

    yield start
    survived = [p.poll() is None for p in started]
    for process in started:
        process.kill()  # our own unreaped child: its pid cannot have been reused
        process.wait(10)
    assert all(survived), "the gateway signalled a process that is not its own"


def test_a_start_never_signals_a_process_that_only_has_a_recorded_id(
        make_gateway: Callable[..., Gateway],
        stranger: Callable[..., subprocess.Popen[bytes]]) -> None:
    """After a power cut the state file names process groups that no longer exist; by
    the next start those ids (and even the start times) may belong to anything. The
    start must leave such a process alone, and so must the stop."""
    gw = make_gateway().start()
    gw.kill_everything()
    state = gw.run_state()
    assert state is not None
    other = stranger()
    write_state(gw, name_stranger(state, other.pid))

    gw.start()
    assert other.poll() is None, "the start signalled a process that only had a recorded id"
    gw.stop()
    assert other.poll() is None


def test_a_recorded_launcher_id_now_used_by_another_program_does_not_block_the_start(
        make_gateway: Callable[..., Gateway],
        stranger: Callable[..., subprocess.Popen[bytes]]) -> None:
    """A dead launcher's pid, reused by some program whose command line happens to say
    "gateway", is not a running wagate: the start goes ahead (and leaves it alone)."""
    gw = make_gateway().start()
    gw.kill_everything()
    state = gw.run_state()
    assert state is not None
    other = stranger(sys.executable, "-c", "import time; time.sleep(600)", "gateway")
    write_state(gw, {**state, "launcher": other.pid})

    gw.start()
    assert other.poll() is None


def test_a_state_file_from_another_data_dir_touches_nothing_of_that_gateway(
        make_gateway: Callable[..., Gateway]) -> None:
    """A state file copied with a backup of another gateway's data_dir names that
    gateway's live processes: a start on this data_dir must not stop them."""
    first = make_gateway().start()
    state = first.run_state()
    assert state is not None
    first.kill_launcher()  # its actor and web processes run on, unowned
    orphans = processes_using(first.data_dir)
    assert orphans

    second = make_gateway()
    (second.data_dir / "run").mkdir(parents=True)
    write_state(second, state)
    second.start()
    assert orphans <= processes_using(first.data_dir), "another gateway's processes were stopped"
    second.stop()
    assert orphans <= processes_using(first.data_dir)

    first.start()  # its own data_dir: now they are swept
    assert not orphans & processes_using(first.data_dir)


def admin_port_listens(gw: Gateway) -> bool:
    return port_listening(gw.admin_port)


def http_port_listens(gw: Gateway) -> bool:
    return port_listening(gw.port)


@pytest.mark.parametrize(("signum", "moment"), [
    (signal.SIGTERM, admin_port_listens),
    (signal.SIGINT, admin_port_listens),
    (signal.SIGTERM, http_port_listens),
], ids=["sigterm-admin-port", "sigint-admin-port", "sigterm-http-port"])
def test_a_stop_signal_during_start_up_leaves_nothing_running(
        make_gateway: Callable[..., Gateway], signum: int,
        moment: Callable[[Gateway], bool]) -> None:
    """SIGTERM (systemd stopping a unit that is still starting) or Ctrl-C at any moment
    of start-up: the launcher stops everything it started so far and exits with 0;
    nothing keeps the ports or data_dir, and the next start works."""
    gw = make_gateway()
    launcher = gw.launch()
    try:
        wait_for(lambda: moment(gw) or launcher.poll() is not None, 60, 0.005,
                 f"{moment.__name__} during start-up")
        assert launcher.poll() is None, gw.log_tail()
        launcher.send_signal(signum)
        code = launcher.wait(60)
        gw.process = None
        wait_for(lambda: not processes_using(gw.data_dir), 15,
                 message="no process left that uses data_dir")
    finally:  # what a launcher that failed this test left: it uses this test's data_dir
        for pid in processes_using(gw.data_dir) - {launcher.pid}:
            kill_if_using(pid, gw.data_dir)
    assert not port_listening(gw.admin_port) and not port_listening(gw.port)
    assert code == 0, gw.log_tail()
    assert gw.run_state() is None

    gw.start()
    gw.stop()


def test_every_process_of_the_gateway_holds_the_mark_of_its_run(
        make_gateway: Callable[..., Gateway]) -> None:
    """What the launcher may stop is exactly what holds its run's mark: every process
    of the actor system (sessions included) and of the web server (workers included)
    must hold it, or a crash would leave one that no start can stop."""
    gw = make_gateway({"http": {"workers": 2}}).start()
    gw.link()
    mark = gw.mark()
    assert mark is not None
    session = gw.session_pid()
    assert gw.process is not None
    launcher = gw.process.pid  # holds it too (it made it): its children inherit it

    def same() -> bool:  # read together: a short-lived helper may come and go meanwhile
        members = set(gw.actor_pids())
        return session in members and set(owned_processes(mark)) == members | {launcher}

    wait_for(same, 30, message="the run's marked processes to be its actor and web ones")


def environment_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0")
                if "=" in item)


def web_processes(gw: Gateway) -> set[int]:
    from tests.integration.harness import group_members

    state = gw.run_state()
    assert state is not None
    return set(group_members(int(state["web_pgid"])))


def test_the_web_server_gets_neither_the_storage_key_nor_transport_passwords(
        make_gateway: Callable[..., Gateway], monkeypatch: pytest.MonkeyPatch) -> None:
    """The storage key in the launcher's environment reaches the actor processes (the
    sessions need it), never the web server or its workers; nor do the passwords in
    the WhatsApp proxy's URL and the engine's Postgres DSN, which only sessions use."""
    gw = make_gateway({"http": {"workers": 2},
                       "transport": {"proxy": "socks5://wagate:proxy-pass-7d1@127.0.0.1:9",
                                     "session_store": "postgres://w:pg-pass-7d1@127.0.0.1/w"}})
    key_text = gw.key_file.read_text().strip()
    monkeypatch.setenv("WAGATE_STORE_KEY", key_text)
    gw.key_file.write_text("not a key\n")  # so the sessions must use the variable
    gw.start()
    gw.link()  # the sessions opened their store with the key from the environment

    web = wait_for(lambda: len(found := web_processes(gw)) >= 3 and found, 30,
                   message="gunicorn's master and both workers")
    for pid in web:
        environ = environment_of(pid)
        assert "WAGATE_STORE_KEY" not in environ, pid
        assert not any(key_text in value for value in environ.values()), pid
        assert not any("pass-7d1" in value for value in environ.values()), pid


def test_status_never_takes_a_crashed_launchers_port_for_its_gateway(
        make_gateway: Callable[..., Gateway]) -> None:
    """The admin port in a state file a crashed launcher left may belong to another
    gateway by now: `wagate status` for this data_dir must not report that one."""
    first = make_gateway({"actors": {"admin_port": free_port()}})  # the config's: unused
    first.start()
    first.kill_everything()
    assert first.run_state() is not None  # left behind, naming first.admin_port

    other = make_gateway()
    other.admin_port = first.admin_port  # another gateway now has that port
    other.start()
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "status", "--json",
                           "--config", str(first.config_path)], capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 1, done.stdout
    assert "no gateway is running" in done.stderr


def test_a_sigterm_to_the_actor_system_still_ends_it_and_the_launcher(
        make_gateway: Callable[..., Gateway]) -> None:
    """The Admin is forked from the launcher after its stop handler is in place: it must
    not inherit "only note the request". A SIGTERM to it (an operator, the OOM
    killer's warning, a host agent) ends it; the launcher then stops the rest and
    exits 1 for a restart."""
    gw = make_gateway().start()
    state = gw.run_state()
    assert state is not None
    gw.signal_process(int(state["admin_pid"]), signal.SIGTERM)
    assert gw.process is not None
    assert gw.process.wait(60) == 1, gw.log_tail()
    gw.process = None
    assert "the actor system died" in gw.log_tail()
    wait_for(lambda: not processes_using(gw.data_dir), 15,
             message="no process left that uses data_dir")


def zombie_children(pid: int) -> list[int]:
    """Exited, unreaped children (``<defunct>``, state Z) of process ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] == "Z" and int(fields[1]) == pid:
            found.append(int(entry))
    return found


def test_the_launcher_leaves_no_defunct_child_while_it_serves(gateway: Gateway) -> None:
    """Thespian's Admin starter (a child of the launcher that forks the Admin and
    exits) stayed ``<defunct>`` under the launcher for the gateway's whole life."""
    state = gateway.run_state()
    assert state is not None and gateway.process is not None
    launcher = gateway.process.pid
    assert state["launcher"] == launcher
    wait_for(lambda: not zombie_children(launcher), 10, 0.1,
             message=f"no <defunct> child under the launcher (pid {launcher})")
    assert gateway.status()["state"] == "NEW"  # and it still serves
