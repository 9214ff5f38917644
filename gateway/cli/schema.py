"""``wagate schema``: the GraphQL schema (SDL) of this wagate, for codegen and clients.

Code generators (GraphQL Code Generator, Apollo's tooling) and clients that check
queries before sending them (``gql``) want the schema as a file. Production gateways
keep introspection off (``graphql.introspection = false``), so the schema comes from
the installed wagate instead: no gateway needs to run and no token is involved. The
text is exactly what the standard introspection query reports, printed as SDL.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from typing import Any

from graphql import build_schema, print_schema


def schema_sdl() -> str:
    """The schema as graphql-core prints it (descriptions kept), ending in a newline."""
    source = resources.files("gateway.api").joinpath("schema.graphql").read_text("utf-8")
    return print_schema(build_schema(source)) + "\n"


def register(commands: Any, _common: Any) -> None:
    schema = commands.add_parser(
        "schema", help="print the GraphQL schema (SDL) for codegen and clients",
        description="Print the GraphQL schema of this wagate as SDL, e.g. "
                    "'wagate schema > schema.graphql' for GraphQL Code Generator or a "
                    "gql Client(schema=...). Needs no running gateway.")
    schema.set_defaults(handler=cmd_schema)


def cmd_schema(_args: argparse.Namespace) -> int:
    sys.stdout.write(schema_sdl())
    return 0
