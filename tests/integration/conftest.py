from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import Gateway


@pytest.fixture
def make_gateway(tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    """Build (not start) gateways in this test's temp dir; all are cleaned up and any
    process still alive at the end fails the test."""
    made: list[Gateway] = []

    def make(overrides: dict[str, Any] | None = None, name: str = "gw") -> Gateway:
        root = tmp_path / f"{name}{len(made)}"
        root.mkdir()
        gateway = Gateway(root, overrides)
        made.append(gateway)
        return gateway

    yield make
    leaked = [item for g in made for item in g.cleanup()]
    assert not leaked, f"processes left behind: {leaked}"


@pytest.fixture
def gateway(make_gateway: Callable[..., Gateway]) -> Iterator[Gateway]:
    """A running gateway with default test timings; stopped (and checked) at the end."""
    gw = make_gateway().start()
    yield gw
    gw.stop()
