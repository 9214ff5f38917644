"""Unit tests for the document and body checks that run before any GraphQL work."""

from __future__ import annotations

import pytest
from graphql import GraphQLError, parse, validate

from gateway.graphql_limits import MAX_NESTING, check_nesting, limit_rules
from gateway.request_body import BodyError, parse_json_body
from gateway.resolvers import build_schema


def nested(levels: int) -> str:
    return "{ " + "a { " * (levels - 1) + "b" + " }" * levels


def test_bracket_nesting_up_to_the_limit_passes_and_beyond_is_refused() -> None:
    check_nesting(nested(MAX_NESTING))
    check_nesting("{ a(x: " + "[" * (MAX_NESTING - 2) + "]" * (MAX_NESTING - 2) + ") }")
    for text in (nested(MAX_NESTING + 1), nested(100_000),
                 "{ a(x: " + "[" * MAX_NESTING + "]" * MAX_NESTING + ") }"):
        with pytest.raises(GraphQLError, match="too deeply"):
            check_nesting(text)


def test_brackets_inside_strings_and_syntax_errors_are_left_to_the_parser() -> None:
    check_nesting('{ a(x: "' + "{" * 1000 + '") }')
    check_nesting('{ a(x: """' + "[" * 1000 + '""") }')
    check_nesting("{ a( " + "}" * 10)  # unbalanced: the parser reports it
    check_nesting('{ a(x: "unterminated')


def fragment_chain(length: int) -> str:
    return ("{ whatsAppStatus { ...F0 } } " + " ".join(
        f"fragment F{i} on WhatsAppStatus {{ ...F{i + 1} }}" for i in range(length))
        + f" fragment F{length} on WhatsAppStatus {{ state }}")


def test_fragment_chains_are_held_to_max_depth_without_recursion() -> None:
    schema = build_schema()
    assert validate(schema, parse(fragment_chain(7)), limit_rules(8, 500)) == []
    [error] = validate(schema, parse(fragment_chain(9)), limit_rules(8, 500))
    assert "fragments inside fragments more than 8 deep" in error.message
    # Our rule walks with a stack: a chain longer than Python's recursion limit is
    # refused by it, not crashed in it (graphql-core's own rules are not run here).
    [error] = validate(schema, parse(fragment_chain(5000)), limit_rules(8, 500))
    assert "graphql.max_depth" in error.message


def test_a_fragment_tree_ends_the_walk_once_the_cost_is_spent() -> None:
    """F_i spreads F_{i+1} twice (2^20 expansions in all): the walk stops at max_cost."""
    text = ("{ whatsAppStatus { ...F0 } } " + " ".join(
        f"fragment F{i} on WhatsAppStatus {{ ...F{i + 1} ... on WhatsAppStatus "
        f"{{ ...F{i + 1} }} }}" for i in range(20)) + " fragment F20 on WhatsAppStatus "
        "{ state }")
    [error] = validate(build_schema(), parse(text), limit_rules(32, 500))
    assert "more than 500 fields" in error.message


@pytest.mark.parametrize("body", [
    b'{"query": "{ a }", "variables": {"m": "x\\ud800y"}}',
    b'{"query": "{ a }", "variables": {"\\udfff": 1}}',
    b'[{"query": "{ a }", "variables": {"m": ["\\udc00"]}}]',
])
def test_unpaired_surrogates_anywhere_in_the_body_are_refused(body: bytes) -> None:
    with pytest.raises(BodyError, match="unpaired UTF-16 surrogate"):
        parse_json_body(body)


def test_paired_surrogates_and_plain_unicode_pass() -> None:
    value = parse_json_body('{"m": "\\ud83d\\ude00 é ü 中"}'.encode())
    assert value == {"m": "\U0001f600 é ü 中"}
