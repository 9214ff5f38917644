"""Which WhatsApp account a phone number reaches, for keys that must not be split.

``normalize_phone_number`` keeps what the caller wrote (only separators and the
``+``/``00`` go), so in three countries two spellings of one line stay two strings:

- Argentina: WhatsApp addresses a mobile as 54 9 + area code + number (the "9" is how
  Argentine mobiles are dialled from abroad; domestically it is 0 + area + 15 +
  number, which libphonenumber already turns into 549...). People also write the
  mobile without the 9 (+54 11 2345-6789), which is a valid landline spelling, so
  both pass validation. Landline and mobile numbers come from separate blocks, so the
  two spellings are one line.
- Mexico: mobiles used to be dialled from abroad as +52 1 + ten digits and WhatsApp's
  ids for Mexican accounts carried that 1 for years; since 2019 the number is +52 +
  ten digits for every line and WhatsApp delivers a 521... address to the 52... one.
  libphonenumber refuses the 1 today, but the key does not depend on that.
- Brazil: mobiles got a ninth digit (a leading 9) between 2012 and 2016. WhatsApp ids
  of accounts registered before that still lack it, newer ones have it, and only
  WhatsApp's servers know which one an account has. libphonenumber refuses the old
  eight-digit mobile spelling, but the key does not depend on that either.

A per-recipient rate limit exists so that one person is not flooded (and the account
not banned for it): every spelling of one line must count against one limit. The
key is the number WhatsApp delivers to in the modern numbering plan: 549... for
Argentine mobiles, 52 + ten digits for Mexico, the nine-digit mobile for Brazil.
Merging spellings can only make a limit stricter, never looser. What is sent, stored
and shown stays the caller's number as normalised (the API's promise); see the
README, "Phone numbers and rate limits".
"""

from __future__ import annotations

import phonenumbers

__all__ = ["rate_limit_key", "suggested_number"]

_MOBILE_TYPES = frozenset({phonenumbers.PhoneNumberType.MOBILE,
                           phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE})


def rate_limit_key(number: str) -> str:
    """The key of ``number``'s per-recipient rate limits.

    ``number`` is E.164 digits without "+" (what ``normalize_phone_number`` returns).
    Only the three countries above are rewritten, and only to a spelling that is
    itself a valid mobile number, so no other number can change its key.
    """
    alternative = _modern_mobile(number)
    return alternative if alternative is not None else number


def suggested_number(number: str) -> str | None:
    """For a number validation refuses: the modern spelling of the same mobile line
    (Mexico's dropped 1, Brazil's ninth digit), to suggest in the error message."""
    if number.startswith(("521", "55")):
        return _modern_mobile(number)
    return None


def _modern_mobile(number: str) -> str | None:
    if number.startswith("54") and not number.startswith("549"):
        return _mobile("549" + number[2:])  # Argentina: add the mobile 9
    if number.startswith("521") and len(number) == 13:
        return _mobile("52" + number[3:])  # Mexico: drop the old mobile 1
    if number.startswith("55") and len(number) == 12 and number[4] in "6789":
        return _mobile(number[:4] + "9" + number[4:])  # Brazil: the ninth digit
    return None


def _mobile(candidate: str) -> str | None:
    """``candidate`` if it is a valid mobile number, else None."""
    try:
        parsed = phonenumbers.parse("+" + candidate, None)
    except phonenumbers.NumberParseException:
        return None
    if phonenumbers.is_valid_number(parsed) and \
            phonenumbers.number_type(parsed) in _MOBILE_TYPES:
        return candidate
    return None
