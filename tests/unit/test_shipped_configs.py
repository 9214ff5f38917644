"""The configs we ship must load, and the example must document every key."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from gateway.core.config import Config, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("name", ["gateway.example.toml", "demo.toml", "production.toml"])
def test_shipped_config_loads(name: str) -> None:
    load_config(CONFIGS / name)


def test_example_documents_every_key_with_its_default() -> None:
    example = tomllib.loads((CONFIGS / "gateway.example.toml").read_text())
    defaults = dataclasses.asdict(Config())
    assert set(example) == set(defaults)
    for section, values in defaults.items():
        assert set(example[section]) == set(values), section
        for key, value in values.items():
            shown = example[section][key]
            expected = list(value) if isinstance(value, tuple) else value
            assert shown == expected, f"{section}.{key}: example says {shown!r}, default {value!r}"


def test_demo_uses_the_simulator_and_production_the_real_engine() -> None:
    assert load_config(CONFIGS / "demo.toml").transport.engine == "simulator"
    assert load_config(CONFIGS / "production.toml").transport.engine == "neonize"


def _flat(config: Config) -> dict[str, object]:
    return {f"{section}.{key}": value
            for section, values in dataclasses.asdict(config).items()
            for key, value in values.items()}


def test_demo_config_is_the_demo_with_the_differences_its_header_names() -> None:
    """configs/demo.toml claims to be `wagate serve --demo` as a file: everything but
    the two settings its header lists is what --demo runs (it used to lack the
    demo's "no tokens" and so refused to start)."""
    from gateway.cli.wagate import DEMO_OVERRIDES

    demo, flag = _flat(load_config(CONFIGS / "demo.toml")), _flat(load_config(None,
                                                                           DEMO_OVERRIDES))
    differ = {key for key in flag if demo[key] != flag[key]}
    assert differ == {"storage.data_dir", "http.workers"}, differ
    header = (CONFIGS / "demo.toml").read_text(encoding="utf-8").split("\n\n", 1)[0]
    assert "./data-demo" in header and "one web worker" in header


def test_only_the_demo_lets_a_loopback_webhook_receiver_through() -> None:
    """The README's "Webhooks in two minutes" registers an http receiver on 127.0.0.1
    against the demo; the embedded defaults and the production file allow no such url."""
    from gateway.cli.wagate import DEMO_OVERRIDES

    for demo in (load_config(CONFIGS / "demo.toml"), load_config(None, DEMO_OVERRIDES)):
        assert demo.webhooks.allow_insecure == ("127.0.0.0/8", "localhost")
    assert load_config(None).webhooks.allow_insecure == ()
    assert load_config(CONFIGS / "production.toml").webhooks.allow_insecure == ()
