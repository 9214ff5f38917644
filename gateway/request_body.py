"""Reading a GraphQL request body without trusting it.

``request.get_json`` lets a ``RecursionError`` escape on deeply nested JSON (a 500),
and graphql-core would recurse again through nested variables. Here both are turned
into one clear refusal before any GraphQL work.
"""

from __future__ import annotations

import json
from typing import Any

MAX_JSON_NESTING = 32  # our deepest real input (a batch of operations with input objects) is 4


class BodyError(ValueError):
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
    return value


def nesting(value: Any) -> int:
    """How deeply lists and objects nest in ``value``; iterative, stops past the limit."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
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
