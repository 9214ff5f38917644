"""The token command the dashboard's sign-in page gives: the one that works for the
configuration this gateway runs with.

``wagate token create`` without ``--config`` writes to the token file of the default
configuration (``./data/tokens.toml`` from the current directory): on a gateway
started with another config that token is "not valid". The command therefore names
the gateway's own config file and, when the token file lives in ``data_dir``, the
data directory in absolute form (it may have come from ``--data-dir`` or be relative
to the directory the gateway was started in).
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from pathlib import Path
from typing import Protocol

from gateway.core.config import Config

# The launcher puts the config file it was started with here, for the web process.
CONFIG_FILE_ENV = "WAGATE_CONFIG_FILE"
PLACEHOLDER_NOTE = "CONFIG: the config file `wagate serve` runs with."
# Headers a proxy adds, naming the browser's address (Via names no address: a proxy).
_ADDRESS_HEADERS = ("X-Forwarded-For", "X-Real-IP")
_FORWARDED_FOR = re.compile(r'(?:^|[;,\s])for\s*=\s*("[^"]*"|[^;,\s]*)', re.IGNORECASE)


def token_command(config: Config, config_file: str | None, role: str = "admin") -> str:
    """The exact ``wagate token create`` for this gateway (``NAME`` left to fill in)."""
    words = ["wagate", "token", "create"]
    if config_file:
        words += ["--config", str(Path(config_file).expanduser().resolve())]
    if not config.auth.tokens_file:  # data_dir/tokens.toml: name that data_dir
        words += ["--data-dir", str(config.data_path)]
    words += ["--name", "NAME", "--role", role]
    return shlex.join(words)


def sign_in_hint(config: Config, config_file: str | None, local: bool) -> dict[str, str]:
    """What the sign-in page shows. Paths of this machine go only to a browser on the
    machine itself (``local``), which is where the command is run; anyone else gets
    the command with a placeholder."""
    if local:
        return {"command": token_command(config, config_file),
                "note": "Run it on this machine, as the user that runs wagate."}
    return {"command": "wagate token create --config CONFIG --name NAME --role admin",
            "note": PLACEHOLDER_NOTE}


class Headers(Protocol):
    """What ``browser_is_local`` reads of a request's headers: a plain dict in tests,
    Werkzeug's case-insensitive ``Headers`` in the web tier (which this package may not
    import)."""

    def __contains__(self, key: str, /) -> bool: ...

    def get(self, key: str, default: str, /) -> str: ...


def browser_is_local(client_ip: str | None, headers: Headers) -> bool:
    """The browser runs on the gateway's machine: its address (after trusted proxies are
    resolved) is loopback, and no proxy header names another one. A proxy on this host
    that is not in ``auth.trusted_proxies`` reaches the gateway from 127.0.0.1 for every
    browser in the world; its headers are all that says so, so a request carrying any
    address that is not loopback (or one that cannot be read, or a ``Via``) is remote."""
    if not _is_loopback(client_ip) or "Via" in headers:
        return False
    named: list[str] = []
    for header in _ADDRESS_HEADERS:
        named += [hop.strip() for hop in headers.get(header, "").split(",") if hop.strip()]
    named += [_forwarded_address(v) for v in _FORWARDED_FOR.findall(
        headers.get("Forwarded", ""))]
    if "Forwarded" in headers and not named:
        return False  # a Forwarded header without for= still says: a proxy
    return all(_is_loopback(address) for address in named)


def _forwarded_address(value: str) -> str:
    """RFC 7239's ``for=`` value as a bare address: quotes, [brackets] and port gone."""
    value = value.strip('"')
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _is_loopback(address: object) -> bool:
    try:
        return ipaddress.ip_address(str(address)).is_loopback
    except ValueError:
        return False
