"""Input checks shared by the API and the actors, with errors worded for the caller.

They live in one pure module so that the web tier can refuse bad input before it
costs an actor round trip, and the actors can re-check the same rules without
importing Flask. Every error carries a stable ``code`` (for programs), a ``field``
(so a form can highlight the right input) and a ``message`` that says what to do,
because a GraphQL client usually shows the message to a person as-is.
"""

from __future__ import annotations

import re

import phonenumbers

from gateway.core.errors import WagateError
from gateway.core.names import SESSION_NAME_RULE, is_session_name
from gateway.core.recipients import suggested_number

__all__ = [
    "ValidationError",
    "e164",
    "normalize_phone_number",
    "validate_message",
    "validate_session_name",
]

# Separators people type or paste between digit groups. Any Unicode whitespace is
# accepted because numbers copied from web pages often contain non-breaking spaces.
_SEPARATORS = re.compile(r"[\s.\-()]")
_ASCII_DIGITS = re.compile(r"[0-9]+")
# Echoing a huge bogus input back would bloat error responses and logs.
_ECHO_LIMIT = 40
_EXAMPLE_NUMBER = "+14155552671"


class ValidationError(WagateError):
    """Bad user input, as opposed to a gateway fault.

    A public error of the tree (gateway/core/errors.py): the API layer shows its
    ``code`` and ``field`` instead of a generic failure.
    """

    public = True

    code: str
    message: str
    field: str

    def __init__(self, code: str, message: str, field: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.extensions = {"field": field}

    def __repr__(self) -> str:
        return (
            f"ValidationError(code={self.code!r}, field={self.field!r}, "
            f"message={self.message!r})"
        )


def _echo(raw: str) -> str:
    return raw if len(raw) <= _ECHO_LIMIT else raw[:_ECHO_LIMIT] + "..."


def _invalid_number(raw: str, digits: str = "") -> ValidationError:
    """``digits``: what the number looked like without separators, when it was all
    digits; an old spelling of a mobile (Mexico's 1, Brazil's missing ninth digit) gets
    the modern one suggested, since that is the usual reason such a number fails."""
    modern = suggested_number(digits) if digits else None
    hint = (f" (an old spelling of a mobile number: did you mean +{modern}?)"
            if modern else "")
    return ValidationError(
        "INVALID_NUMBER",
        f"phoneNumber '{_echo(raw)}' is not a valid international number; "
        f"include the country code, e.g. {_EXAMPLE_NUMBER}{hint}",
        "phoneNumber",
    )


def _country_code(parsed: phonenumbers.PhoneNumber) -> int:
    """The number's country code. ``parse`` always sets it, the type says it may not:
    0 (no country, region "ZZ") stands for the case that does not happen."""
    return parsed.country_code or 0


def _invalid_for_country(raw: str, parsed: phonenumbers.PhoneNumber,
                         digits: str) -> ValidationError:
    """A number written with its country code (``+`` or ``00``) whose digits are not a
    number of that country: "include the country code" would be wrong advice. Names the
    country (its main one, when several share the code, as +1 and +44 are) and shows
    what a mobile number there looks like."""
    code = _country_code(parsed)
    main = phonenumbers.region_code_for_country_code(code)
    example = phonenumbers.example_number_for_type(main, phonenumbers.PhoneNumberType.MOBILE)
    # Imported here, on this error path only: the geocoder loads phonenumbers' whole
    # geographic data (about 0.5 s of CPU), which every gateway process paid at start.
    from phonenumbers import geocoder

    name = geocoder.country_name_for_number(example, "en") if example is not None else ""
    shared = len(phonenumbers.region_codes_for_country_code(code)) > 1
    where = f"country code +{code}" + (f" ({name}{' and others' if shared else ''})"
                                       if name else "")
    modern = suggested_number(digits)
    if modern:
        hint = f"; an old spelling of a mobile number: did you mean +{modern}?"
    elif example is not None:
        shown = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
        hint = f"; check its digits (a mobile number there looks like {shown})"
    else:
        hint = "; check its digits"
    return ValidationError(
        "INVALID_NUMBER",
        f"phoneNumber '{_echo(raw)}' is not a valid number for {where}{hint}",
        "phoneNumber",
    )


def normalize_phone_number(raw: str) -> str:
    """Return the number as E.164 digits without the "+" (``"14155552671"``).

    The country code is required because the gateway serves accounts in any
    country and has no sensible default region to guess from: a guess could send
    a message to a stranger. The result is the canonical key used for per-number
    rate limits and for the WhatsApp JID, so two spellings of one number must
    normalise to the same string. Only common separators are stripped; anything
    else (letters, "*", "#", an extension) is rejected rather than silently dropped.
    """
    digits = _SEPARATORS.sub("", raw)
    international = digits.startswith(("+", "00"))
    if digits.startswith("+"):
        digits = digits[1:]
    elif digits.startswith("00"):
        digits = digits[2:]
    if not _ASCII_DIGITS.fullmatch(digits):
        raise _invalid_number(raw)
    try:
        parsed = phonenumbers.parse("+" + digits, None)
    except phonenumbers.NumberParseException:
        raise _invalid_number(raw) from None
    if not phonenumbers.is_valid_number(parsed):
        if international and phonenumbers.region_code_for_country_code(
                _country_code(parsed)) not in ("ZZ", "001"):  # a country's code, not unknown
            raise _invalid_for_country(raw, parsed, digits)
        raise _invalid_number(raw, digits)
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164).lstrip("+")


def e164(digits: str | None) -> str | None:
    """A stored number (digits, the key of limits and JIDs) as the API shows it: E.164
    with its ``+`` (``+14155552671``), the form people and other APIs expect, in every
    answer, so a number read back can be compared and sent as it is."""
    return f"+{digits}" if digits else digits


def bounded_text(text: str, max_chars: int) -> tuple[str, bool]:
    """``text`` cut to ``max_chars`` code points, and whether it was cut.

    For what others write to a linked account (``messages.max_incoming_text_chars``):
    unlike an outgoing message it cannot be refused back to its author, and refusing it
    would lose the reply, so it is kept, shortened, and flagged."""
    if len(text) <= max_chars:
        return text, False
    return text[:max(max_chars, 0)], True


def validate_message(text: str, max_length: int) -> str:
    """Return ``text`` unchanged if it can be sent, else raise INVALID_MESSAGE.

    The text is never trimmed or rewrapped: what the caller sent is what the
    recipient reads. The limit counts Unicode code points (``len``), the unit the
    configuration documents, so an emoji counts as one or two depending on how it
    is composed, never as its UTF-8 byte length. NUL is refused because it cuts
    strings short in the native client library and in log pipelines.
    """
    if not text or text.isspace():
        raise ValidationError(
            "INVALID_MESSAGE",
            "message is empty; write at least one visible character",
            "message",
        )
    if len(text) > max_length:
        raise ValidationError(
            "INVALID_MESSAGE",
            f"message is {len(text)} characters long but the limit is {max_length}; "
            "shorten it or split it into several messages",
            "message",
        )
    if "\x00" in text:
        raise ValidationError(
            "INVALID_MESSAGE",
            "message contains a NUL character (\\x00); remove it and send again",
            "message",
        )
    return text


def validate_session_name(name: str) -> str:
    """Return ``name`` unchanged if it follows the one session-name rule
    (``gateway/core/names.py``, which says why it is so strict), else raise
    INVALID_SESSION."""
    if not is_session_name(name):
        raise ValidationError(
            "INVALID_SESSION",
            f"session '{_echo(name)}' is not a valid session name; use {SESSION_NAME_RULE}",
            "session",
        )
    return name
