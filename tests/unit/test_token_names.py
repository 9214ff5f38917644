"""A token's name is checked whole: a trailing newline (which a regex ``$`` lets through)
would be written into the token file as a bare key broken over two lines, and every
later read of the file (each `wagate token` command, the next gateway start) would fail
on it. The same trap the one session-name rule closes (gateway/core/names.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.auth.tokens import TokenFile, TokenFileError, parse_token_file, token_hash
from gateway.cli.wagate import main as wagate

HOSTILE = ["ops\n", "ops\r\n", "\nops", "o ps", "ops=", ""]


def create(config: Path, name: str) -> int:
    return wagate(["token", "create", "--config", str(config), "--name", name,
                   "--role", "admin"])


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(f"[storage]\ndata_dir = {json.dumps(str(tmp_path / 'data'))}\n")
    return path


@pytest.mark.parametrize("name", HOSTILE)
def test_token_create_refuses_a_name_that_is_not_whole(config: Path, name: str,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    assert create(config, "first") == 0
    assert create(config, name) != 0
    assert "--name" in capsys.readouterr().err
    assert create(config, "second") == 0  # the token file is still readable and usable
    entries = TokenFile(config.parent / "data" / "tokens.toml").entries()
    assert sorted(entries) == ["first", "second"]


@pytest.mark.parametrize("name", HOSTILE)
def test_the_token_file_refuses_such_a_name(name: str) -> None:
    text = (f"[tokens]\n{json.dumps(name)} = {{ role = \"admin\", "
            f"hash = \"{token_hash('x' * 43)}\" }}\n")
    with pytest.raises(TokenFileError, match="names are 1-64"):
        parse_token_file(text, Path("tokens.toml"))


def test_a_token_whose_creation_cannot_be_audited_is_not_created(
        config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An admin action the audit log does not have is not done: the token goes again
    (here the audit directory is a file, so the audit lock cannot be taken)."""
    data = config.parent / "data"
    data.mkdir()
    (data / "audit").write_text("not a directory")
    assert create(config, "unaudited") != 0
    assert "the token was not created" in capsys.readouterr().err
    assert "unaudited" not in TokenFile(data / "tokens.toml").entries()
