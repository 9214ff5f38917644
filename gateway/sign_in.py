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

import shlex
from pathlib import Path

from gateway.config import Config

# The launcher puts the config file it was started with here, for the web process.
CONFIG_FILE_ENV = "WAGATE_CONFIG_FILE"
PLACEHOLDER_NOTE = "CONFIG: the config file `wagate serve` runs with."


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
