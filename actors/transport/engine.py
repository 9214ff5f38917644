"""What the real engine's native library reads before any of our code runs, checked.

The engine (neonize) is a Go library loaded with ctypes, and two of its defaults are
decided outside Python's reach (docs/engine-defaults.md has the audit):

* **The "AI" badge.** For every message to a person the engine appends
  ``<bot biz_bot="1"/>`` unless the environment variable ``NEONIZE_BOT_TAG`` is
  ``off``, ``none``, ``false`` or ``0`` (goneonize ``shouldAddBotNode``). Go reads the
  environment block the process was *exec'd* with: ``os.environ`` changes, before the
  library loads or before a fork, are invisible to it. So the launcher re-executes
  itself once with the variable set (``gateway.cli``), every actor process forked from
  it inherits that block, and a session refuses to load the engine when the block it
  was started with says otherwise than ``transport.mark_as_bot`` (``bot_tag_problem``).
* **The run-time download.** When the bundled library is missing or of another
  version, neonize downloads one from the internet at import. wagate checks the file
  first (``library_problem``) and refuses, naming the file and the expected version;
  nothing is fetched.

Plain functions only: no actors, no neonize import (finding the package does not run it).
"""

from __future__ import annotations

import ast
import ctypes
import importlib.metadata
import importlib.util
import os
import platform
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

BOT_TAG = "NEONIZE_BOT_TAG"
# The values for which the engine leaves the bot node out (it trims and lower-cases).
_BOT_TAG_OFF = frozenset({"off", "none", "false", "0"})
# Set by the launcher on its one re-exec (to its pid, which exec keeps): finding it
# again with the variables still wrong means the re-exec did not work, not "try again".
REEXEC_MARKER = "WAGATE_ENGINE_ENV_SET"


# --------------------------------------------------------------------------- environment


def bot_tag_value(mark_as_bot: bool) -> str:
    """The value of ``NEONIZE_BOT_TAG`` that gives the operator's choice."""
    return "on" if mark_as_bot else "off"


def adds_bot_node(value: str | None) -> bool:
    """The engine's own rule: the bot node is added unless the variable says off."""
    return (value or "").strip().lower() not in _BOT_TAG_OFF


def engine_environment(mark_as_bot: bool) -> dict[str, str]:
    """The variables the engine must find in the environment it was exec'd with."""
    return {BOT_TAG: bot_tag_value(mark_as_bot)}


def exec_environment(pid: int | str = "self") -> dict[str, str]:
    """The environment block a process was started with (``/proc/PID/environ``): what
    a Go library loaded in it sees, whatever Python changed since. Falls back to this
    process's ``os.environ`` where ``/proc`` cannot be read."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        if pid != "self":
            raise
        return dict(os.environ)
    pairs = (entry.split(b"=", 1) for entry in raw.split(b"\0") if b"=" in entry)
    return {key.decode("utf-8", "replace"): value.decode("utf-8", "replace")
            for key, value in pairs}


def environment_mismatch(wanted: Mapping[str, str], started_with: Mapping[str, str]
                         ) -> dict[str, str]:
    """The wanted variables the block does not hold with exactly that value."""
    return {key: value for key, value in wanted.items() if started_with.get(key) != value}


def bot_tag_problem(mark_as_bot: bool, started_with: Mapping[str, str]) -> str | None:
    """Why this process must not load the engine (None when it may): the environment
    it was started with would make the engine mark messages otherwise than configured."""
    value = started_with.get(BOT_TAG)
    if adds_bot_node(value) == mark_as_bot:
        return None
    shown = f"{BOT_TAG}={value}" if value is not None else f"no {BOT_TAG}"
    effect = ("mark every message as sent by a bot (recipients see an \"AI\" label)"
              if not mark_as_bot else "not mark messages as sent by a bot")
    return (f"this process was started with {shown}, so the engine would {effect}, but "
            f"transport.mark_as_bot = {str(mark_as_bot).lower()}; start the gateway with "
            "`wagate serve`, which starts its processes with the right value")


# --------------------------------------------------------------------------- library


@dataclass(frozen=True, slots=True)
class EngineLibrary:
    """The native library neonize loads, and the version neonize requires of it."""

    path: Path
    expected_version: str


def library_file_name(system: str | None = None, machine: str | None = None) -> str:
    """neonize's name for the platform's library (``neonize-linux-amd64.so``)."""
    os_name = (system or platform.system()).lower()
    arch = (machine or platform.machine()).lower()
    arch = {"aarch64": "arm64", "x86_64": "amd64"}.get(arch, arch)
    ext = {"windows": "dll", "darwin": "dylib"}.get(os_name, "so")
    return f"neonize-{os_name}-{arch}.{ext}"


def locate_library() -> EngineLibrary:
    """Where the installed neonize keeps its library, without importing neonize (its
    import is what would download)."""
    spec = importlib.util.find_spec("neonize")
    if spec is None or not spec.submodule_search_locations:
        raise LookupError("the neonize package is not installed; reinstall wagate "
                          "(pip install .)")
    package = Path(next(iter(spec.submodule_search_locations)))
    return EngineLibrary(package / library_file_name(), _expected_version(package))


def _expected_version(package: Path) -> str:
    """The library version neonize checks for (``__GONEONIZE_VERSION__`` in its
    ``download.py``, read as text), else the installed package's version."""
    try:
        tree = ast.parse((package / "download.py").read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        tree = None
    for node in ast.walk(tree) if tree is not None else ():
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)
                and any(isinstance(t, ast.Name) and t.id == "__GONEONIZE_VERSION__"
                        for t in node.targets)):
            return node.value.value
    return importlib.metadata.version("neonize")


def loaded_version(path: Path) -> str:
    """Load the library (as neonize would) and ask it its version."""
    library = ctypes.CDLL(str(path))
    get_version = library.GetVersion
    get_version.restype = ctypes.c_char_p
    return (get_version() or b"").decode("utf-8", "replace")


def library_problem(library: EngineLibrary,
                    version_of: Callable[[Path], str] = loaded_version) -> str | None:
    """Why the engine must not be loaded (None when it may): the library is missing,
    unloadable or of another version than neonize requires. Any of these would make
    neonize download a library from the internet at import; wagate never does."""
    expected, path = library.expected_version, library.path
    fix = (f"wagate never downloads code at run time; reinstall the engine: "
           f"pip install --force-reinstall neonize=={expected}")
    if not path.is_file():
        return f"the engine library {path} is missing (expected version {expected}); {fix}"
    try:
        found = version_of(path)
    except (OSError, AttributeError) as exc:
        return (f"the engine library {path} cannot be loaded as neonize's library "
                f"(expected version {expected}): {exc}; {fix}")
    if found != expected:
        return (f"the engine library {path} is version {found or 'unknown'}, neonize "
                f"expects version {expected}; {fix}")
    return None


# ---- the installation a running gateway was started from ----------------------------------

# Set by the launcher (gateway.cli) to ``install_stamp()`` before any actor process
# starts; every process forked from it inherits it.
INSTALL_STAMP_ENV = "WAGATE_INSTALL_STAMP"
# The distributions whose reinstallation changes what a new session process loads.
STAMPED_DISTRIBUTIONS = ("wagate", "neonize")


def install_stamp(names: tuple[str, ...] = STAMPED_DISTRIBUTIONS) -> str:
    """What is installed now, as one comparable string: each distribution's version and
    the identity (inode, mtime) of its metadata directory, which ``pip install``
    replaces on every install, even of the same version or an editable one.

    A session process is forked from a launcher that started long ago, but loads
    engine modules when it starts: after a ``pip install`` under a running gateway it
    may find files of another version than the running code. Comparing stamps tells
    that apart from a broken installation, so the advice can be "restart", not
    "reinstall" (reinstalling is what caused it)."""
    parts = []
    for name in names:
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            parts.append(f"{name}=-")
            continue
        where = getattr(dist, "_path", None)  # a PathDistribution's dist-info directory
        try:
            st = os.stat(where) if where is not None else None
        except OSError:
            st = None
        identity = f"{st.st_ino}:{st.st_mtime_ns}" if st is not None else "?"
        parts.append(f"{name}={dist.version}@{identity}")
    return ";".join(parts)


def install_changed(environ: Mapping[str, str] | None = None,
                    now: Callable[[], str] = install_stamp) -> bool:
    """True when the installation differs from the one the launcher started from (the
    stamp it left in ``INSTALL_STAMP_ENV``); False when none was left."""
    started = (os.environ if environ is None else environ).get(INSTALL_STAMP_ENV)
    return bool(started) and started != now()


INSTALL_CHANGED_ADVICE = ("the installed wagate changed under the running gateway (a pip "
                          "install while it ran): the running gateway cannot load the new "
                          "files; restart it (stop it and run `wagate serve` again)")
