"""The supervisor's children by typed key (actors.supervisor.children): pure data."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import actors.supervisor
from actors.supervisor.children import (
    AUDIT,
    OUTBOX,
    WEBHOOKS,
    WORKERS,
    Child,
    ChildKey,
    Children,
)
from actors.supervisor.policy import RestartBudget


def _children() -> Children:
    children = Children()
    children[AUDIT] = Child(object, address="audit-addr", host="leader")
    children[OUTBOX] = Child(object, address="outbox-addr", host="leader")
    children[ChildKey.of_session("a")] = Child(object, address="a-addr", host="leader")
    children[ChildKey.of_session("b")] = Child(object, address="b-addr", host="m1")
    children[ChildKey.of_session("c")] = Child(object, address=None, host="m1")  # restarting
    return children


def test_a_session_key_is_its_id_and_never_a_worker() -> None:
    key = ChildKey.of_session("outbox")  # a session may be called like a worker
    assert key == ChildKey("session", "outbox") and hash(key) == hash(ChildKey("session", "outbox"))
    assert key != OUTBOX and key.is_session and not OUTBOX.is_session
    assert key.name == "outbox" and OUTBOX.name == ""
    assert WORKERS == (AUDIT, OUTBOX, WEBHOOKS)  # the audit log's writer starts first


def test_a_session_id_with_a_colon_stays_whole() -> None:
    key = ChildKey.of_session("shop:eu")
    assert key.name == "shop:eu" and str(key) == "session:shop:eu"
    assert str(AUDIT) == "audit"  # the log's names are those of the string keys before


def test_sessions_are_listed_by_id_without_the_workers() -> None:
    children = _children()
    assert [s for s, _ in children.sessions()] == ["a", "b", "c"]
    assert children.session("b") is children[ChildKey.of_session("b")]
    assert children.session("outbox") is None


def test_a_session_can_leave_while_the_sessions_are_walked() -> None:
    children = _children()
    for session, _ in children.sessions():
        del children[ChildKey.of_session(session)]
    assert list(children) == [AUDIT, OUTBOX]


def test_an_address_finds_its_child_key() -> None:
    children = _children()
    assert children.key_of("b-addr") == ChildKey.of_session("b")
    assert children.key_of("outbox-addr") == OUTBOX
    assert children.key_of("gone") is None
    assert children.address(OUTBOX) == "outbox-addr"
    assert children.address(ChildKey.of_session("nobody")) is None


def test_session_hosts_count_sessions_only() -> None:
    children = _children()
    assert sorted(children.session_hosts()) == ["leader", "m1", "m1"]
    assert sorted(children.session_hosts(but="b")) == ["leader", "m1"]
    assert sorted(children.session_hosts(running_only=True)) == ["leader", "m1"]


def test_placed_on_a_host_are_its_running_sessions() -> None:
    children = _children()
    assert children.placed_on("m1") == (("b", "b-addr"),)  # c has no process now
    assert children.placed_on("leader") == (("a", "a-addr"),)  # not the workers
    assert children.placed_on("elsewhere") == ()


def test_a_leader_that_steps_down_stops_the_running_sessions_on_every_host() -> None:
    """Its own and its members' processes; not one restarting (no process to stop), not
    one already on its way out (its exit is handled as it was asked)."""
    children = _children()
    children[ChildKey.of_session("d")] = Child(object, address="d-addr", host="m1",
                                               retiring=True)
    assert [(s, c.address) for s, c in children.running_sessions()] == [
        ("a", "a-addr"), ("b", "b-addr")]


def test_a_key_pickles_as_itself() -> None:
    """A restart's wakeup payload carries a key: it must come back equal."""
    key = ChildKey.of_session("a")
    assert pickle.loads(pickle.dumps(key)) == key


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings (they may quote the log form)."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def test_no_supervisor_module_spells_a_child_key_as_a_string() -> None:
    """Keys are ChildKey: a "session:" literal would be a key built or sliced by hand."""
    package = Path(actors.supervisor.__file__).parent
    offenders = []
    for path in sorted(package.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docs = _docstrings(tree)
        offenders += [f"{path.name}:{node.lineno}" for node in ast.walk(tree)
                      if isinstance(node, ast.Constant) and isinstance(node.value, str)
                      and node.value.startswith("session:") and id(node) not in docs]
    assert offenders == []


def test_a_burst_of_fenced_stops_spends_no_restart_budget() -> None:
    """Defect H3: a 2.6 s stall of the leader made members fence their sessions, and
    each exit counted as a crash; more than the budget (5 in 300 s) in the window made
    the session FAILED for good. The fence notice takes them back, whichever of it and
    the exit the supervisor hears first."""
    child = Child(object, budget=RestartBudget(5, 300.0), host="m1")
    for n in range(12):
        address = f"proc-{n}"
        child.address, child.retiring, child.respawn = address, False, False
        if n % 2:  # the notice first: the exit is then a planned restart
            assert child.fence(address) == "retire"
            assert child.retiring and child.respawn
        else:  # the exit first: it counted as a crash ...
            child.address, child.failures = None, child.failures + 1
            child.crashed = (address, 100.0 + n)
            assert child.budget is not None and child.budget.record(100.0 + n)
            assert child.fence(address) == "pardon"  # ... and is taken back
    assert child.budget is not None and child.budget.crashes(200.0) == 0
    assert child.failures == 0


def test_a_fence_notice_for_another_process_changes_nothing() -> None:
    child = Child(object, address="new", budget=RestartBudget(1, 60.0), host="m1")
    assert child.fence("old") is None  # moved already (the leader lost the host)
    assert child.fence(None) is None
    assert not child.retiring and not child.respawn
    child.crashed = ("old", 5.0)
    assert child.budget is not None and child.budget.record(5.0)
    assert not child.budget.record(6.0)  # a real crash stays counted
    assert child.fence("old") == "pardon" and child.budget.crashes(7.0) == 1
    assert child.fence("old") is None  # only once
    retiring = Child(object, address="p", retiring=True)  # a logout: stays a plain exit
    assert retiring.fence("p") == "retire" and not retiring.respawn


def test_a_host_check_names_a_process_by_pid_current_or_crashed() -> None:
    """Issue 22 item 5 in lease mode: a host's lease check knows its processes by pid;
    the child maps a pid on a host to the process it belongs to, the running one or
    the one whose exit counted as a crash, and to nothing else."""
    child = Child(object, address="proc-1", budget=RestartBudget(2, 3600.0), host="alpha")
    child.pid = ("alpha", 101)
    assert child.process_at("alpha", 101) == "proc-1"
    assert child.process_at("beta", 101) is None  # a pid of another host
    assert child.process_at("alpha", 102) is None
    # its exit came first and counted as a crash
    child.address, child.crashed, child.crashed_pid = None, ("proc-1", 10.0), ("alpha", 101)
    assert child.process_at("alpha", 101) == "proc-1"
    assert child.fence(child.process_at("alpha", 101)) == "pardon"
    assert child.crashed is None and child.crashed_pid is None
    assert child.process_at("alpha", 101) is None  # taken back once only


def test_more_lease_fences_than_the_budget_never_fail_a_session() -> None:
    """Three stops by the host's lease check with a budget of two, in either order of
    notice and exit: none spends the budget."""
    child = Child(object, budget=RestartBudget(2, 3600.0), host="alpha")
    for n in range(6):
        address, pid = f"proc-{n}", 100 + n
        child.address, child.pid, child.retiring, child.respawn = address, ("alpha", pid), \
            False, False
        if n % 2:  # the notice first
            assert child.fence(child.process_at("alpha", pid)) == "retire"
        else:  # the exit first: a crash, until the notice takes it back
            child.address, child.failures = None, child.failures + 1
            child.crashed, child.crashed_pid = (address, 10.0 + n), child.pid
            assert child.budget is not None and child.budget.record(10.0 + n)
            assert child.fence(child.process_at("alpha", pid)) == "pardon"
    assert child.budget is not None and child.budget.crashes(20.0) == 0
