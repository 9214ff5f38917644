"""Fixtures shared by the unit tests of the sealed stores and their working copies."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.session.sealed_store import StoreKey, generate_key_text, parse_key
from gateway.core.config import EncryptionConfig


@pytest.fixture
def key() -> StoreKey:
    """A fresh storage key."""
    return parse_key(generate_key_text(), "test")


@pytest.fixture
def enc(tmp_path: Path) -> EncryptionConfig:
    """Encryption settings with the working copies under ``tmp_path``."""
    return EncryptionConfig(key_file="unused", work_dir=str(tmp_path / "work"))
