"""The README's "With a real phone" steps work in the order written, each run as the
block says: the directories first (the one root step), then the storage key, a token
and the gateway as the user who owns them. The key used to be created first, into an
/etc/wagate that did not exist yet.

The block is read from the README and run literally, with /etc/wagate and
/var/lib/wagate moved into the test's directory, ``sudo`` dropped (the test's user
stands for both), and the real engine fenced: its proxy is a refused loopback port,
and no session is ever started."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import requests

from tests.integration.harness import Gateway
from tests.neonize.fault_proxy import refused_port

REPO = Path(__file__).resolve().parents[2]


def real_phone_block() -> list[str]:
    """The commands of the first sh block under "### With a real phone"."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("### With a real phone", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None
    return [line.split("  #")[0].strip() for line in block.group(1).splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_the_real_phone_steps_work_in_their_order(
        make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway()
    etc, var = gw.root / "etc-wagate", gw.data_dir
    production = (REPO / "configs" / "production.toml").read_text(encoding="utf-8")
    fenced = production.replace('engine = "neonize"', 'engine = "neonize"\nproxy = '
                                f'"http://127.0.0.1:{refused_port()}"')
    config = fenced.replace("/etc/wagate", str(etc)).replace("/var/lib/wagate", str(var))
    gw.config_path.write_text(config, encoding="utf-8")

    commands = real_phone_block()
    assert commands[0].startswith("sudo install -d") and "wagate" not in commands[0].split(
        "/etc/wagate")[0], "the root step comes first"
    assert commands[-1].startswith("wagate serve --config configs/production.toml")
    assert not any(c.startswith("sudo") for c in commands[1:]), "no root after the first"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    token = ""
    for command in commands[:-1]:
        line = command.removeprefix("sudo ")
        if line.startswith("wagate "):
            line = f"{sys.executable} -m gateway.cli {line.removeprefix('wagate ')}"
        line = (line.replace("/etc/wagate", str(etc)).replace("/var/lib/wagate", str(var))
                .replace("configs/production.toml", str(gw.config_path)))
        done = subprocess.run(["bash", "-c", line], capture_output=True, text=True,
                              timeout=120, env=env, cwd=REPO, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, (command, done.stdout, done.stderr)
        token = next((w for w in done.stdout.split() if w.startswith("wgt_")), token)
    assert (etc / "store.key").is_file() and (etc / "tokens.toml").is_file() and token
    assert etc.stat().st_mode & 0o777 == 0o700 and var.stat().st_mode & 0o777 == 0o700

    gw.start()  # the last step, `wagate serve --config configs/production.toml`
    answer = requests.post(gw.url + "/graphql", timeout=30,
                           headers={"Authorization": f"Bearer {token}"},
                           json={"query": "{ whatsAppStatus { state } }"})
    assert answer.json() == {"data": {"whatsAppStatus": {"state": "NEW"}}}, answer.text

    # `wagate sim` typed elsewhere finds this gateway on its admin port, and says it
    # runs the real engine rather than showing an empty simulated service.
    elsewhere = gw.root / "elsewhere"
    (elsewhere / "configs").mkdir(parents=True)
    (elsewhere / "configs" / "gateway.toml").write_text(
        f"[actors]\nadmin_port = {gw.admin_port}\n", encoding="utf-8")
    sim = subprocess.run([sys.executable, "-m", "gateway.cli", "sim", "inbox"], cwd=elsewhere,
                         capture_output=True, text=True, timeout=120, env=env,
                         stdin=subprocess.DEVNULL)
    assert sim.returncode == 1, sim
    assert "does not use the simulated service" in sim.stderr
    assert sorted(p.name for p in elsewhere.iterdir()) == ["configs"]
