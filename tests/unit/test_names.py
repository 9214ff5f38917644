"""One session-name rule (gateway/core/names.py): the API, the token file, `wagate token
create`, the stores and the dashboard accept exactly the same names, the documented ones."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from actors.transport.base import check_session_id
from gateway.auth.tokens import TokenFileError, parse_token_file, token_hash
from gateway.cli.wagate import main as wagate
from gateway.core.names import SESSION_NAME_MAX_LENGTH, SESSION_NAME_RULE, is_session_name
from gateway.core.validation import ValidationError, validate_session_name

ROOT = Path(__file__).parents[2]

GOOD = ["default", "a", "Shop_1", "team-b", "_", "-", "0", "A" * SESSION_NAME_MAX_LENGTH]
BAD = ["", ".", "..", "../etc", "a/b", "a\\b", "/abs", ".hidden", "a.b", "with space",
       "tab\t", "trailing\n", "\nleading", "nul\x00", "caf\u00e9", "\uff41", "\u0661",
       "A" * (SESSION_NAME_MAX_LENGTH + 1), "x" * 10_000]


def by_the_api(name: str) -> bool:
    try:
        validate_session_name(name)
    except ValidationError as exc:
        assert exc.code == "INVALID_SESSION" and SESSION_NAME_RULE in exc.message
        return False
    return True


def by_the_token_file(name: str) -> bool:
    text = (f"[tokens]\nt = {{ role = \"sender\", hash = \"{token_hash('x' * 43)}\", "
            f"sessions = [{json.dumps(name)}] }}\n")
    try:
        parse_token_file(text, Path("tokens.toml"))
    except TokenFileError:
        return False
    return True


def by_the_stores(name: str) -> bool:
    try:
        check_session_id(name)
    except ValueError:
        return False
    return True


def by_the_command_line(name: str, tmp_path: Path) -> bool:
    """`wagate token create --sessions NAME` against a token file of its own."""
    config = tmp_path / f"{len(list(tmp_path.iterdir()))}.toml"
    config.write_text(f"[storage]\ndata_dir = {json.dumps(str(tmp_path / 'data'))}\n")
    return wagate(["token", "create", "--config", str(config), "--name", "t",
                   "--role", "sender", "--sessions", name]) == 0


@pytest.mark.parametrize("name", GOOD + BAD)
def test_every_place_gives_the_rule_s_verdict(name: str, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    expected = name in GOOD
    assert is_session_name(name) is expected
    verdicts = {"api": by_the_api(name), "token file": by_the_token_file(name),
                "stores": by_the_stores(name)}
    if "," not in name and name.strip() == name and name:  # --sessions splits and strips
        verdicts["command line"] = by_the_command_line(name, tmp_path)
    capsys.readouterr()
    assert verdicts == dict.fromkeys(verdicts, expected)


def test_a_name_that_is_not_a_string_is_refused() -> None:
    assert not is_session_name(None)
    assert not is_session_name(b"default")
    assert not is_session_name(7)


def test_the_dashboard_checks_the_same_rule() -> None:
    """The dashboard refuses a bad name before it asks; its pattern must be this one
    (a JavaScript ``$`` without the m flag ends the string, as ``fullmatch`` does)."""
    app = (ROOT / "gateway/web/static/app.js").read_text(encoding="utf-8")
    found = re.search(r"const SESSION_NAME = /\^(.*?)\$/;", app)
    assert found is not None
    assert found.group(1) == f"[A-Za-z0-9_-]{{1,{SESSION_NAME_MAX_LENGTH}}}"


def test_the_readme_documents_the_rule() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    row = next(line for line in readme.splitlines() if line.startswith("| `INVALID_SESSION`"))
    assert "letters, digits, `_`, `-`" in row
    assert f"(max {SESSION_NAME_MAX_LENGTH})" in row
