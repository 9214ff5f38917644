"""Limits on what one GraphQL document may ask, checked before anything runs.

Our schema is shallow (the deepest real query is four levels) and small, so a deeper
or larger document is either a mistake or an attempt to make the server work hard.
The rule looks only at the document, never at variables, so the document cache may
keep its verdict. Cost is the number of fields selected, fragments expanded where
they are used: list sizes are bounded by the resolvers themselves (``first`` <= 200).
"""

from __future__ import annotations

from typing import Any

from graphql import (
    ASTValidationRule,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    ValidationContext,
)


def limit_rule(max_depth: int, max_cost: int) -> type[ASTValidationRule]:
    class DocumentLimits(ASTValidationRule):
        def __init__(self, context: ValidationContext) -> None:
            super().__init__(context)
            self.fragments = {
                d.name.value: d for d in context.document.definitions
                if isinstance(d, FragmentDefinitionNode)}

        def enter_operation_definition(self, node: OperationDefinitionNode, *_: Any) -> None:
            self.cost = 0
            depth = self._walk(node.selection_set, 0, frozenset())
            if depth > max_depth:
                self.report_error(GraphQLError(
                    f"the query is nested more than {max_depth} levels deep "
                    "(graphql.max_depth); ask for fewer nested fields", node))
            elif self.cost > max_cost:
                self.report_error(GraphQLError(
                    f"the query selects more than {max_cost} fields (graphql.max_cost); "
                    "split it into smaller queries", node))

        def _walk(self, selections: SelectionSetNode, level: int, seen: frozenset[str]
                  ) -> int:
            """Deepest level reached; stops as soon as either limit is exceeded, so a
            hostile document costs at most max_cost steps."""
            deepest = level
            for selection in selections.selections:
                if level > max_depth or self.cost > max_cost:
                    break
                if isinstance(selection, FieldNode):
                    self.cost += 1
                    inner = selection.selection_set
                    found = self._walk(inner, level + 1, seen) if inner else level + 1
                elif isinstance(selection, InlineFragmentNode):
                    found = self._walk(selection.selection_set, level, seen)
                elif isinstance(selection, FragmentSpreadNode):
                    name = selection.name.value
                    fragment = self.fragments.get(name)
                    if fragment is None or name in seen:  # other rules report these
                        continue
                    found = self._walk(fragment.selection_set, level, seen | {name})
                else:  # pragma: no cover - no other selection kinds exist
                    continue
                deepest = max(deepest, found)
            return deepest

    return DocumentLimits


def limit_rules(max_depth: int, max_cost: int) -> list[type[ASTValidationRule]]:
    return [limit_rule(max_depth, max_cost)]
