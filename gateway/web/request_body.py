"""Reading a GraphQL request body without trusting it.

``request.get_json`` lets a ``RecursionError`` escape on deeply nested JSON (a 500),
and graphql-core would recurse again through nested variables. Here both are turned
into one clear refusal before any GraphQL work.

JSON may also spell an unpaired UTF-16 surrogate (``"\ud800"``): valid JSON, but not
text. Python keeps it in a str that SQLite, the audit log and the WhatsApp client
cannot encode, so an actor failed on it (INTERNAL, or UNAVAILABLE while it
restarted). It is refused here, once, for every string of the request.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from gateway.core.errors import WagateError

MAX_JSON_NESTING = 32  # our deepest real input (a batch of operations with input objects) is 4


class BodyError(WagateError, ValueError):
    """The body is not usable JSON; the message says what to send instead."""


def parse_json_body(raw: bytes) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BodyError("the body must be UTF-8 encoded JSON") from None
    try:
        value = json.loads(text)
    except RecursionError:
        raise BodyError(f"the JSON body is nested more than {MAX_JSON_NESTING} levels "
                        "deep") from None
    except ValueError as exc:
        raise BodyError(f"the body is not valid JSON ({exc.msg} at character {exc.pos})"
                        if isinstance(exc, json.JSONDecodeError) else
                        "the body is not valid JSON") from None
    if nesting(value) > MAX_JSON_NESTING:
        raise BodyError(f"the JSON body is nested more than {MAX_JSON_NESTING} levels deep")
    if not all_text_valid(value):
        raise BodyError("the body contains an unpaired UTF-16 surrogate (such as \\ud800), "
                        "which is not text; send valid Unicode (pair the surrogates, or "
                        "send the characters themselves)")
    return value


def all_text_valid(value: Any) -> bool:
    """False when a string (or object key) anywhere in ``value`` is not valid Unicode
    text; iterative, as the nesting is already bounded but need not be small."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not _valid_text(item):
                return False
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


def _valid_text(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def nesting(value: Any) -> int:
    """How deeply lists and objects nest in ``value``; iterative, stops past the limit."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children: Iterable[Any]
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_JSON_NESTING:
            return deepest
        stack.extend((child, depth + 1) for child in children)
    return deepest
