"""wagate: a self-hosted WhatsApp gateway."""

from gateway.core.version import __version__

__all__ = ["__version__"]
