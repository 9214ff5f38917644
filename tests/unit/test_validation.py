"""Unit tests for gateway.core.validation."""

from __future__ import annotations

import pytest

from gateway.core.validation import (
    ValidationError,
    normalize_phone_number,
    validate_message,
    validate_session_name,
)


@pytest.mark.parametrize(
    "raw",
    [
        "+1 (415) 555-2671",
        "+14155552671",
        "14155552671",
        "001 415 555 2671",
        "+1.415.555.2671",
        "+1\u00a0415\u00a0555\u00a02671",  # non-breaking spaces pasted from a web page
        "  +1-415-555-2671  ",
    ],
)
def test_normalize_phone_number_accepts_common_spellings(raw: str) -> None:
    assert normalize_phone_number(raw) == "14155552671"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("0049 170 1234567", "491701234567"),
        ("+49 170 123 4567", "491701234567"),
        ("+44 7911 123456", "447911123456"),
        ("+91 98765 43210", "919876543210"),
    ],
)
def test_normalize_phone_number_other_countries(raw: str, expected: str) -> None:
    assert normalize_phone_number(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "+",
        "00",
        "123",  # too short
        "4155552671",  # no country code: 415 is not a country code
        "+1 415 555 267",  # one digit short
        "+1 415 555 26711",  # one digit too many
        "+1 415 CALL NOW",  # letters
        "+1 415 555 2671 ext 12",
        "+1 415*555*2671",
        "+1 415 555 2671#",
        "1+4155552671",  # "+" only allowed at the start
        "++14155552671",
        "+0014155552671",  # "+" and "00" together
        "+\u0661\u0664\u0661\u0665\u0665\u0665\u0665\u0662\u0666\u0667\u0661",  # non-ASCII digits
        "+999 1234567",  # unassigned country code
    ],
)
def test_normalize_phone_number_rejects(raw: str) -> None:
    with pytest.raises(ValidationError) as info:
        normalize_phone_number(raw)
    err = info.value
    assert err.code == "INVALID_NUMBER"
    assert err.field == "phoneNumber"
    assert "country code" in err.message
    # With a country's code given, the advice is about the digits, not the code.
    assert ("+14155552671" in err.message) != ("check its digits" in err.message), err
    assert str(err) == err.message


@pytest.mark.parametrize("raw,country,example", [
    ("+44 7700 900123", "country code +44 (United Kingdom and others)", "+44 7400 123456"),
    ("0044 7700 900123", "country code +44 (United Kingdom and others)", "+44 7400 123456"),
    ("+49 151 2345", "country code +49 (Germany)", "+49 1512 3456789"),
    ("+1 415 555 267", "country code +1 (United States and others)", "+1 201-555-0123"),
])
def test_a_number_with_its_country_code_is_not_told_to_include_one(
        raw: str, country: str, example: str) -> None:
    """+44 7700 900123 (a range reserved for fiction) has a country code: the message
    says the number is not valid for that country, and what one there looks like."""
    with pytest.raises(ValidationError) as info:
        normalize_phone_number(raw)
    message = info.value.message
    assert message == (f"phoneNumber '{raw}' is not a valid number for {country}; check its "
                       f"digits (a mobile number there looks like {example})")
    assert "include the country code" not in message


def test_invalid_number_message_quotes_input() -> None:
    with pytest.raises(ValidationError) as info:
        normalize_phone_number("12ab")
    assert info.value.message.startswith("phoneNumber '12ab' is not a valid international number")


def test_invalid_number_message_truncates_huge_input() -> None:
    raw = "x" * 10_000
    with pytest.raises(ValidationError) as info:
        normalize_phone_number(raw)
    assert len(info.value.message) < 200


def test_validation_error_is_an_exception_with_attributes() -> None:
    err = ValidationError("INVALID_MESSAGE", "do this", "message")
    assert isinstance(err, Exception)
    assert (err.code, err.message, err.field) == ("INVALID_MESSAGE", "do this", "message")
    assert "INVALID_MESSAGE" in repr(err)


@pytest.mark.parametrize(
    "text",
    ["hi", "x", "line one\nline two\r\n", "  padded  ", "\U0001f600 emoji", "a" * 4096],
)
def test_validate_message_returns_text_unchanged(text: str) -> None:
    assert validate_message(text, 4096) is text


def test_validate_message_counts_code_points_not_bytes() -> None:
    text = "\u00e9" * 10  # 20 bytes in UTF-8, 10 code points
    assert validate_message(text, 10) == text
    with pytest.raises(ValidationError):
        validate_message(text, 9)


@pytest.mark.parametrize("text", ["", " ", "\n\n", "\t \r\n", "\u00a0\u2003"])
def test_validate_message_rejects_empty_or_blank(text: str) -> None:
    with pytest.raises(ValidationError) as info:
        validate_message(text, 4096)
    assert info.value.code == "INVALID_MESSAGE"
    assert info.value.field == "message"
    assert "empty" in info.value.message


def test_validate_message_rejects_too_long_with_length_and_limit() -> None:
    with pytest.raises(ValidationError) as info:
        validate_message("a" * 4097, 4096)
    err = info.value
    assert err.code == "INVALID_MESSAGE"
    assert err.field == "message"
    assert "4097" in err.message
    assert "4096" in err.message


def test_validate_message_limit_is_inclusive() -> None:
    assert validate_message("abc", 3) == "abc"
    with pytest.raises(ValidationError):
        validate_message("abcd", 3)


@pytest.mark.parametrize("text", ["\x00", "hello\x00world", "hi\x00"])
def test_validate_message_rejects_nul(text: str) -> None:
    with pytest.raises(ValidationError) as info:
        validate_message(text, 4096)
    assert info.value.code == "INVALID_MESSAGE"
    assert "NUL" in info.value.message


@pytest.mark.parametrize("name", ["default", "a", "Shop_1", "team-b", "_", "A" * 64, "0"])
def test_validate_session_name_accepts(name: str) -> None:
    assert validate_session_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "..",
        ".",
        "../etc",
        "a/b",
        "a\\b",
        "/abs",
        ".hidden",
        "with space",
        "tab\t",
        "trailing\n",
        "nul\x00",
        "caf\u00e9",
        "\uff41",  # full-width letter
        "A" * 65,
        "a.b",
    ],
)
def test_validate_session_name_rejects(name: str) -> None:
    with pytest.raises(ValidationError) as info:
        validate_session_name(name)
    err = info.value
    assert err.code == "INVALID_SESSION"
    assert err.field == "session"
    assert "A-Z" in err.message and "0-9" in err.message and "64" in err.message


@pytest.mark.parametrize(("raw", "modern"), [
    ("+52 1 55 1234 5678", "+525512345678"),  # Mexico dropped the mobile 1 in 2019
    ("+55 21 8765 4321", "+5521987654321"),  # Brazil's mobiles have a ninth digit
])
def test_an_old_spelling_of_a_mobile_is_refused_with_the_modern_one_suggested(
        raw: str, modern: str) -> None:
    with pytest.raises(ValidationError) as info:
        normalize_phone_number(raw)
    assert info.value.code == "INVALID_NUMBER"
    assert f"did you mean {modern}?" in info.value.message
    assert normalize_phone_number(modern) == modern.lstrip("+")  # and that one is valid
