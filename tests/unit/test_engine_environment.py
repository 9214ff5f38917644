"""The engine's start-up checks as plain functions (actors/transport/engine.py).

Nothing here loads the engine: the library checks get a stand-in for "load it and
ask its version", and the environment checks read processes started for the test.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from actors.transport.engine import (
    BOT_TAG,
    EngineLibrary,
    _expected_version,
    adds_bot_node,
    bot_tag_problem,
    engine_environment,
    environment_mismatch,
    exec_environment,
    library_file_name,
    library_problem,
)


@pytest.mark.parametrize("value", ["off", "OFF", " off ", "none", "false", "0", "False"])
def test_the_engine_leaves_the_bot_node_out_only_for_its_off_values(value: str) -> None:
    assert adds_bot_node(value) is False


@pytest.mark.parametrize("value", [None, "", "on", "1", "true", "yes", "of", "off!"])
def test_anything_else_or_nothing_makes_the_engine_add_the_bot_node(value: str | None) -> None:
    assert adds_bot_node(value) is True


def test_the_environment_for_each_choice_gives_that_choice() -> None:
    for mark_as_bot in (False, True):
        value = engine_environment(mark_as_bot)[BOT_TAG]
        assert adds_bot_node(value) is mark_as_bot


def test_a_session_refuses_an_environment_that_contradicts_the_config() -> None:
    assert bot_tag_problem(False, {BOT_TAG: "off"}) is None
    assert bot_tag_problem(True, {BOT_TAG: "on"}) is None
    assert bot_tag_problem(True, {}) is None  # unset: the engine adds it, as wanted
    unset = bot_tag_problem(False, {})
    assert unset is not None and "no NEONIZE_BOT_TAG" in unset and "AI" in unset
    assert "transport.mark_as_bot = false" in unset and "wagate serve" in unset
    contradicting = bot_tag_problem(True, {BOT_TAG: "0"})
    assert contradicting is not None and "NEONIZE_BOT_TAG=0" in contradicting


def test_only_variables_with_a_different_value_are_missing() -> None:
    wanted = {BOT_TAG: "off"}
    assert environment_mismatch(wanted, {BOT_TAG: "off", "X": "1"}) == {}
    assert environment_mismatch(wanted, {BOT_TAG: "OFF"}) == wanted  # exact value
    assert environment_mismatch(wanted, {}) == wanted


def test_the_exec_environment_is_the_block_the_process_started_with() -> None:
    """``os.environ`` changes made after the start do not appear: that is what Go sees."""
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import os, sys; os.environ['LATER'] = 'x'; print('ready', flush=True); "
         "sys.stdin.read()"],
        env={"STARTED": "yes=with=equals"}, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        block = exec_environment(child.pid)
        assert block["STARTED"] == "yes=with=equals"
        assert "LATER" not in block
    finally:
        child.communicate("", timeout=10)


def test_the_library_name_follows_neonizes_platform_naming() -> None:
    assert library_file_name("Linux", "x86_64") == "neonize-linux-amd64.so"
    assert library_file_name("Linux", "aarch64") == "neonize-linux-arm64.so"
    assert library_file_name("Darwin", "arm64") == "neonize-darwin-arm64.dylib"
    assert library_file_name("Windows", "AMD64") == "neonize-windows-amd64.dll"


def test_the_expected_version_is_read_from_neonizes_downloader_without_running_it(
        tmp_path: Path) -> None:
    (tmp_path / "download.py").write_text(
        'import requests\nraise SystemExit("never run")\n__GONEONIZE_VERSION__ = "9.8.7"\n')
    assert _expected_version(tmp_path) == "9.8.7"


def test_a_missing_library_is_refused_naming_the_file_and_the_version(tmp_path: Path) -> None:
    library = EngineLibrary(tmp_path / "neonize-linux-amd64.so", "0.5.2")

    def never(_path: Path) -> str:
        raise AssertionError("a missing file is never loaded")

    problem = library_problem(library, never)
    assert problem is not None
    assert str(library.path) in problem and "0.5.2" in problem
    assert "never downloads" in problem and "neonize==0.5.2" in problem


def test_a_library_of_another_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "neonize-linux-amd64.so"
    path.write_bytes(b"stand-in")
    library = EngineLibrary(path, "0.5.2")
    problem = library_problem(library, lambda _p: "0.4.9")
    assert problem is not None and "version 0.4.9" in problem and "0.5.2" in problem
    assert library_problem(library, lambda _p: "0.5.2") is None

    def unloadable(_path: Path) -> str:
        raise OSError("invalid ELF header")

    problem = library_problem(library, unloadable)
    assert problem is not None and "invalid ELF header" in problem and "0.5.2" in problem
