"""The one error tree (gateway/core/errors.py): every exception class of ours is in it,
every code a client can see is in its table, and the README and the schema say the
same as the table.

Exception classes and raised codes are found by reading the source (``ast``), so a new
class or a new code cannot be forgotten by this test.
"""

from __future__ import annotations

import ast
import builtins
import contextvars
import importlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from graphql import GraphQLError

from gateway.api.errors import REQUEST_ID, format_error
from gateway.core.config import ConfigError
from gateway.core.errors import (
    CODES,
    ERROR_CODES,
    GRAPHQL_CODES,
    TABLE,
    GatewayError,
    WagateError,
    markdown_table,
)
from gateway.core.validation import ValidationError, validate_session_name

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("gateway", "actors")
BUILTIN_ERRORS = {name for name, value in vars(builtins).items()
                  if isinstance(value, type) and issubclass(value, BaseException)}


def sources() -> Iterator[tuple[str, ast.Module]]:
    """(module name, parsed source) of every module of ours."""
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            yield module.removesuffix(".__init__"), ast.parse(path.read_text("utf-8"))


def exception_classes() -> list[tuple[str, str]]:
    """(module, class name) of every class of ours that derives from an exception: a
    builtin one, a library's (named ...Error or ...Exception), or (to a fixed point)
    one of ours."""
    classes = [(module, node.name, {ast.unparse(base).rsplit(".", 1)[-1]
                                    for base in node.bases})
               for module, tree in sources() for node in ast.walk(tree)
               if isinstance(node, ast.ClassDef)]
    found: set[str] = set()
    while True:
        more = {name for _, name, bases in classes
                if bases & (BUILTIN_ERRORS | found)
                or any(base.endswith(("Error", "Exception")) for base in bases)}
        if more <= found:
            break
        found |= more
    return [(module, name) for module, name, _ in classes if name in found]


def test_every_exception_class_of_ours_derives_from_the_tree() -> None:
    classes = exception_classes()
    assert len(classes) >= 20, classes  # the reader sees them all (25 when written)
    outside = [f"{module}.{name}" for module, name in classes
               if not issubclass(getattr(importlib.import_module(module), name), WagateError)]
    assert not outside, f"derive these from gateway.core.errors.WagateError: {outside}"


def test_builtin_bases_are_kept_where_code_catches_them() -> None:
    """``except ValueError`` around a config load or a request body still catches ours."""
    from gateway.auth.tokens import TokenFileError
    from gateway.web.request_body import BodyError, parse_json_body

    assert issubclass(ConfigError, ValueError) and issubclass(TokenFileError, ValueError)
    with pytest.raises(ValueError) as caught:
        parse_json_body(b"{")
    assert isinstance(caught.value, BodyError) and isinstance(caught.value, WagateError)


def raised_codes() -> Iterator[tuple[str, int, str]]:
    """(module, line, code) of every literal code given to a public error or to a
    ``Failed`` reply (which the web tier turns into a GatewayError)."""
    for module, tree in sources():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func).rsplit(".", 1)[-1]
            if name not in ("GatewayError", "ValidationError", "Failed", "error_response",
                            "error_body", "Denied", "Refusal", "CommandRefused"):
                continue
            arguments = [*node.args, *(k.value for k in node.keywords if k.arg == "code")]
            for argument in arguments:
                if isinstance(argument, ast.Constant) and isinstance(argument.value, str) \
                        and re.fullmatch(r"[A-Z][A-Z_]+", argument.value):
                    yield module, node.lineno, argument.value


def test_every_code_a_client_can_see_is_in_the_table() -> None:
    found = list(raised_codes())
    assert len(found) > 50, found  # the scan sees the raise sites
    unknown = [f"{module}:{line} {code}" for module, line, code in found
               if code not in ERROR_CODES]
    assert not unknown, f"add these codes to gateway.core.errors.CODES: {unknown}"
    unused = ERROR_CODES - {code for _, _, code in found}
    assert not unused, f"codes of the table that nothing raises any more: {unused}"


def test_the_table_has_one_row_per_code_each_saying_what_to_do() -> None:
    assert len(TABLE) == len(CODES)
    for row in CODES:
        assert re.fullmatch(r"[A-Z][A-Z_]+", row.code), row
        assert row.when.strip() and row.action.strip(), row
    assert {"NOT_FOUND"} == ERROR_CODES - GRAPHQL_CODES  # only outside GraphQL


def test_a_public_error_needs_a_code_of_the_table() -> None:
    with pytest.raises(AssertionError):
        GatewayError("NO_SUCH_CODE", "message")
    error = GatewayError("RATE_LIMITED", "wait", retryAfterSeconds=3)
    assert (error.code, error.public, dict(error.extensions)) == (
        "RATE_LIMITED", True, {"retryAfterSeconds": 3})
    # An error that is not public is a bug as far as a client is concerned.
    assert (ConfigError("x").code, ConfigError.public) == ("INTERNAL", False)


def readme_error_table() -> list[str]:
    text = (ROOT / "README.md").read_text("utf-8")
    section = text.split("\n### Error codes\n", 1)[1].split("\n#", 1)[0]
    return [line for line in section.splitlines() if line.startswith("|")]


def test_the_readme_lists_exactly_the_codes_of_the_table_with_their_meaning() -> None:
    expected = markdown_table().splitlines()
    assert readme_error_table() == expected, (
        "README's error table differs from gateway/core/errors.py; the table from "
        "markdown_table() is:\n" + markdown_table())


def test_the_schema_lists_exactly_the_codes_a_graphql_answer_can_carry() -> None:
    schema = (ROOT / "gateway" / "api" / "schema.graphql").read_text("utf-8")
    listed = re.search(r"Errors carry a stable `extensions.code`:([^\"]*?)\.\n", schema)
    assert listed is not None
    codes = [code.strip() for code in listed.group(1).replace("\n", " ").split(",")]
    assert sorted(codes) == sorted(GRAPHQL_CODES), codes
    assert len(codes) == len(set(codes))


def formatted(original: Exception) -> dict[str, object]:
    error = GraphQLError(str(original), path=["whatsAppStatus"], original_error=original)
    return format_error(error)


def test_public_errors_keep_their_code_and_extensions() -> None:
    assert formatted(GatewayError("NOT_CONNECTED", "link it", state="NEW"))["extensions"] \
        == {"code": "NOT_CONNECTED", "state": "NEW"}
    with pytest.raises(ValidationError) as caught:
        validate_session_name("no spaces")
    answer = formatted(caught.value)
    assert answer["extensions"] == {"code": "INVALID_SESSION", "field": "session"}
    assert answer["message"] == caught.value.message


@pytest.mark.parametrize("original", [RuntimeError("secret detail"),
                                      ConfigError("secret detail")],
                         ids=["foreign", "ours-not-public"])
def test_any_other_error_is_masked_with_the_request_id_of_its_request(
        original: Exception) -> None:
    """No Flask in the formatter: the id comes from the context variable the web tier
    sets (outside a request it is empty)."""
    def in_a_request() -> dict[str, object]:
        REQUEST_ID.set("req-42")
        return formatted(original)

    answer = contextvars.copy_context().run(in_a_request)
    assert answer["extensions"] == {"code": "INTERNAL", "requestId": "req-42"}
    assert "secret" not in str(answer) and str(answer["message"]).endswith("req-42")
    assert formatted(original)["extensions"] == {"code": "INTERNAL", "requestId": ""}
