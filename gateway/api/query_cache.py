"""Parsed and validated GraphQL documents, remembered by their text.

Clients send the same few documents over and over (variables change, the text does
not); parsing and validating a document was over half of a status request's CPU.
The result of both depends only on the text and the schema, so it is computed once.
Bounded: at most ``MAX_ENTRIES`` documents of at most ``MAX_TEXT`` characters each,
so unique or huge queries cannot grow a worker's memory.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Collection
from typing import Any

from graphql import DocumentNode, GraphQLError, GraphQLSchema, TypeInfo, parse, validate
from graphql.validation import ASTValidationRule

from gateway.api.limits import check_nesting, too_deep

MAX_ENTRIES = 256
MAX_TEXT = 8 * 1024


class DocumentCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._documents: OrderedDict[str, DocumentNode] = OrderedDict()
        # Validation results of the documents above, by identity (the pair keeps the
        # document, so its id() cannot be reused while the entry exists).
        self._validated: dict[int, tuple[DocumentNode, list[GraphQLError]]] = {}

    def parser(self, _context: Any, data: dict[str, Any]) -> DocumentNode:
        """Ariadne ``query_parser``: parse errors propagate (and are not cached)."""
        text = data["query"]
        if not isinstance(text, str) or len(text) > MAX_TEXT:
            return _parse(text)
        with self._lock:
            document = self._documents.get(text)
            if document is not None:
                self._documents.move_to_end(text)
                return document
        document = _parse(text)
        with self._lock:
            self._documents[text] = document
            if len(self._documents) > MAX_ENTRIES:
                _, evicted = self._documents.popitem(last=False)
                self._validated.pop(id(evicted), None)
        return document

    def validator(self, schema: GraphQLSchema, document_ast: DocumentNode,
                  rules: Collection[type[ASTValidationRule]] | None = None,
                  max_errors: int | None = None,
                  type_info: TypeInfo | None = None) -> list[GraphQLError]:
        """Ariadne ``query_validator`` (the rules are the same every time for one app;
        the signature is Ariadne's ``QueryValidator``)."""
        with self._lock:
            entry = self._validated.get(id(document_ast))
        if entry is not None and entry[0] is document_ast:
            return entry[1]
        try:
            errors = validate(schema, document_ast, rules=rules, max_errors=max_errors,
                              type_info=type_info)
        except RecursionError:  # graphql-core's own rules recurse (fragment chains)
            errors = [too_deep()]
        source = document_ast.loc.source.body if document_ast.loc else None
        with self._lock:
            if source is not None and self._documents.get(source) is document_ast:
                self._validated[id(document_ast)] = (document_ast, errors)
        return errors


def _parse(text: Any) -> DocumentNode:
    """``parse``, refusing (as a GraphQL error, not a crash) what nests too deeply."""
    if isinstance(text, str):
        check_nesting(text)
    try:
        return parse(text)
    except RecursionError:
        raise too_deep() from None
