"""Unit tests for the document and body checks that run before any GraphQL work."""

from __future__ import annotations

import inspect

import pytest
from graphql import GraphQLError, get_introspection_query, parse, validate

from gateway.api.limits import MAX_NESTING, check_nesting, limit_rules
from gateway.api.resolvers import build_schema
from gateway.web.request_body import BodyError, parse_json_body


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


STANDARD_QUERIES = [
    get_introspection_query(),
    get_introspection_query(descriptions=False),
    get_introspection_query(True, True, True, True, True),
    # Every option the installed graphql-core knows: 3.2 releases differ in how many
    # there are, and pip may resolve any of them beside gql 3.5.
    get_introspection_query(**dict.fromkeys(
        inspect.signature(get_introspection_query).parameters, True)),
]


@pytest.mark.parametrize("query", STANDARD_QUERIES,
                         ids=["default", "no-descriptions", "every-option", "with-oneof"])
def test_the_standard_introspection_query_passes_whatever_the_limits(query: str) -> None:
    """GraphiQL, gql, Apollo and Postman send graphql-core's (or graphql-js's) query;
    it nests 15 levels, deeper than graphql.max_depth, and is measured by its own bound."""
    schema = build_schema()
    assert validate(schema, parse(query), limit_rules(8, 500)) == []
    assert validate(schema, parse(query), limit_rules(1, 1)) == []


def test_with_introspection_off_it_is_refused_saying_where_the_schema_is() -> None:
    for query in (STANDARD_QUERIES[0], '{ __type(name: "Query") { name } }'):
        [error] = validate(build_schema(), parse(query), limit_rules(8, 500, introspection=False))
        assert "introspection is off on this gateway (graphql.introspection = false)" in (
            error.message)
        assert "wagate schema" in error.message
    assert validate(build_schema(), parse("{ __typename }"),
                    limit_rules(8, 500, introspection=False)) == []


def test_fields_beside_introspection_still_count_against_the_query_limits() -> None:
    text = "{ __schema { queryType { name } } whatsAppStatus { connected state } }"
    assert validate(build_schema(), parse(text), limit_rules(8, 3)) == []
    [error] = validate(build_schema(), parse(text), limit_rules(8, 2))
    assert "more than 2 fields (graphql.max_cost)" in error.message


def introspection_error(text: str) -> str:
    [error] = validate(build_schema(), parse(text), limit_rules(8, 500))
    return error.message


def test_lists_inside_lists_beyond_the_standard_query_are_refused() -> None:
    three = "{ __schema { types { fields { type { fields { name } } } } } }"
    assert validate(build_schema(), parse(three), limit_rules(8, 500)) == []
    assert "nests lists more than 3 deep" in introspection_error(
        "{ __schema { types { fields { type { fields { args { name } } } } } } }")
    assert "nests lists more than 3 deep" in introspection_error(
        '{ __type(name: "Query") { fields { args { type { inputFields { type { fields '
        "{ name } } } } } } } }")


def test_aliases_cannot_multiply_the_answer_beyond_its_bound() -> None:
    aliases = " ".join(f"a{i}: name" for i in range(300))
    message = introspection_error(
        "{ __schema { types { fields { args { " + aliases + " } } } } }")
    assert "could answer with more than" in message
    assert "2 times the standard introspection query" in message
    roots = " ".join(f"s{i}: __schema {{ types {{ name }} }}" for i in range(10))
    assert validate(build_schema(), parse("{ " + roots + " }"), limit_rules(8, 500)) == []
    deep = "__schema { types { fields { args { name type { name } } } } }"
    roots = " ".join(f"s{i}: {deep}" for i in range(300))
    assert "could answer with more than" in introspection_error("{ " + roots + " }")


def test_introspection_depth_and_fragment_chains_have_their_own_bound() -> None:
    chain = "{ __type(name: \"Query\") { " + "ofType { " * 30 + "name" + " }" * 31 + " }"
    assert "nested more than 24 levels deep" in introspection_error(chain)
    fragments = ('{ __type(name: "Query") { ...T0 } } ' + " ".join(
        f"fragment T{i} on __Type {{ ...T{i + 1} }}" for i in range(40))
        + " fragment T40 on __Type { name }")
    assert "nested more than 24 levels deep (fragments included)" in introspection_error(
        fragments)


def test_an_introspection_fragment_tree_ends_the_walk_at_its_bound() -> None:
    """T_i spreads T_{i+1} twice (2^20 expansions): refused, not walked to the end
    (by the walk's step bound, which it reaches first)."""
    text = ('{ __type(name: "Query") { ...T0 } } ' + " ".join(
        f"fragment T{i} on __Type {{ ...T{i + 1} ... on __Type {{ ...T{i + 1} }} }}"
        for i in range(20)) + " fragment T20 on __Type { name }")
    assert "selects more than" in introspection_error(text)


def test_an_introspection_walk_does_no_more_work_than_the_standard_querys() -> None:
    """Under ``__type`` every field is one value, so a fragment tree (or thousands of
    roots) grew the answer's measure by one a step: the walk ran some 200 000 steps
    (a tenth of a second of CPU per request, a few hundred bytes each) before its size
    bound refused it. Its steps have their own bound, twice the standard query's."""
    from gateway.api.limits import (
        INTROSPECTION_HEADROOM,
        STANDARD_INTROSPECTION,
        fragments_of,
        introspection_limits,
        introspection_measure,
        list_sizes,
    )

    schema = build_schema()
    limits = introspection_limits(schema)
    standard = parse(STANDARD_INTROSPECTION)
    assert validate(schema, standard, limit_rules(8, 500)) == []
    tree = ('{ __type(name: "Query") { ...T0 } } ' + " ".join(
        f"fragment T{i} on __Type {{ ...T{i + 1} ...T{i + 1} }}" for i in range(20))
        + " fragment T20 on __Type { name }")
    roots = "{ ...R ...R } fragment R on Query { " + " ".join(
        f'r{i}: __type(name: "Query") {{ name }}' for i in range(limits.steps)) + " }"
    for text in (tree, roots):
        assert "selects more than" in introspection_error(text)
        assert f"({INTROSPECTION_HEADROOM} times the standard" in introspection_error(text)
    # The walk stopped at its step bound, long before the answer's size bound.
    document = parse(tree)
    operation = document.definitions[0]
    measured = introspection_measure(
        [(operation.selection_set.selections[0], ())],  # type: ignore[attr-defined]
        fragments_of(document), list_sizes(schema), limits)
    assert measured.steps == limits.steps + 1
    assert measured.size <= 2 * limits.steps < limits.size
