"""The lease tests' PostgreSQL fixtures (``pg_cluster``, ``pg_dsn``) are in the tests'
root conftest, shared with the outbox store's tests that run on both backends."""

from __future__ import annotations

from tests.conftest import pg_bindir_or_skip

__all__ = ["pg_bindir_or_skip"]
