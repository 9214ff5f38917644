"""A full disk and a bad data_dir (issue 16, part 2), on a real small file system.

Each test mounts a tmpfs of a few MiB as the gateway's data_dir (root is needed; the
test is skipped, with the reason, where mounting is not permitted), fills it with a
ballast file from outside the gateway, and unmounts it however the test ends (the
fixture is set up before ``make_gateway``, so it is torn down after the gateways
stopped).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import Gateway, wait_for

MIB = 1024 * 1024
SEND = ("mutation($p: String!, $m: String!) { sendWhatsAppMessage(input: "
        "{phoneNumber: $p, message: $m}) { id } }")
CONFIG = {"storage": {"min_free_mb": 2},
          "limits": {"per_number_per_minute": 100_000, "per_number_per_hour": 100_000,
                     "global_per_day": 100_000}}
# Root without the capabilities that let it read and write any file: file modes count.
NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search",
          "--inh-caps=-dac_override,-dac_read_search"]


@pytest.fixture
def small_fs() -> Iterator[Callable[[Path, int], Path]]:
    """``mount(path, mib)``: a tmpfs of ``mib`` MiB at ``path``; all unmounted at the end."""
    mounted: list[Path] = []

    def mount(path: Path, mib: int) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m,mode=0700",
                               "tmpfs", str(path)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs (needs root): {done.stderr.strip()}")
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=True)


def free_bytes(path: Path) -> int:
    info = os.statvfs(path)
    return info.f_bavail * info.f_frsize


def fill(path: Path, leave: int) -> Path:
    """A ballast file that leaves about ``leave`` bytes free on ``path``'s file system."""
    ballast = path / "ballast"
    with ballast.open("wb") as handle:
        handle.write(b"\0" * max(0, free_bytes(path) - leave))
    return ballast


def send(gateway: Gateway, text: str) -> dict[str, Any]:
    return gateway.gql(SEND, {"p": "+14155552671", "m": text}).body


def test_a_full_disk_refuses_sends_loses_nothing_and_recovers_by_itself(
        small_fs: Callable[[Path, int], Path], make_gateway: Callable[..., Gateway]) -> None:
    gateway = make_gateway(CONFIG)
    small_fs(gateway.data_dir, 12)
    gateway.start()
    gateway.link()
    accepted = [send(gateway, f"before {n}")["data"]["sendWhatsAppMessage"]["id"]
                for n in range(5)]
    health = gateway.health()
    assert health["storage"]["freeBytes"] > 2 * MIB and health["status"] == "ok", health

    ballast = fill(gateway.data_dir, MIB)
    refused = send(gateway, "while full")
    [error] = refused["errors"]
    assert error["extensions"]["code"] == "UNAVAILABLE", error
    assert error["extensions"]["reason"] == "DISK_FULL"
    assert error["extensions"]["retryAfterSeconds"] > 0
    assert "disk" in error["message"] and str(gateway.data_dir) not in error["message"]
    health = gateway.health()
    assert health["status"] == "degraded" and health["storage"]["low"] is True, health
    assert "DISK_LOW" in [w["code"] for w in health["warnings"]]
    metrics = gateway.http.get(gateway.url + "/metrics", timeout=10).text
    [line] = [x for x in metrics.splitlines() if x.startswith("wagate_data_dir_free_bytes ")]
    assert float(line.split()[1]) < 2 * MIB

    ballast.unlink()  # space comes back: no restart, the next send goes through
    after = send(gateway, "after")
    assert not after.get("errors"), after
    accepted.append(after["data"]["sendWhatsAppMessage"]["id"])
    assert gateway.health()["status"] == "ok"

    def states() -> list[str] | None:
        found = [gateway.gql("query($i: ID!) { whatsAppMessage(id: $i) { state } }",
                             {"i": m}).data["whatsAppMessage"] for m in accepted]
        return [f["state"] for f in found] if all(found) else None
    assert wait_for(lambda: (s := states()) and all(x == "SENT" for x in s) and s, 10,
                    message="every accepted message SENT")
    texts = [m["text"] for m in gateway.inbox()]
    assert "while full" not in texts and texts.count("after") == 1
    verified = subprocess.run([sys.executable, "-m", "gateway.cli", "audit", "verify",
                               "--config", str(gateway.config_path)],
                              capture_output=True, text=True, timeout=60)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_a_read_only_or_unreadable_data_dir_refuses_to_start_naming_it(
        small_fs: Callable[[Path, int], Path], make_gateway: Callable[..., Gateway]) -> None:
    gateway = make_gateway()
    small_fs(gateway.data_dir, 16)
    gateway.start()
    gateway.stop()

    store = gateway.data_dir / "outbox" / "messages.sqlite3"
    store.chmod(0)
    try:
        done = subprocess.run([*NO_DAC, sys.executable, "-m", "gateway.cli", "serve",
                               "--config", str(gateway.config_path)], capture_output=True,
                              text=True, timeout=60, stdin=subprocess.DEVNULL)
    finally:
        store.chmod(0o600)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"cannot read {store}" in done.stderr, done.stderr

    subprocess.run(["mount", "-o", "remount,ro", str(gateway.data_dir)], check=True)
    try:
        code, log = gateway.start_refused()
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(gateway.data_dir)], check=True)
    assert code == 1, log
    assert f"{gateway.data_dir} is on a read-only file system" in log, log
