"""Cached parsing and validation must answer exactly as uncached ones."""

from __future__ import annotations

import pytest
from graphql import GraphQLError, build_schema, parse, validate

from gateway.api.query_cache import MAX_ENTRIES, MAX_TEXT, DocumentCache

SCHEMA = build_schema("type Query { hello(name: String): String }")


def test_same_text_same_document_and_same_validation() -> None:
    cache = DocumentCache()
    first = cache.parser(None, {"query": "{ hello }"})
    assert cache.parser(None, {"query": "{ hello }"}) is first
    assert cache.validator(SCHEMA, first) == []
    bad = cache.parser(None, {"query": "{ nope }"})
    errors = cache.validator(SCHEMA, bad)
    assert [e.message for e in errors] == [e.message for e in validate(SCHEMA, parse("{ nope }"))]
    assert cache.validator(SCHEMA, bad) is errors  # remembered


def test_parse_errors_propagate_and_are_not_cached() -> None:
    cache = DocumentCache()
    for _ in range(2):
        with pytest.raises(GraphQLError):
            cache.parser(None, {"query": "{ hello"})


def test_documents_it_did_not_make_are_validated_every_time() -> None:
    cache = DocumentCache()
    foreign = parse("{ nope }")
    assert cache.validator(SCHEMA, foreign) and cache.validator(SCHEMA, foreign)


def test_the_cache_is_bounded() -> None:
    cache = DocumentCache()
    for i in range(MAX_ENTRIES + 10):
        cache.validator(SCHEMA, cache.parser(None, {"query": f"{{ hello(name: \"{i}\") }}"}))
    assert len(cache._documents) == MAX_ENTRIES
    assert len(cache._validated) <= MAX_ENTRIES
    huge = "{ hello }" + " " * MAX_TEXT
    assert cache.parser(None, {"query": huge}) is not cache.parser(None, {"query": huge})
