"""QR code images for the pairing flow, in the two forms the API hands out.

A PNG (base64) suits clients that save or display an image file; an SVG data URI
can be dropped straight into an ``<img src>`` and stays sharp at any size. Both
are cached because clients poll the session status about once a second while
WhatsApp rotates the code only every 20 seconds or so, and rendering a QR code
is by far the most expensive part of answering that poll.
"""

from __future__ import annotations

import base64
import functools
import io
from typing import Any

import qrcode
import qrcode.constants
import qrcode.image.pil
import qrcode.image.svg

__all__ = ["qr_png_base64", "qr_svg_data_uri"]

# Medium error correction survives a phone camera's glare and moiré on a monitor
# while keeping the code small; 8-pixel modules and the standard 4-module quiet
# zone scan reliably from a screen without scaling.
_ERROR_CORRECTION = qrcode.constants.ERROR_CORRECT_M
BOX_SIZE = 8
BORDER = 4


def _make(text: str) -> qrcode.QRCode[Any]:
    code = qrcode.QRCode(error_correction=_ERROR_CORRECTION, box_size=BOX_SIZE, border=BORDER)
    code.add_data(text)
    code.make(fit=True)
    return code


@functools.lru_cache(maxsize=64)
def qr_png_base64(text: str) -> str:
    """Base64 of a black-on-white PNG of ``text``, without a ``data:`` prefix.

    No prefix, because API clients that write the image to a file would only
    have to strip it again.
    """
    image = _make(text).make_image(
        image_factory=qrcode.image.pil.PilImage, fill_color="black", back_color="white"
    )
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


@functools.lru_cache(maxsize=64)
def qr_svg_data_uri(text: str) -> str:
    """``data:image/svg+xml;base64,...`` of ``text`` as one SVG path on white.

    A single path (rather than one rect per module) keeps the document small and
    renders without hairline gaps between modules; the white background keeps the
    code scannable on dark-themed pages, since scanners need a light quiet zone.
    """
    image = _make(text).make_image(image_factory=qrcode.image.svg.SvgPathFillImage)
    buffer = io.BytesIO()
    image.save(buffer)
    return "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
