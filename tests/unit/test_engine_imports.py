"""``actors.transport.engine_imports``: modules the engine imports but the gateway never
calls stay unloaded until first used (issue 17: about 8 MiB per real-engine session).

Each test writes a small real module into a temporary directory on ``sys.path``; the
module records in a file each time it is executed, so a test sees whether (and how
often) it really ran.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors.transport.engine_imports import ENGINE_DEFERRED, DeferredModule, deferred_imports

NAME = "wagate_deferred_probe"


@pytest.fixture
def probe(tmp_path: Path) -> Iterator[Path]:
    """A module ``NAME`` that appends a line to ``runs.txt`` whenever it is executed."""
    runs = tmp_path / "runs.txt"
    (tmp_path / f"{NAME}.py").write_text(
        "from pathlib import Path\n"
        f"with open({str(runs)!r}, 'a') as f:\n"
        "    f.write('ran\\n')\n"
        "def greet(name):\n"
        "    return 'hello ' + name\n"
        "VALUE = 42\n", encoding="utf-8")
    sys.path.insert(0, str(tmp_path))
    importlib.invalidate_caches()
    try:
        yield runs
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(NAME, None)


def runs_of(runs: Path) -> int:
    return len(runs.read_text().splitlines()) if runs.exists() else 0


def test_an_import_in_the_block_does_not_run_the_module(probe: Path) -> None:
    with deferred_imports({NAME: ()}) as deferred:
        import wagate_deferred_probe as module  # type: ignore[import-not-found]
    assert deferred == [NAME]
    assert isinstance(module, DeferredModule)
    assert runs_of(probe) == 0
    assert NAME not in sys.modules  # the placeholder left with the block


def test_first_use_runs_the_real_module_once_and_later_imports_get_it(probe: Path) -> None:
    with deferred_imports({NAME: ()}):
        import wagate_deferred_probe as module
    assert module.VALUE == 42  # first use: the real module runs now
    assert module.greet("x") == "hello x"
    assert runs_of(probe) == 1
    real = importlib.import_module(NAME)
    assert not isinstance(real, DeferredModule)
    assert module.load() is real
    assert runs_of(probe) == 1


def test_a_name_taken_at_import_is_a_callable_that_loads_on_first_call(probe: Path) -> None:
    with deferred_imports({NAME: ("greet",)}):
        from wagate_deferred_probe import greet
    assert runs_of(probe) == 0
    assert greet("world") == "hello world"
    assert greet("again") == "hello again"
    assert runs_of(probe) == 1


def test_a_module_already_loaded_is_never_replaced(probe: Path) -> None:
    real = importlib.import_module(NAME)
    with deferred_imports({NAME: ()}) as deferred:
        import wagate_deferred_probe as module
    assert deferred == []
    assert module is real
    assert runs_of(probe) == 1


def test_a_placeholder_is_not_taken_for_a_package() -> None:
    placeholder = DeferredModule("wagate_never_imported")
    assert not hasattr(placeholder, "__path__")  # import machinery probes dunders
    assert "wagate_never_imported" not in sys.modules


def test_the_engines_deferred_modules_are_the_ones_the_gateway_never_calls() -> None:
    """A change here is a decision: each module listed must be one no gateway path
    uses through neonize (link previews, media given as a URL)."""
    assert dict(ENGINE_DEFERRED) == {"linkpreview": ("link_preview",), "requests": (),
                                     "httpx": ()}
