"""configs/demo.toml starts on its own, as its header says (it used to refuse: first
for the missing API tokens, then for the missing storage key), and serves the demo."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import requests

from tests.integration.harness import Gateway

DEMO = Path(__file__).resolve().parents[2] / "configs" / "demo.toml"


def test_the_demo_config_starts_on_its_own_and_serves_without_tokens(
        make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway()
    # The shipped file, only with its data_dir moved into this test's directory.
    text = DEMO.read_text(encoding="utf-8")
    assert 'data_dir = "./data-demo"' in text
    gw.config_path.write_text(text.replace('"./data-demo"', f'"{gw.data_dir}"'),
                              encoding="utf-8")
    shutil.rmtree(gw.data_dir, ignore_errors=True)
    gw.start()
    anonymous = requests.post(gw.url + "/graphql", json={
        "query": "mutation { whatsAppConnect }"}, timeout=30)
    assert anonymous.json() == {"data": {"whatsAppConnect": True}}, anonymous.text
    gw.wait_state("QR_PENDING")
    gw.sim("scan")
    assert gw.wait_state("CONNECTED")["phoneNumber"].startswith("+")
