"""The stores as a whole: the start-up check and key rotation (gateway/cli/store_keys.py)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from actors.session.sealed_store import (
    StoreId,
    StoreKey,
    generate_key_text,
    is_sealed,
    parse_key,
    seal,
    sealed_fingerprint,
    unseal,
)
from gateway.cli.store_keys import StoreCheckError, check_stores, rotate_keys, verify_stores
from gateway.core.config import Config, load_config
from gateway.core.files import write_atomic

ROOT = Path(__file__).parents[2]
SESSIONS = ("alpha", "beta", "gamma")


def new_key_file(path: Path) -> StoreKey:
    text = generate_key_text()
    path.write_text(text + "\n")
    path.chmod(0o600)
    return parse_key(text, str(path))


def overrides(tmp_path: Path, key_file: Path | None, **extra: object) -> dict[str, object]:
    return {"storage.data_dir": str(tmp_path / "data"), "encryption.key_env": "",
            "encryption.key_file": str(key_file) if key_file else "",
            "encryption.work_dir": str(tmp_path / "work"), **extra}


def config_for(tmp_path: Path, key_file: Path | None, **extra: object) -> Config:
    return load_config(None, overrides(tmp_path, key_file, **extra))


def store_path(tmp_path: Path, session: str) -> Path:
    return tmp_path / "data" / "sessions" / session / "simulator.json"


def store_id(session: str) -> StoreId:
    return StoreId(session, "simulator.json")


def creds(session: str) -> bytes:
    return json.dumps({"device_id": f"dev-{session}", "phone": "15550001111"}).encode()


def seal_sessions(tmp_path: Path, key: StoreKey) -> None:
    for session in SESSIONS:
        path = store_path(tmp_path, session)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, seal(key, creds(session), store_id(session)))


def test_a_rotation_killed_half_way_leaves_every_store_readable_and_a_rerun_finishes(
        tmp_path: Path) -> None:
    """SIGKILL right after the first store was re-encrypted: each store opens with
    the old or the new key, and running the rotation again completes it."""
    old_file, new_file = tmp_path / "old.key", tmp_path / "new.key"
    old, new = new_key_file(old_file), new_key_file(new_file)
    seal_sessions(tmp_path, old)
    settings = json.dumps(json.dumps(overrides(tmp_path, old_file)))
    script = textwrap.dedent(f"""
        import json, os, signal
        from pathlib import Path
        from actors.session.sealed_store import parse_key
        from gateway.core.config import load_config
        from gateway.cli.store_keys import rotate_keys
        config = load_config(None, json.loads({settings}))
        new = parse_key(Path({str(new_file)!r}).read_text(), "new")
        def crash(line):
            print(line, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        rotate_keys(config, new, crash)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert "re-encrypted" in done.stdout
    fingerprints = {s: sealed_fingerprint(store_path(tmp_path, s).read_bytes()) for s in SESSIONS}
    assert sorted(fingerprints.values()) == sorted([new.fingerprint] + [old.fingerprint] * 2)
    for session in SESSIONS:
        blob = store_path(tmp_path, session).read_bytes()
        key = new if sealed_fingerprint(blob) == new.fingerprint else old
        assert unseal(key, blob, session, store_id(session)) == creds(session)
    assert not list((tmp_path / "data" / "sessions").rglob("*.tmp"))

    lines: list[str] = []
    report = rotate_keys(config_for(tmp_path, old_file), new, lines.append)
    assert (len(report.rotated), len(report.already), report.failed) == (2, 1, [])
    assert len(lines) == 3 and lines[0].startswith("[1/3] session 'alpha' (simulator.json)")
    for session in SESSIONS:
        assert unseal(new, store_path(tmp_path, session).read_bytes(), session,
                      store_id(session)) == creds(session)
    _, results = verify_stores(config_for(tmp_path, new_file))
    assert [outcome for _, outcome in results] == ["ok"] * 3


def test_a_rotation_changes_nothing_when_a_store_opens_with_neither_key(tmp_path: Path) -> None:
    old_file, new_file = tmp_path / "old.key", tmp_path / "new.key"
    old, new = new_key_file(old_file), new_key_file(new_file)
    seal_sessions(tmp_path, old)
    stranger = parse_key(generate_key_text(), "stranger")
    write_atomic(store_path(tmp_path, "gamma"), seal(stranger, creds("gamma"), store_id("gamma")))
    before = {s: store_path(tmp_path, s).read_bytes() for s in SESSIONS}
    with pytest.raises(StoreCheckError) as caught:
        rotate_keys(config_for(tmp_path, old_file), new, lambda line: None)
    message = str(caught.value)
    assert "nothing was changed" in message and "session 'gamma'" in message
    assert stranger.fingerprint in message and old.fingerprint in message
    assert {s: store_path(tmp_path, s).read_bytes() for s in SESSIONS} == before
    with pytest.raises(StoreCheckError, match="already configured"):
        rotate_keys(config_for(tmp_path, old_file), old, lambda line: None)


def test_the_startup_check_refuses_a_wrong_or_missing_key(tmp_path: Path) -> None:
    key_file = tmp_path / "store.key"
    key = new_key_file(key_file)
    seal_sessions(tmp_path, key)
    assert check_stores(config_for(tmp_path, key_file)).fingerprint == key.fingerprint

    other_file = tmp_path / "other.key"
    other = new_key_file(other_file)
    with pytest.raises(StoreCheckError) as caught:
        check_stores(config_for(tmp_path, other_file))
    message = str(caught.value)
    assert "session 'alpha'" in message and "session 'gamma'" in message
    assert f"encrypted with key {key.fingerprint}" in message
    assert f"the configured key is {other.fingerprint}" in message
    assert str(other_file) in message

    for auth in (True, False):  # stores are encrypted: even the demo needs the key
        with pytest.raises(StoreCheckError, match="no storage key is configured"):
            check_stores(config_for(tmp_path, None, **{"auth.required": auth,
                                                       "transport.engine": "simulator"}))


def test_without_stores_only_the_demo_runs_without_a_key(tmp_path: Path) -> None:
    with pytest.raises(StoreCheckError, match="wagate keys create --out PATH"):
        check_stores(config_for(tmp_path, None))
    demo = {"auth.required": False, "transport.engine": "simulator"}  # only the demo may
    assert check_stores(config_for(tmp_path, None, **demo)) is None


def test_the_startup_check_seals_clear_text_stores_and_clears_leftovers(
        tmp_path: Path) -> None:
    key_file = tmp_path / "store.key"
    key = new_key_file(key_file)
    plain = store_path(tmp_path, "alpha")
    plain.parent.mkdir(parents=True)
    plain.write_bytes(creds("alpha"))  # left by an older wagate
    interrupted = plain.parent / ".simulator.json.abc123.tmp"
    interrupted.write_bytes(b"half a write")
    check_stores(config_for(tmp_path, key_file))
    assert is_sealed(plain.read_bytes())
    assert unseal(key, plain.read_bytes(), "alpha", store_id("alpha")) == creds("alpha")
    assert not interrupted.exists()


def test_decrypted_copies_may_not_go_into_data_dir(tmp_path: Path) -> None:
    key_file = tmp_path / "store.key"
    new_key_file(key_file)
    config = config_for(tmp_path, key_file,
                        **{"encryption.work_dir": str(tmp_path / "data" / "work")})
    with pytest.raises(StoreCheckError, match="inside data_dir"):
        check_stores(config)


def test_the_media_key_is_made_at_start_sealed_rotated_and_checked_with_the_stores(
        tmp_path: Path) -> None:
    """A demo run leaves the media private key in clear; the first start with a key
    seals it; a rotation re-seals it, and files stored before stay readable (their own
    keys are sealed to the key pair, which does not change); ``keys check`` lists it."""
    from actors.media import store as media

    demo = {"auth.required": False, "transport.engine": "simulator"}
    check_stores(config_for(tmp_path, None, **demo))
    root = tmp_path / "data" / "media"
    private = root / media.PRIVATE_FILE
    assert not is_sealed(private.read_bytes())
    sha = media.store_bytes(root, b"a file from the demo").sha256
    (root / media.TEMP_DIR / ".upload.x.tmp").write_bytes(b"crashed upload")

    key_file = tmp_path / "store.key"
    key = new_key_file(key_file)
    check_stores(config_for(tmp_path, key_file))
    assert is_sealed(private.read_bytes()) and sealed_fingerprint(private.read_bytes()) == \
        key.fingerprint
    assert not list((root / media.TEMP_DIR).iterdir())

    new_file = tmp_path / "new.key"
    new_key = new_key_file(new_file)
    report = rotate_keys(config_for(tmp_path, key_file), new_key, lambda line: None)
    assert "the media store (media.key)" in report.rotated
    assert sealed_fingerprint(private.read_bytes()) == new_key.fingerprint
    opened = media.load_private(root, new_key)
    assert media.read_all(root, sha, media.file_key(root, sha, opened)) == b"a file from the demo"
    _, results = verify_stores(config_for(tmp_path, new_file))
    assert [(s.label, verdict) for s, verdict in results] == [("the media store (media.key)", "ok")]
    _, results = verify_stores(config_for(tmp_path, key_file))
    assert "encrypted with key" in results[0][1]


def test_a_rotation_keeps_each_stores_lease_epoch(tmp_path: Path) -> None:
    """A store written under a lease (format 3) keeps its epoch and generation through
    a rotation, so a stale process is still refused after it; one without stays so."""
    from actors.session.sealed_store import sealed_epoch, sealed_generation, sealed_version

    old_file = tmp_path / "old.key"
    old, new = new_key_file(old_file), parse_key(generate_key_text(), "new")
    seal_sessions(tmp_path, old)
    leased = store_path(tmp_path, "beta")
    write_atomic(leased, seal(old, creds("beta"), store_id("beta"), 3, epoch=6))
    report = rotate_keys(config_for(tmp_path, old_file), new, lambda _: None)
    assert report.failed == []
    blob = leased.read_bytes()
    assert (sealed_version(blob), sealed_generation(blob), sealed_epoch(blob)) == (3, 3, 6)
    assert unseal(new, blob, "beta", store_id("beta")) == creds("beta")
    assert sealed_version(store_path(tmp_path, "alpha").read_bytes()) == 2
