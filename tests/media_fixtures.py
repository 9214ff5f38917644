"""Tiny valid files of every media kind, made in the test (no binary fixtures in the
repository): what libmagic recognises, and what WhatsApp would accept as that kind."""

from __future__ import annotations

import io
import struct


def _image(fmt: str) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (2, 2), (200, 30, 30)).save(out, fmt)
    return out.getvalue()


def png() -> bytes:
    return _image("PNG")


def jpeg() -> bytes:
    return _image("JPEG")


def webp() -> bytes:
    return _image("WEBP")


def mp4() -> bytes:
    """An ISO media file: an ``ftyp`` box and a ``free`` box."""
    return (struct.pack(">I", 24) + b"ftypisom" + struct.pack(">I", 512) + b"isomiso2"
            + struct.pack(">I", 16) + b"free" + b"wagate-t")


def pdf() -> bytes:
    return b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"


def _ogg_crc(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) & 0xFFFFFFFF if crc & 0x80000000 else (
                crc << 1) & 0xFFFFFFFF
    return crc


def _ogg_page(payload: bytes, sequence: int, flags: int) -> bytes:
    page = (b"OggS" + bytes([0, flags]) + struct.pack("<qIII", 0, 1, sequence, 0)
            + bytes([1, len(payload)]) + payload)
    return page[:22] + struct.pack("<I", _ogg_crc(page)) + page[26:]


def ogg_opus() -> bytes:
    """An Ogg stream with the two Opus header packets (RFC 7845)."""
    head = b"OpusHead" + bytes([1, 1]) + struct.pack("<HIhB", 312, 48000, 0, 0)
    tags = b"OpusTags" + struct.pack("<I", 6) + b"wagate" + struct.pack("<I", 0)
    return _ogg_page(head, 0, 2) + _ogg_page(tags, 1, 0)


def ogg_vorbis() -> bytes:
    return _ogg_page(b"\x01vorbis" + bytes(23), 0, 2)


def mp3() -> bytes:
    return b"ID3\x03\x00\x00\x00\x00\x00\x00" + b"\xff\xfb\x90\x00" + bytes(200)


BY_KIND = {"IMAGE": png, "VIDEO": mp4, "AUDIO": mp3, "VOICE": ogg_opus,
           "DOCUMENT": pdf, "STICKER": webp}
