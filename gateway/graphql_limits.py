"""Limits on what one GraphQL document may ask, checked before anything runs.

Our schema is shallow (the deepest real query is four levels) and small, so a deeper
or larger document is either a mistake or an attempt to make the server work hard.
The rule looks only at the document, never at variables, so the document cache may
keep its verdict. Cost is the number of fields selected, fragments expanded where
they are used (each spread costs one too, so fragments that only spread fragments
cannot make the walk long): list sizes are bounded by the resolvers themselves
(``first`` <= 200).

graphql-core parses and validates by recursion: a few hundred nested brackets, or a
chain of a thousand fragments, raised RecursionError (an INTERNAL error with a
traceback in the log). So the text's bracket nesting is measured with the lexer
(iteratively) before it is parsed, this rule walks the document with an explicit
stack, fragment chains are held to ``max_depth`` as well, and a RecursionError that
still escapes graphql-core becomes the same refusal (``too_deep``).
"""

from __future__ import annotations

from typing import Any

from graphql import (
    ASTValidationRule,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLSyntaxError,
    InlineFragmentNode,
    Lexer,
    OperationDefinitionNode,
    SelectionSetNode,
    Source,
    TokenKind,
    ValidationContext,
)

# Brackets ({, (, [) open at once in a document: graphql-core's parser recurses a few
# frames per bracket. Far above what graphql.max_depth (at most 32) lets a query use.
MAX_NESTING = 64
_OPENING = frozenset({TokenKind.BRACE_L, TokenKind.PAREN_L, TokenKind.BRACKET_L})
_CLOSING = frozenset({TokenKind.BRACE_R, TokenKind.PAREN_R, TokenKind.BRACKET_R})


def too_deep() -> GraphQLError:
    """The refusal of a document nested beyond what can be parsed or validated safely."""
    return GraphQLError(f"the query nests brackets or fragments too deeply (more than "
                        f"{MAX_NESTING} brackets, or more fragments inside fragments than "
                        "graphql.max_depth); flatten it")


def check_nesting(text: str) -> None:
    """Raise ``too_deep()`` when ``text`` opens more than MAX_NESTING brackets at once.

    Uses the lexer, which does not recurse; a syntax error is left for the parser to
    report with its usual message."""
    lexer = Lexer(Source(text))
    depth = 0
    try:
        token = lexer.advance()
        while token.kind is not TokenKind.EOF:
            if token.kind in _OPENING:
                depth += 1
                if depth > MAX_NESTING:
                    raise too_deep()
            elif token.kind in _CLOSING:
                depth -= 1
            token = lexer.advance()
    except GraphQLSyntaxError:
        return


def limit_rule(max_depth: int, max_cost: int) -> type[ASTValidationRule]:
    class DocumentLimits(ASTValidationRule):
        def __init__(self, context: ValidationContext) -> None:
            super().__init__(context)
            self.fragments = {
                d.name.value: d for d in context.document.definitions
                if isinstance(d, FragmentDefinitionNode)}

        def enter_operation_definition(self, node: OperationDefinitionNode, *_: Any) -> None:
            self.cost = 0
            depth, chain = self._walk(node.selection_set)
            if depth > max_depth:
                self.report_error(GraphQLError(
                    f"the query is nested more than {max_depth} levels deep "
                    "(graphql.max_depth); ask for fewer nested fields", node))
            elif chain > max_depth:
                self.report_error(GraphQLError(
                    f"the query spreads fragments inside fragments more than {max_depth} "
                    "deep (graphql.max_depth); inline some of them", node))
            elif self.cost > max_cost:
                self.report_error(GraphQLError(
                    f"the query selects more than {max_cost} fields (graphql.max_cost); "
                    "split it into smaller queries", node))

        def _walk(self, root: SelectionSetNode) -> tuple[int, int]:
            """Deepest field level and longest fragment chain reached, walked with an
            explicit stack (no recursion); stops as soon as a limit is exceeded, so a
            hostile document costs at most about max_cost steps."""
            deepest = chain = 0
            # (selections, field level, fragments spread on the way here)
            stack: list[tuple[SelectionSetNode, int, tuple[str, ...]]] = [(root, 0, ())]
            while stack:
                selections, level, spread = stack.pop()
                chain = max(chain, len(spread))
                for selection in selections.selections:
                    if deepest > max_depth or chain > max_depth or self.cost > max_cost:
                        return deepest, chain
                    if isinstance(selection, FieldNode):
                        self.cost += 1
                        deepest = max(deepest, level + 1)
                        if selection.selection_set:
                            stack.append((selection.selection_set, level + 1, spread))
                    elif isinstance(selection, InlineFragmentNode):
                        stack.append((selection.selection_set, level, spread))
                    elif isinstance(selection, FragmentSpreadNode):
                        name = selection.name.value
                        fragment = self.fragments.get(name)
                        if fragment is None or name in spread:  # other rules report these
                            continue
                        self.cost += 1  # a spread is work too, even with no field in it
                        stack.append((fragment.selection_set, level, (*spread, name)))
            return deepest, chain

    return DocumentLimits


def limit_rules(max_depth: int, max_cost: int) -> list[type[ASTValidationRule]]:
    return [limit_rule(max_depth, max_cost)]
