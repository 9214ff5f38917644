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

Introspection (``__schema``, ``__type`` at the root, where introspection is enabled) is
held to its own bound instead of ``max_depth``/``max_cost``: the standard introspection
query (graphql-core's ``get_introspection_query()``, which ``gql`` sends, and
graphql-js's of the same shape, which GraphiQL and GraphQL Code Generator send) nests
15 levels, following ``ofType`` chains. Depth alone says little there: a chain of
``ofType`` is one object per level, while ``fields { type { fields { ... } } }``
multiplies the answer at every list. So an
introspection selection is measured by the size of the answer it could have: every
field counts as many times as the lists above it can hold on this schema (the most
types, fields per type, arguments per field ...), and the total may be at most
``INTROSPECTION_HEADROOM`` times what the standard query (every option on) measures;
its depth is held to ``INTROSPECTION_MAX_DEPTH`` and its lists inside lists to
``INTROSPECTION_MAX_LISTS``, as deep as the standard query's. The walk itself is work
too: the selections it visits (fields, fragments, every spread expanded, roots
included) may be at most ``INTROSPECTION_HEADROOM`` times the standard query's, so a
document that asks for little (every field one value, under ``__type``) but spreads
fragments in a tree is refused after a few thousand steps, not after ``limit``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, ClassVar, NamedTuple

from graphql import (
    ASTValidationRule,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLEnumType,
    GraphQLError,
    GraphQLInputObjectType,
    GraphQLInterfaceType,
    GraphQLObjectType,
    GraphQLSchema,
    GraphQLSyntaxError,
    GraphQLUnionType,
    InlineFragmentNode,
    Lexer,
    OperationDefinitionNode,
    SelectionSetNode,
    Source,
    TokenKind,
    ValidationContext,
    get_introspection_query,
    parse,
)

# Brackets ({, (, [) open at once in a document: graphql-core's parser recurses a few
# frames per bracket. Far above what graphql.max_depth (at most 32) lets a query use.
MAX_NESTING = 64
_OPENING = frozenset({TokenKind.BRACE_L, TokenKind.PAREN_L, TokenKind.BRACKET_L})
_CLOSING = frozenset({TokenKind.BRACE_R, TokenKind.PAREN_R, TokenKind.BRACKET_R})

# Introspection's own bound. The standard query is 15 levels deep; tools built on newer
# graphql-js follow ofType a few levels further. Brackets stay below MAX_NESTING.
INTROSPECTION_MAX_DEPTH = 24
# An introspection selection may measure this many times the standard query (every
# option on), so a client that asks a little more than it still fits.
INTROSPECTION_HEADROOM = 2
# Lists inside lists: the standard query goes types > fields > args; one more level
# (fields { type { fields ... } }) is how introspection is made to answer in megabytes.
INTROSPECTION_MAX_LISTS = 3
INTROSPECTION_ROOTS = frozenset({"__schema", "__type"})
STANDARD_INTROSPECTION = get_introspection_query(
    descriptions=True, specified_by_url=True, directive_is_repeatable=True,
    schema_description=True, input_value_deprecation=True)


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


Fragments = dict[str, FragmentDefinitionNode]


class IntrospectionMeasure(NamedTuple):
    depth: int  # deepest field level
    chain: int  # longest chain of fragments spread inside fragments
    lists: int  # most list fields nested inside one another
    size: int  # answer size: each field counted as often as the lists above can hold
    steps: int = 0  # selections visited, fragments expanded (the walk's own work)


class IntrospectionLimits(NamedTuple):
    size: int  # the most an answer may measure
    steps: int  # the most selections a walk may visit
# (an introspection root field, the fragments spread on the way to it)
IntrospectionRoot = tuple[FieldNode, tuple[str, ...]]


def fragments_of(document: Any) -> Fragments:
    return {d.name.value: d for d in document.definitions
            if isinstance(d, FragmentDefinitionNode)}


@lru_cache(maxsize=8)
def list_sizes(schema: GraphQLSchema) -> dict[str, int]:
    """The most items each list field of the introspection types can hold on ``schema``
    (the other introspection fields hold one object or a scalar)."""
    named = list(schema.type_map.values())
    with_fields = [t for t in named if isinstance(t, GraphQLObjectType | GraphQLInterfaceType)]
    arg_counts = [len(f.args) for t in with_fields for f in t.fields.values()]
    arg_counts += [len(d.args) for d in schema.directives]
    sizes = {
        "types": len(named),
        "directives": len(schema.directives),
        "fields": max((len(t.fields) for t in with_fields), default=0),
        "interfaces": max((len(t.interfaces) for t in with_fields), default=0),
        "inputFields": max((len(t.fields) for t in named
                            if isinstance(t, GraphQLInputObjectType)), default=0),
        "enumValues": max((len(t.values) for t in named if isinstance(t, GraphQLEnumType)),
                          default=0),
        "possibleTypes": max((len(schema.get_possible_types(t)) for t in named
                              if isinstance(t, GraphQLInterfaceType | GraphQLUnionType)),
                             default=0),
        "args": max(arg_counts, default=0),
        "locations": max((len(d.locations) for d in schema.directives), default=0),
    }
    return {name: max(size, 1) for name, size in sizes.items()}


def introspection_measure(roots: list[IntrospectionRoot], fragments: Fragments,
                          sizes: dict[str, int], limits: IntrospectionLimits
                          ) -> IntrospectionMeasure:
    """How deep, how long a fragment chain, how many lists inside lists, how big an
    answer and how many steps introspection selections ask for, walked with an explicit
    stack; stops once any exceeds its bound, so a hostile document costs at most
    ``limits.steps`` steps."""
    deepest = chain = lists = size = 0
    steps = len(roots)
    if steps > limits.steps:
        return IntrospectionMeasure(0, 0, 0, 0, steps)
    # (selections, level of the fields in it, fragments spread, lists above, copies)
    stack: list[tuple[SelectionSetNode, int, tuple[str, ...], int, int]] = []
    for field, spread in roots:
        size += 1
        deepest = max(deepest, 1)
        if field.selection_set:
            stack.append((field.selection_set, 1, spread, 0, 1))
    while stack:
        selections, level, spread, above, copies = stack.pop()
        chain = max(chain, len(spread))
        for selection in selections.selections:
            if (deepest > INTROSPECTION_MAX_DEPTH or chain > INTROSPECTION_MAX_DEPTH
                    or lists > INTROSPECTION_MAX_LISTS or size > limits.size
                    or steps > limits.steps):
                return IntrospectionMeasure(deepest, chain, lists, size, steps)
            steps += 1
            if isinstance(selection, FieldNode):
                listed = selection.name.value in sizes
                held = copies * sizes.get(selection.name.value, 1)
                size += held
                deepest = max(deepest, level + 1)
                lists = max(lists, above + listed)
                if selection.selection_set:
                    stack.append((selection.selection_set, level + 1, spread,
                                  above + listed, held))
            elif isinstance(selection, InlineFragmentNode):
                stack.append((selection.selection_set, level, spread, above, copies))
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                fragment = fragments.get(name)
                if fragment is None or name in spread:  # other rules report these
                    continue
                size += copies
                stack.append((fragment.selection_set, level, (*spread, name), above, copies))
    return IntrospectionMeasure(deepest, chain, lists, size, steps)


@lru_cache(maxsize=8)
def introspection_limits(schema: GraphQLSchema) -> IntrospectionLimits:
    """The most an introspection selection may measure, and its walk visit, on ``schema``."""
    document = parse(STANDARD_INTROSPECTION)
    fragments = fragments_of(document)
    roots: list[IntrospectionRoot] = []
    for definition in document.definitions:
        if isinstance(definition, OperationDefinitionNode):
            roots += [(s, ()) for s in definition.selection_set.selections
                      if isinstance(s, FieldNode)]
    unbounded = IntrospectionLimits(10**12, 10**12)
    standard = introspection_measure(roots, fragments, list_sizes(schema), unbounded)
    return IntrospectionLimits(INTROSPECTION_HEADROOM * standard.size,
                               INTROSPECTION_HEADROOM * standard.steps)


class DocumentLimits(ASTValidationRule):
    """The depth, fragment-chain and cost limits of one document, and the introspection
    bounds (module docstring). A rule is a class to graphql-core, so ``limit_rule`` makes
    a subclass that carries the configured numbers."""

    max_depth: ClassVar[int] = 0
    max_cost: ClassVar[int] = 0
    measure_introspection: ClassVar[bool] = True  # else IntrospectionOff refuses it
    context: ValidationContext  # graphql-core passes the schema's context to document rules

    def __init__(self, context: ValidationContext) -> None:
        super().__init__(context)
        self.fragments = fragments_of(context.document)

    def enter_operation_definition(self, node: OperationDefinitionNode, *_: Any) -> None:
        self.cost = 0
        self.introspection: list[IntrospectionRoot] = []
        self.limits = introspection_limits(self.context.schema)
        depth, chain = self._walk(node.selection_set)
        if depth <= self.max_depth and chain <= self.max_depth and self.cost <= self.max_cost:
            self._check_introspection(node)
        if depth > self.max_depth:
            self.report_error(GraphQLError(
                f"the query is nested more than {self.max_depth} levels deep "
                "(graphql.max_depth); ask for fewer nested fields", node))
        elif chain > self.max_depth:
            self.report_error(GraphQLError(
                f"the query spreads fragments inside fragments more than {self.max_depth} "
                "deep (graphql.max_depth); inline some of them", node))
        elif self.cost > self.max_cost:
            self.report_error(GraphQLError(
                f"the query selects more than {self.max_cost} fields (graphql.max_cost); "
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
                if deepest > self.max_depth or chain > self.max_depth or self.cost > self.max_cost:
                    return deepest, chain
                if isinstance(selection, FieldNode):
                    if level == 0 and selection.name.value in INTROSPECTION_ROOTS:
                        if self.measure_introspection:
                            self.introspection.append((selection, spread))
                            if len(self.introspection) > self.limits.steps:
                                return deepest, chain  # refused by its step bound
                        continue
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

    def _check_introspection(self, node: OperationDefinitionNode) -> None:
        if not self.introspection:
            return
        limits = self.limits
        measured = introspection_measure(
            self.introspection, self.fragments, list_sizes(self.context.schema), limits)
        if measured.steps > limits.steps:
            self.report_error(GraphQLError(
                f"the introspection query selects more than {limits.steps} fields and "
                f"fragments, every spread expanded ({INTROSPECTION_HEADROOM} times the "
                "standard introspection query); ask for what the standard query asks, "
                "without spreading fragments many times", node))
        elif max(measured.depth, measured.chain) > INTROSPECTION_MAX_DEPTH:
            self.report_error(GraphQLError(
                f"the introspection query is nested more than {INTROSPECTION_MAX_DEPTH} "
                "levels deep (fragments included); the standard introspection query "
                "(GraphiQL, gql, GraphQL Code Generator) fits: ask for what it asks",
                node))
        elif measured.lists > INTROSPECTION_MAX_LISTS:
            self.report_error(GraphQLError(
                f"the introspection query nests lists more than {INTROSPECTION_MAX_LISTS} "
                "deep (like fields { type { fields ... } }); the standard introspection "
                "query (types, their fields, their arguments) fits: ask for what it asks",
                node))
        elif measured.size > limits.size:
            self.report_error(GraphQLError(
                f"the introspection query could answer with more than {limits.size} values "
                f"({INTROSPECTION_HEADROOM} times the standard introspection query); "
                "ask for what the standard query asks, without lists inside lists", node))


def limit_rule(max_depth: int, max_cost: int,
               introspection: bool = True) -> type[ASTValidationRule]:
    """The document limits; with ``introspection`` its root fields are measured by
    their own bound (module docstring), otherwise they are left to ``IntrospectionOff``."""
    settings = {"max_depth": max_depth, "max_cost": max_cost,
                "measure_introspection": introspection}
    return type("DocumentLimits", (DocumentLimits,), settings)


class IntrospectionOff(ASTValidationRule):
    """Refuses introspection (``graphql.introspection = false``) with a message that says
    where the schema is instead (Ariadne's own rule says only that it is disabled)."""

    def enter_field(self, node: FieldNode, *_: Any) -> None:
        if node.name.value in INTROSPECTION_ROOTS:
            self.report_error(GraphQLError(
                f"cannot query {node.name.value}: introspection is off on this gateway "
                "(graphql.introspection = false); `wagate schema` prints the schema, for "
                "codegen and clients", node))


def limit_rules(max_depth: int, max_cost: int,
                introspection: bool = True) -> list[type[ASTValidationRule]]:
    """The validation rules every document passes (besides the specification's);
    ``introspection`` is the ``graphql.introspection`` switch."""
    rules = [limit_rule(max_depth, max_cost, introspection)]
    return rules if introspection else [*rules, IntrospectionOff]
