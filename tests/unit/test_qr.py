"""Unit tests for gateway.api.qr."""

from __future__ import annotations

import base64
import io
import xml.etree.ElementTree as ET

import pytest
import qrcode
import qrcode.constants
from PIL import Image

from gateway.api.qr import BORDER, BOX_SIZE, qr_png_base64, qr_svg_data_uri

# Shaped like a WhatsApp pairing payload: ref,noise key,identity key,adv secret.
PAYLOAD = "2@AbCdEfGhIjKlMnOpQrStUvWxYz0123456789+/==,NoiseKey+/=,IdentityKey+/=,AdvSecret+/="
SVG_PREFIX = "data:image/svg+xml;base64,"


def expected_matrix(text: str) -> list[list[bool]]:
    code = qrcode.QRCode(
        error_correction=qrcode.constants.ERROR_CORRECT_M, box_size=BOX_SIZE, border=BORDER
    )
    code.add_data(text)
    code.make(fit=True)
    return code.get_matrix()


def test_png_is_base64_without_prefix_and_decodes() -> None:
    encoded = qr_png_base64(PAYLOAD)
    assert not encoded.startswith("data:")
    raw = base64.b64decode(encoded, validate=True)
    assert raw.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(raw))
    assert image.format == "PNG"
    assert image.width > 0 and image.width == image.height


@pytest.mark.parametrize("text", [PAYLOAD, "hello", "x" * 300])
def test_png_modules_match_matrix(text: str) -> None:
    image = Image.open(io.BytesIO(base64.b64decode(qr_png_base64(text)))).convert("L")
    matrix = expected_matrix(text)
    assert image.size == (len(matrix) * BOX_SIZE, len(matrix) * BOX_SIZE)
    for r, row in enumerate(matrix):
        for c, dark in enumerate(row):
            pixel = image.getpixel((c * BOX_SIZE + BOX_SIZE // 2, r * BOX_SIZE + BOX_SIZE // 2))
            assert pixel == (0 if dark else 255), (r, c)
    # The quiet zone is white.
    assert not any(matrix[0]) and not any(row[0] for row in matrix)


def test_png_uses_error_correction_m() -> None:
    # Level M fits 14 bytes in version 1; level L would fit 17 in the same 21x21 grid.
    image = Image.open(io.BytesIO(base64.b64decode(qr_png_base64("a" * 15))))
    assert image.width == (25 + 2 * BORDER) * BOX_SIZE  # version 2 (25 modules), not 1


def test_svg_data_uri_decodes_to_svg_with_single_path() -> None:
    uri = qr_svg_data_uri(PAYLOAD)
    assert uri.startswith(SVG_PREFIX)
    document = base64.b64decode(uri[len(SVG_PREFIX):], validate=True).decode("utf-8")
    assert "<svg" in document
    root = ET.fromstring(document)
    ns = "{http://www.w3.org/2000/svg}"
    assert root.tag == f"{ns}svg"
    paths = root.findall(f"{ns}path")
    assert len(paths) == 1
    assert paths[0].get("d")
    backgrounds = root.findall(f"{ns}rect")
    assert [rect.get("fill") for rect in backgrounds] == ["white"]


def test_same_input_same_output() -> None:
    assert qr_png_base64("same") == qr_png_base64("same")
    assert qr_svg_data_uri("same") == qr_svg_data_uri("same")
    qr_png_base64.cache_clear()
    qr_svg_data_uri.cache_clear()
    # Deterministic even when re-rendered, not just when served from the cache.
    first_png, first_svg = qr_png_base64("same"), qr_svg_data_uri("same")
    qr_png_base64.cache_clear()
    qr_svg_data_uri.cache_clear()
    assert qr_png_base64("same") == first_png
    assert qr_svg_data_uri("same") == first_svg


def test_different_input_different_output() -> None:
    assert qr_png_base64("code-1") != qr_png_base64("code-2")
    assert qr_svg_data_uri("code-1") != qr_svg_data_uri("code-2")


def test_results_are_cached() -> None:
    qr_png_base64.cache_clear()
    qr_svg_data_uri.cache_clear()
    qr_png_base64("cached")
    qr_png_base64("cached")
    qr_svg_data_uri("cached")
    qr_svg_data_uri("cached")
    assert qr_png_base64.cache_info().hits == 1
    assert qr_svg_data_uri.cache_info().hits == 1
    assert qr_png_base64.cache_info().maxsize == 64
    assert qr_svg_data_uri.cache_info().maxsize == 64
