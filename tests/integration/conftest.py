from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import Gateway
from tests.pg import PgCluster


@pytest.fixture(autouse=True)
def fresh_outbox_store(request: pytest.FixtureRequest) -> Iterator[None]:
    """In multi-host mode the outbox's store (schema ``wagate_outbox``) and the
    leaders' session registry (``wagate_sessions``) are in the lease database, and a
    module's tests share one PostgreSQL cluster: each test leaves it without the
    messages it accepted and the sessions it made, so the next one's leader neither
    sends nor starts them. Set up first, so it runs after the gateways stopped."""
    yield
    for value in request.node.funcargs.values():
        if isinstance(value, PgCluster) and value.process is not None:
            import psycopg

            with contextlib.suppress(psycopg.OperationalError), \
                    psycopg.connect(value.dsn(), autocommit=True, connect_timeout=5) as conn:
                conn.execute("DROP SCHEMA IF EXISTS wagate_outbox CASCADE")
                conn.execute("DROP TABLE IF EXISTS wagate_sessions, wagate_session_epoch")


@pytest.fixture
def make_gateway(tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    """Build (not start) gateways in this test's temp dir.

    At the end every gateway still running is stopped gracefully, which must succeed
    (exit code 0, no process group left); then anything still alive is killed and
    fails the test. A test that failed half-way thus still gets a clean teardown,
    and a test need not stop its gateways itself unless the stop is what it checks.
    """
    made: list[Gateway] = []

    def make(overrides: dict[str, Any] | None = None, name: str = "gw",
             key_file: Path | None = None, code_dir: Path | None = None,
             **where: Any) -> Gateway:
        root = tmp_path / f"{name}{len(made)}"
        root.mkdir()
        gateway = Gateway(root, overrides, key_file=key_file, code_dir=code_dir, **where)
        made.append(gateway)
        return gateway

    yield make
    problems = []
    for g in made:
        try:
            g.stop()
        except AssertionError as exc:
            problems.append(str(exc))
    problems += [f"left behind: {item}" for g in made for item in g.cleanup()]
    assert not problems, "\n".join(problems)


@pytest.fixture
def gateway(make_gateway: Callable[..., Gateway]) -> Gateway:
    """A running gateway with default test timings; stopped (and checked) at the end."""
    return make_gateway().start()


@pytest.fixture(scope="module")
def linked_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One running gateway per module whose "default" session is linked.

    Starting a gateway costs seconds, so a module's checks that leave no lasting
    state behind (input validation, never-linked sessions, one-off sends) share it.
    Tests that change a session's state or the limits must use ``make_gateway``.
    The same stop and leak checks as the per-test fixtures apply.
    """
    gw = Gateway(tmp_path_factory.mktemp("linked"))
    try:
        gw.start()
        gw.link()
        yield gw
        gw.stop()
    finally:
        leaked = gw.cleanup()
    assert not leaked, f"processes left behind: {leaked}"
