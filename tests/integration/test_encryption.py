"""Stored WhatsApp credentials are encrypted at rest (README: Encryption at rest).

Real gateways (``wagate serve``) with the harness's storage key file: what lies in
``data_dir/sessions`` must be useless without the key, the clear-text working copy
must be private and gone after a stop, a wrong or missing key must stop the gateway
with a message that says what to do (never a new QR code over the old link), the
key must rotate, and a crash between checkpoints must still reconnect.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from actors.session.sealed_store import (
    StoreId,
    generate_key_text,
    is_sealed,
    parse_key,
    sealed_fingerprint,
    unseal,
)
from tests.integration.harness import Gateway, _toml, group_alive, wait_for
from tests.integration.test_resilience import wait_connected_without_qr

OK = {"sendWhatsAppNotification": True}
PHONE = "+14155550170"


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def digits(text: str) -> str:
    return "".join(c for c in text if c.isdigit())


def wagate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL, env=env)


def set_config(gw: Gateway, **sections: dict[str, Any]) -> None:
    """Change keys of the gateway's config file (read at its next start)."""
    config = tomllib.loads(gw.config_path.read_text(encoding="utf-8"))
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    gw.config_path.write_text(_toml(config), encoding="utf-8")


def refused_start(gw: Gateway, env: dict[str, str] | None = None) -> str:
    """Run ``wagate serve`` where it must refuse to start; return what it printed."""
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(gw.config_path),
         "--port", str(gw.port), "--admin-port", str(gw.admin_port)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=env)
    try:
        output, _ = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:  # it started after all: stop it, then fail
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
        raise AssertionError(f"wagate serve started instead of refusing:\n{output}") from None
    assert process.returncode == 1, output
    assert "wagate: cannot start:" in output, output
    assert gw.run_state() is None, "no process may have been started"
    return output


def without_key_variable() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "WAGATE_STORE_KEY"}


def stores_in(gw: Gateway) -> list[Path]:
    return sorted(p for p in (gw.data_dir / "sessions").rglob("*") if p.is_file())


# --------------------------------------------------------------------------- tests


def test_credentials_on_disk_are_encrypted_and_the_clear_copy_is_private(
        make_gateway: Callable[..., Gateway], tmp_path: Path) -> None:
    """Nothing in data_dir/sessions gives away the account: no phone number, device
    id or credential field in any byte. The engine's clear-text copy is 0700 and
    disappears with the gateway."""
    work = tmp_path / "work"
    gw = make_gateway({"encryption": {"work_dir": str(work)}}).start()
    phone = digits(gw.link()["phoneNumber"])
    assert gw.send(PHONE, "sealed").data == OK

    [copy] = work.glob("wagate-*")
    assert mode_of(copy) == 0o700 and mode_of(copy / "store") == 0o700
    clear = copy / "store" / "simulator.json"
    assert mode_of(clear) == 0o600
    creds = json.loads(clear.read_text())
    secrets = {phone, creds["device_id"], "device_id", "linked_at", clear.read_text()}
    assert len(phone) >= 7

    def check_sealed() -> bytes:
        [store] = stores_in(gw)
        assert store == gw.credentials_path()
        blob = store.read_bytes()
        assert is_sealed(blob) and mode_of(store) == 0o600
        for secret in secrets:
            assert secret.encode() not in blob, secret
        key = parse_key(gw.key_file.read_text(), "the test's key file")
        assert json.loads(unseal(key, blob, "store", StoreId("default", store.name))) == creds
        return blob

    check_sealed()
    gw.stop()
    assert list(work.iterdir()) == [], "the clear-text working copy outlived the gateway"
    check_sealed()
    for path in (gw.data_dir / "sessions").rglob("*"):
        assert not path.name.endswith(".tmp"), path


def test_a_logout_deletes_the_encrypted_store_and_the_working_copy(
        make_gateway: Callable[..., Gateway], tmp_path: Path) -> None:
    work = tmp_path / "work"
    gw = make_gateway({"encryption": {"work_dir": str(work)}}).start()
    gw.link()
    assert is_sealed(gw.credentials_path().read_bytes())
    assert gw.disconnect().data == {"whatsAppDisconnect": True}
    gw.wait_state("LOGGED_OUT")
    wait_for(lambda: not gw.credentials_path().exists() and not list(work.iterdir()), 10,
             message="the sealed store and the working copy to be deleted")
    assert stores_in(gw) == []


def test_a_wrong_key_stops_the_start_and_names_both_keys(
        make_gateway: Callable[..., Gateway]) -> None:
    """Another key than the stores' is a start-up error naming the session and both
    key fingerprints; the store is left as it was, and the right key resumes it."""
    gw = make_gateway().start()
    phone = gw.link()["phoneNumber"]
    gw.stop()
    sealed = gw.credentials_path().read_bytes()
    right_text = gw.key_file.read_text()
    right = parse_key(right_text, "right")
    wrong_text = generate_key_text()
    gw.key_file.write_text(wrong_text + "\n")
    wrong = parse_key(wrong_text, "wrong")

    output = refused_start(gw)
    assert "session 'default'" in output
    assert f"encrypted with key {right.fingerprint}" in output
    assert f"the configured key is {wrong.fingerprint}" in output
    assert str(gw.key_file) in output  # where the configured key came from
    assert gw.credentials_path().read_bytes() == sealed

    gw.key_file.write_text(right_text)
    gw.start()
    assert wait_connected_without_qr(gw)["phoneNumber"] == phone


def test_a_missing_key_stops_the_start_with_what_to_do(
        make_gateway: Callable[..., Gateway], monkeypatch: pytest.MonkeyPatch) -> None:
    gw = make_gateway().start()
    gw.link()
    gw.stop()
    key_text = gw.key_file.read_text()
    fingerprint = parse_key(key_text, "k").fingerprint

    gw.key_file.unlink()  # the configured key file is gone
    output = refused_start(gw)
    assert f"encryption.key_file {gw.key_file} does not exist" in output
    assert "wagate keys create --out" in output

    set_config(gw, encryption={"key_file": ""})  # no key configured at all
    output = refused_start(gw, env=without_key_variable())
    assert "encrypted" in output and f"key {fingerprint}" in output
    assert "WAGATE_STORE_KEY" in output and "encryption.key_file" in output
    assert is_sealed(gw.credentials_path().read_bytes())

    # The key in the environment variable instead of a file works as well.
    monkeypatch.setenv("WAGATE_STORE_KEY", key_text.strip())
    gw.start()
    wait_connected_without_qr(gw)


def test_without_a_key_only_the_demo_runs_and_an_upgrade_encrypts_its_stores(
        make_gateway: Callable[..., Gateway], monkeypatch: pytest.MonkeyPatch) -> None:
    """A gateway that requires API tokens refuses to run without a storage key;
    the demo (auth.required = false) runs with clear-text stores and says so. Adding
    a key later encrypts those stores at start, and the session resumes."""
    fresh = make_gateway({"encryption": {"key_file": ""}})
    output = refused_start(fresh, env=without_key_variable())
    assert "no storage key is configured" in output
    assert "wagate keys create --out PATH" in output and "encryption.key_file" in output

    gw = make_gateway({"auth": {"required": False}, "encryption": {"key_file": ""}})
    monkeypatch.delenv("WAGATE_STORE_KEY", raising=False)
    gw.start()
    phone = gw.link()["phoneNumber"]
    gw.stop()
    assert "session stores are not encrypted" in (gw.root / "serve.log").read_text()
    creds = json.loads(gw.credentials_path().read_text())  # clear text, as before
    assert digits(phone) == creds["phone"]

    set_config(gw, encryption={"key_file": str(gw.key_file)})
    gw.start()
    assert wait_connected_without_qr(gw)["phoneNumber"] == phone
    blob = gw.credentials_path().read_bytes()
    assert is_sealed(blob) and creds["phone"].encode() not in blob
    assert "encrypted a session store found in clear text" in (gw.root / "serve.log").read_text()


def test_key_rotation_then_restart_reconnects_without_a_qr(
        make_gateway: Callable[..., Gateway], tmp_path: Path) -> None:
    gw = make_gateway().start()
    phone = gw.link()["phoneNumber"]
    config = str(gw.config_path)
    old = parse_key(gw.key_file.read_text(), "old")

    new_file = tmp_path / "keys" / "new.key"
    done = wagate("keys", "create", "--out", str(new_file), "--config", config)
    assert done.returncode == 1 and "does not exist" in done.stderr  # no such directory
    new_file.parent.mkdir(mode=0o700)
    done = wagate("keys", "create", "--out", str(new_file), "--config", config)
    assert done.returncode == 0, done.stderr
    new = parse_key(new_file.read_text(), "new")
    assert f"fingerprint {new.fingerprint}" in done.stdout and mode_of(new_file) == 0o600
    done = wagate("keys", "create", "--out", str(new_file), "--config", config)
    assert done.returncode == 1 and "already exists" in done.stderr
    assert parse_key(new_file.read_text(), "again").fingerprint == new.fingerprint
    assert [p.name for p in new_file.parent.iterdir()] == ["new.key"]  # no temp file left

    rotate = ("keys", "rotate", "--new-key-file", str(new_file), "--config", config)
    done = wagate(*rotate)
    assert done.returncode == 1 and "stop it first" in done.stderr, done.stderr
    assert sealed_fingerprint(gw.credentials_path().read_bytes()) == old.fingerprint

    gw.stop()
    done = wagate(*rotate)
    assert done.returncode == 0, done.stderr
    assert "[1/2] session 'default' (simulator.json): re-encrypted" in done.stderr
    assert "[2/2] the media store (media.key): re-encrypted" in done.stderr
    assert "key rotation done: 2 re-encrypted" in done.stdout
    assert "next: point the config at the new key" in done.stdout
    assert sealed_fingerprint(gw.credentials_path().read_bytes()) == new.fingerprint
    done = wagate(*rotate)  # a second run (as after a crash half-way) finishes the job
    assert done.returncode == 0, done.stderr
    assert "already under the new key" in done.stderr

    output = refused_start(gw)  # the config still names the old key
    assert f"encrypted with key {new.fingerprint}" in output
    assert "wagate keys rotate" in output

    set_config(gw, encryption={"key_file": str(new_file)})
    done = wagate("keys", "check", "--config", config)
    assert done.returncode == 0 and "session 'default' (simulator.json): ok" in done.stdout
    assert "the media store (media.key): ok" in done.stdout
    gw.start()
    assert wait_connected_without_qr(gw)["phoneNumber"] == phone
    assert gw.send(PHONE, "after the rotation").data == OK


def test_a_crash_between_checkpoints_still_reconnects(
        make_gateway: Callable[..., Gateway], tmp_path: Path) -> None:
    """SIGKILL of every process long before a periodic checkpoint is due: what a
    reconnect needs was sealed when the session connected, and the clear-text copy
    the crash left behind is removed by the next start."""
    work = tmp_path / "work"
    gw = make_gateway({"encryption": {"work_dir": str(work), "checkpoint_seconds": 3600}})
    gw.start()
    phone = gw.link()["phoneNumber"]
    assert gw.send(PHONE, "before the crash").data == OK
    [stale] = work.glob("wagate-*")

    gw.kill_everything()
    wait_for(lambda: not any(group_alive(g) for g in gw.groups), 10,
             message="every process of the gateway to be gone")
    assert (stale / "store" / "simulator.json").is_file()  # a crash cannot clean up

    gw.start()
    assert wait_connected_without_qr(gw)["phoneNumber"] == phone
    assert not stale.exists()
    assert [p for p in work.glob("wagate-*")] != [stale]
    assert gw.send(PHONE, "after the crash").data == OK
