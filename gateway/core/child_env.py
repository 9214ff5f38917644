"""The environments of the processes the gateway starts with exec: none gets a secret
it does not need.

The storage key may come from an environment variable (``encryption.key_env``), which
every process started from the launcher would inherit. The actor processes need it
(the sessions open their stores with it; they are forked, so they get it anyway).
The web server and its workers never open a store, and a helper that runs a fixed
script needs nothing of ours at all; a secret in their environment is only one more
place (``/proc/PID/environ``, a crash report, a debug page) to leak it from.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

STORE_KEY_ENV = "WAGATE_STORE_KEY"  # encryption.key_env's default
# What a Python helper running a fixed script (``python -I -c ...``) may need.
HELPER_VARIABLES = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "LD_LIBRARY_PATH", "TMPDIR", "TZ")


def secret_variables(config: Any) -> frozenset[str]:
    """The variables that may hold a secret under ``config``: the configured key
    variable, and the default one (an operator who renamed it may still set both)."""
    return frozenset(name for name in (config.encryption.key_env, STORE_KEY_ENV) if name)


def without_secrets(environ: Mapping[str, str], names: Iterable[str]) -> dict[str, str]:
    """``environ`` without the variables ``names``."""
    drop = set(names)
    return {key: value for key, value in environ.items() if key not in drop}


def helper_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """For a helper process that runs a fixed script: only what an interpreter needs
    to start, so no secret (whatever its variable is called) reaches it."""
    return {key: environ[key] for key in HELPER_VARIABLES if key in environ}


def web_config(config: Any) -> Any:
    """The config as the web tier gets it: without the outbound proxy's address and the
    real engine's Postgres DSN (``transport.session_store``), which may carry
    passwords and which only the sessions use."""
    transport = config.transport
    if not transport.proxy and not transport.session_store:
        return config
    return dataclasses.replace(config, transport=dataclasses.replace(
        transport, proxy="", session_store=""))
