"""Unit tests for gateway.core.recipients: one rate-limit key per WhatsApp account."""

from __future__ import annotations

import phonenumbers
import pytest

from gateway.core.recipients import rate_limit_key, suggested_number
from gateway.core.validation import normalize_phone_number


@pytest.mark.parametrize(("spellings", "key"), [
    # Argentina: WhatsApp's 549 + area + number; the 9 is often left out, and the
    # domestic 15 is turned into the 9 by validation already.
    (["+54 9 11 2345-6789", "+54 11 2345-6789", "+54 11 15 2345 6789", "0054 11 2345 6789",
      "+5491123456789"], "5491123456789"),
    (["+54 9 2944 12 3456", "+54 2944 12 3456"], "5492944123456"),
    (["+54 11 4321 0000", "+54 9 11 4321 0000"], "5491143210000"),
    # Mexico: one spelling passes validation; the key is the modern one.
    (["+52 55 1234 5678", "+525512345678"], "525512345678"),
    # Brazil: the nine-digit mobile.
    (["+55 21 98765 4321", "+5521987654321"], "5521987654321"),
])
def test_every_spelling_of_one_line_has_one_rate_limit_key(spellings: list[str],
                                                           key: str) -> None:
    assert {rate_limit_key(normalize_phone_number(s)) for s in spellings} == {key}


@pytest.mark.parametrize(("number", "key"), [
    ("5215512345678", "525512345678"),  # Mexico's old mobile 1, should one get through
    ("552187654321", "5521987654321"),  # Brazil's eight-digit mobile, likewise
    ("541123456789", "5491123456789"),
])
def test_old_spellings_map_to_the_modern_number(number: str, key: str) -> None:
    assert rate_limit_key(number) == key


@pytest.mark.parametrize("number", [
    "14155552671", "491701234567", "447911123456", "919876543210",
    "548001234567",  # Argentine toll-free: no mobile with a 9 in front
    "551134567890",  # a Brazilian landline (starts with 3): no ninth digit
    "525512345678", "5491123456789", "5521987654321",
])
def test_other_numbers_keep_their_own_key(number: str) -> None:
    assert rate_limit_key(number) == number


def test_different_lines_keep_different_keys() -> None:
    keys = {rate_limit_key(n) for n in ("5491123456789", "5491123456780", "541123456780",
                                         "5521987654321", "5521987654320")}
    assert len(keys) == 4  # 541123456780 and 5491123456780 are one line


def test_only_argentina_mexico_and_brazil_are_rewritten_and_keys_are_valid() -> None:
    """Over libphonenumber's example number of every region and type: a key differs
    from the number only for the three countries, and is itself a valid mobile."""
    checked = 0
    for region in phonenumbers.SUPPORTED_REGIONS:
        for kind in phonenumbers.PhoneNumberType.values():
            example = phonenumbers.example_number_for_type(region, kind)
            if example is None or not phonenumbers.is_valid_number(example):
                continue
            number = phonenumbers.format_number(
                example, phonenumbers.PhoneNumberFormat.E164).lstrip("+")
            key = rate_limit_key(number)
            checked += 1
            if key != number:
                assert region == "AR" and number.startswith("54"), (region, number, key)
                parsed = phonenumbers.parse("+" + key, None)
                assert phonenumbers.is_valid_number(parsed), key
    assert checked > 500


@pytest.mark.parametrize(("number", "suggestion"), [
    ("5215512345678", "525512345678"), ("552187654321", "5521987654321"),
    ("14155552671", None), ("5212345", None), ("551134567890", None),
])
def test_suggested_number_for_refused_old_spellings(number: str,
                                                    suggestion: str | None) -> None:
    assert suggested_number(number) == suggestion
