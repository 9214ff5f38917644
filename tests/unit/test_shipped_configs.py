"""The configs we ship must load, and the example must document every key."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from gateway.config import Config, load_config

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
