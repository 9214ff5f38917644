"""Third-party modules the engine imports but the gateway never calls: loaded on first use.

Why: importing neonize imports, at its top, link previews (``linkpreview``, which
brings BeautifulSoup and ``requests``) and two HTTP clients (``requests``, ``httpx``)
for media given as a URL. The gateway sends plain ``Message`` objects and hands media
as bytes, so none of them ever runs, yet together they cost each real-engine session
process about 8 MiB of private memory (``tests/perf/bench_memory.py``; issue 17 asks
for at most 30 MiB per session). During the engine's import each of them is a
``DeferredModule``: a placeholder that imports the real module the first time
anything of it is used, so a path of neonize that does use one still works, only
later.

The placeholders are in ``sys.modules`` only while the engine is imported: afterwards
an ``import requests`` anywhere gets the real module, and the engine's references to
the placeholders lead to that same module.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import threading
import types
from collections.abc import Callable, Iterator, Mapping
from typing import Any

# Module -> the names the engine takes from it with ``from module import name`` while
# it is imported (they must not load the module; each becomes a deferred callable).
ENGINE_DEFERRED: Mapping[str, tuple[str, ...]] = {
    "linkpreview": ("link_preview",),  # neonize.client: link previews of sent texts
    "requests": (),  # neonize.utils.iofile: media given as a URL
    "httpx": (),  # neonize.utils.iofile: the same, asynchronously
}

_LOCK = threading.RLock()  # one real import per placeholder, whichever thread asks


class DeferredModule(types.ModuleType):
    """Stands for the module of its name until something of it is used."""

    def __init__(self, name: str, names: tuple[str, ...] = ()) -> None:
        super().__init__(name, f"{name}, imported on first use")
        self.__dict__["_real"] = None
        for attribute in names:
            self.__dict__[attribute] = _deferred_callable(self, attribute)

    def __getattr__(self, name: str) -> Any:
        # Only reached for a name the placeholder lacks, i.e. anything of the module.
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)  # import machinery probing a placeholder
        return getattr(self.load(), name)

    def load(self) -> types.ModuleType:
        """The real module, imported now if it is not yet."""
        with _LOCK:
            real = self.__dict__["_real"]
            if real is None:
                if sys.modules.get(self.__name__) is self:
                    del sys.modules[self.__name__]
                real = importlib.import_module(self.__name__)
                self.__dict__["_real"] = real
            return real


def _deferred_callable(module: DeferredModule, name: str) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(module.load(), name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = f"{module.__name__}.{name}, imported on first call"
    return call


@contextlib.contextmanager
def deferred_imports(modules: Mapping[str, tuple[str, ...]] = ENGINE_DEFERRED
                     ) -> Iterator[list[str]]:
    """While the block runs, ``import`` of any of ``modules`` not yet loaded gives a
    ``DeferredModule``; yields the names deferred. Afterwards the placeholders leave
    ``sys.modules`` (an already loaded module is never replaced)."""
    placed: dict[str, DeferredModule] = {}
    with _LOCK:
        for name, names in modules.items():
            if name not in sys.modules:
                placed[name] = DeferredModule(name, names)
                sys.modules[name] = placed[name]
    try:
        yield sorted(placed)
    finally:
        with _LOCK:
            for name, placeholder in placed.items():
                if sys.modules.get(name) is placeholder:
                    del sys.modules[name]
