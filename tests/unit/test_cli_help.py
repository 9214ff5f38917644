"""The command line explains itself: every command and option has help, the help
reads as text (no reStructuredText quoting), a command group alone shows its own
commands, and ``--version`` names the installed wagate."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import __version__
from gateway.cli.wagate import build_parser, main


def parsers(parser: argparse.ArgumentParser, path: str = "wagate"
            ) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every parser of the tree, with the command line that reaches it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from parsers(sub, f"{path} {name}")


def help_texts(parser: argparse.ArgumentParser) -> Iterator[tuple[str, str | None]]:
    """(what, its help) for the parser's description, its options and arguments, and
    the one-line help of each of its commands."""
    yield "description", parser.description
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                yield f"command {choice.dest}", choice.help
        elif not isinstance(action, argparse._HelpAction):
            yield "/".join(action.option_strings) or action.dest, action.help


TREE = list(parsers(build_parser()))
GROUPS = [path.split()[1:] for path, p in TREE
          if any(isinstance(a, argparse._SubParsersAction) for a in p._actions)
          and path != "wagate"]


def test_the_tree_is_walked_whole() -> None:
    paths = {path for path, _ in TREE}
    assert {"wagate sim scan", "wagate token create", "wagate keys rotate",
            "wagate audit tail", "wagate status"} <= paths
    assert sorted(" ".join(g) for g in GROUPS) == ["audit", "keys", "sim", "token"]


@pytest.mark.parametrize("path,parser", TREE, ids=[path for path, _ in TREE])
def test_every_command_and_option_has_help_without_double_backticks(
        path: str, parser: argparse.ArgumentParser) -> None:
    for what, text in help_texts(parser):
        if what == "description" and path != "wagate":
            continue  # a subcommand's description is optional: its help line is shown
        assert text, f"{path}: {what} has no help"
        assert "``" not in text, f"{path}: {what} quotes with double backticks: {text!r}"


@pytest.mark.parametrize("group", GROUPS, ids=[" ".join(g) for g in GROUPS])
def test_a_command_group_alone_prints_its_own_help(
        group: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(group) == 2
    out = capsys.readouterr().out
    assert out.startswith(f"usage: wagate {' '.join(group)} "), out
    assert "serve" not in out.split("\n", 1)[0]  # not the top-level list


def test_version_names_the_installed_wagate(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"wagate {__version__}"


def test_the_scan_help_and_the_readme_name_the_number_the_default_session_links_with(
        ) -> None:
    """The simulator makes the number; the README's quickstart used to show another."""
    from pathlib import Path

    from actors.transport.simulator import _default_phone

    number = f"+{_default_phone('default')}"
    scan = dict(parsers(build_parser()))["wagate sim scan"]
    phone = next(a for a in scan._actions if "--phone" in a.option_strings)
    assert number in (phone.help or "")
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    assert f"linked session 'default' to phone {number}" in readme
    assert f'"phoneNumber":"{number}"' in readme


def test_a_simulator_dir_of_another_user_is_refused(tmp_path: Path) -> None:
    """`wagate sim` finds a gateway by its admin port, which may be another user's."""
    from gateway.cli.wagate import foreign_simulator_problem

    mine = os.stat(tmp_path).st_uid
    assert foreign_simulator_problem(tmp_path, mine) is None
    problem = foreign_simulator_problem(tmp_path, mine + 1)
    assert problem is not None and "belongs to another user" in problem
    # Not made yet (no session has connected): its nearest existing parent says whose.
    assert foreign_simulator_problem(tmp_path / "data" / "simulator", mine) is None
    assert foreign_simulator_problem(tmp_path / "data" / "simulator", mine + 1) is not None
