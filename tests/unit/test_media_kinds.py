"""The media rules: a file's type from its bytes must fit its kind, sizes per kind."""

from __future__ import annotations

import pytest

from actors.media.kinds import (
    MAX_CAPTION_CHARS,
    MB,
    Kind,
    MediaLimits,
    check_caption,
    check_file_name,
    check_media,
    parse_kind,
)
from gateway.core.config import ConfigError, MediaConfig, load_config
from gateway.core.errors import GatewayError
from tests import media_fixtures as fx

LIMITS = MediaLimits.from_config(MediaConfig())


@pytest.mark.parametrize(("kind", "make", "mime"), [
    ("IMAGE", fx.png, "image/png"), ("IMAGE", fx.jpeg, "image/jpeg"),
    ("VIDEO", fx.mp4, "video/mp4"), ("AUDIO", fx.mp3, "audio/mpeg"),
    ("AUDIO", fx.ogg_opus, "audio/ogg"), ("VOICE", fx.ogg_opus, "audio/ogg"),
    ("DOCUMENT", fx.pdf, "application/pdf"), ("DOCUMENT", fx.png, "image/png"),
    ("STICKER", fx.webp, "image/webp")])
def test_each_kind_accepts_its_types(kind: str, make: object, mime: str) -> None:
    data = make()  # type: ignore[operator]
    assert check_media(Kind(kind), data, len(data), LIMITS) == mime


@pytest.mark.parametrize(("kind", "make"), [
    ("IMAGE", fx.pdf), ("IMAGE", fx.webp), ("VIDEO", fx.png), ("STICKER", fx.png),
    ("VOICE", fx.ogg_vorbis), ("VOICE", fx.mp3), ("AUDIO", fx.pdf)])
def test_a_file_that_does_not_fit_its_kind_is_a_type_mismatch(kind: str, make: object) -> None:
    data = make()  # type: ignore[operator]
    with pytest.raises(GatewayError) as info:
        check_media(Kind(kind), data, len(data), LIMITS)
    assert info.value.code == "INVALID_MEDIA"
    assert info.value.extensions["reason"] == "TYPE_MISMATCH"
    assert kind in info.value.message


def test_the_name_does_not_matter_only_the_bytes() -> None:
    """A PDF whose first bytes claim nothing else stays a PDF: the type is sniffed."""
    with pytest.raises(GatewayError):
        check_media(Kind.IMAGE, fx.pdf(), 10, LIMITS)


def test_empty_is_unreadable_and_over_the_limit_is_too_large() -> None:
    with pytest.raises(GatewayError) as info:
        check_media(Kind.DOCUMENT, b"", 0, LIMITS)
    assert info.value.extensions["reason"] == "UNREADABLE"
    with pytest.raises(GatewayError) as info:
        check_media(Kind.IMAGE, fx.png(), 5 * MB + 1, LIMITS)
    assert info.value.extensions == {"reason": "TOO_LARGE", "limit": 5 * MB}
    assert check_media(Kind.IMAGE, fx.png(), 5 * MB, LIMITS) == "image/png"  # the edge is in


def test_limits_come_from_the_config() -> None:
    limits = MediaLimits.from_config(MediaConfig(max_sticker_mb=0.001))
    assert limits.max_bytes[Kind.STICKER] == int(0.001 * MB)
    assert limits.largest == 100 * MB
    assert MediaLimits.from_config(MediaConfig()).max_bytes[Kind.STICKER] == MB // 2


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), 1e308, 4096])
def test_bad_limits_are_refused_at_load(bad: float) -> None:
    for key in ("media.max_image_mb", "media.max_total_mb", "media.retention_days"):
        with pytest.raises(ConfigError) as info:
            load_config(overrides={key: bad if key != "media.max_total_mb" or bad != 4096
                                   else 1e12})
        assert key in str(info.value)


def test_unknown_kind_and_captions() -> None:
    with pytest.raises(GatewayError):
        parse_kind("GIF")
    assert check_caption("x" * MAX_CAPTION_CHARS, Kind.IMAGE) == "x" * MAX_CAPTION_CHARS
    assert check_caption("", Kind.IMAGE) is None
    for caption, kind in (("x" * (MAX_CAPTION_CHARS + 1), Kind.IMAGE), ("a\x00", Kind.VIDEO),
                          ("hi", Kind.STICKER), ("hi", Kind.VOICE)):
        with pytest.raises(GatewayError) as info:
            check_caption(caption, kind)
        assert info.value.extensions == {"field": "caption"}


def test_file_names_lose_their_path() -> None:
    assert check_file_name("../../etc/report.pdf") == "report.pdf"
    assert check_file_name(None) is None
    for bad in ("dir/", "a\nb", "x" * 256):
        with pytest.raises(GatewayError):
            check_file_name(bad)
