"""Which wagate this is. Here rather than only in ``gateway/__init__.py`` so that the
actors (which may import nothing of ``gateway`` but ``gateway.core``) can advertise it
to the other hosts of a cluster (actors/protocol.py). Keep equal to pyproject.toml."""

__version__ = "0.1.0"
