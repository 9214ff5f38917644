"""Processes started with exec get no secret they do not need (gateway/core/child_env.py)."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import pytest

from actors.session.sealed_store import snapshot
from gateway.core.child_env import helper_environment, secret_variables, web_config, without_secrets
from gateway.core.config import load_config
from gateway.web.server import web_environment

KEY_TEXT = "k" * 43 + "="


def test_the_sqlite_snapshot_helper_gets_no_secret(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A session has the storage key in its environment; the helper it runs to copy a
    SQLite store needs none of it, whatever the key's variable is called."""
    database = tmp_path / "store.db"
    with sqlite3.connect(database) as db:
        db.execute("create table t (x)")
    seen = tmp_path / "helper.env"
    wrapper = tmp_path / "python"  # records its environment, then runs the interpreter
    wrapper.write_text(f'#!/bin/sh\nenv > "{seen}"\nexec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o700)
    monkeypatch.setattr(sys, "executable", str(wrapper))
    monkeypatch.setenv("WAGATE_STORE_KEY", KEY_TEXT)
    monkeypatch.setenv("OTHER_STORE_KEY", KEY_TEXT)  # a renamed encryption.key_env
    monkeypatch.setenv("LANG", "C.UTF-8")

    image = snapshot(database, "sqlite")
    assert image is not None and image.startswith(b"SQLite format 3")
    environment = seen.read_text()
    assert KEY_TEXT not in environment
    assert "LANG=C.UTF-8" in environment  # what an interpreter may need still gets there


def test_the_web_environment_drops_every_key_variable_and_the_transport_secrets(
        tmp_path: Path) -> None:
    config = load_config(None, {"storage.data_dir": str(tmp_path),
                                "encryption.key_env": "OTHER_STORE_KEY",
                                "transport.proxy": "socks5://u:pass-1@127.0.0.1:9",
                                "transport.session_store": "postgres://u:pass-1@127.0.0.1/w"})
    assert secret_variables(config) == {"OTHER_STORE_KEY", "WAGATE_STORE_KEY"}
    environ = {"PATH": "/usr/bin", "OTHER_STORE_KEY": KEY_TEXT, "WAGATE_STORE_KEY": KEY_TEXT}
    web = web_environment(config, environ)
    assert web["PATH"] == "/usr/bin"
    assert web["MALLOC_ARENA_MAX"] == "2"  # the launcher's arena limit (gateway/core/allocator.py)
    assert web["GLIBC_TUNABLES"] == "glibc.malloc.tcache_count=0"  # and no per-thread cache
    assert not any(KEY_TEXT in value or "pass-1" in value for value in web.values())
    assert web_config(config).transport.proxy == ""
    assert web_config(config).transport.session_store == ""
    assert config.transport.proxy and config.transport.session_store  # the sessions keep them


def test_an_empty_key_variable_name_drops_only_the_default() -> None:
    class Encryption:
        key_env = ""

    class Config:
        encryption = Encryption()

    assert secret_variables(Config()) == {"WAGATE_STORE_KEY"}
    assert without_secrets({"A": "1", "WAGATE_STORE_KEY": "x"}, {"WAGATE_STORE_KEY"}) == {
        "A": "1"}
    assert helper_environment({"PATH": "/bin", "SECRET": "x"}) == {"PATH": "/bin"}
