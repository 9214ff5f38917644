"""The standard GraphQL tools against a real gateway: the explorer's own files, the
standard introspection query (graphql-core's) and a real ``gql`` client that reads the
schema from the gateway before it sends anything."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from gql import Client, gql
from gql.transport.requests import RequestsHTTPTransport
from graphql import GraphQLError, build_client_schema, get_introspection_query, print_schema

from gateway.api.resolvers import build_schema
from gateway.web.explorer import CONTENT_SECURITY_POLICY, page_policy
from tests.integration.harness import Gateway

SPECIFIED = [  # the product specification's operations, byte for byte
    "query { whatsAppStatus { connected qrCode qrCodeSvg } }",
    "mutation { whatsAppConnect }",
    "mutation { whatsAppDisconnect }",
    "mutation ($phoneNumber: String!, $message: String!) {\n"
    "  sendWhatsAppNotification(phoneNumber: $phoneNumber, message: $message) }",
    "mutation ($phoneNumber: String!) { testWhatsAppConnection(phoneNumber: $phoneNumber) }",
]
STANDARD = get_introspection_query(descriptions=True, specified_by_url=True,
                                   directive_is_repeatable=True, schema_description=True,
                                   input_value_deprecation=True)


def wagate_schema() -> str:
    """What the real ``wagate schema`` command prints (it needs no gateway)."""
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "schema"], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return done.stdout


def test_wagate_schema_prints_the_schema_that_codegen_and_gql_can_use(tmp_path: Path) -> None:
    text = wagate_schema()
    assert text == print_schema(build_schema()) + "\n"
    schema_file = tmp_path / "schema.graphql"
    schema_file.write_text(text)
    # As the README shows: a gql client that checks queries against the file, offline.
    client = Client(schema=schema_file.read_text())
    for operation in SPECIFIED:
        client.validate(gql(operation))
    with pytest.raises(GraphQLError, match="Cannot query field 'conected'"):
        client.validate(gql("query { whatsAppStatus { conected } }"))


def test_the_standard_introspection_query_reads_the_whole_schema(gateway: Gateway) -> None:
    """... and it is the schema `wagate schema` prints."""
    result = gateway.gql(STANDARD)
    assert not result.errors, result.errors
    assert print_schema(build_client_schema(result.data)) + "\n" == wagate_schema()


def test_a_gql_client_fetches_the_schema_and_checks_queries_against_it(
        gateway: Gateway) -> None:
    transport = RequestsHTTPTransport(url=gateway.url + "/graphql", timeout=10, retries=0,
                                      headers={"Authorization": f"Bearer {gateway.token}"})
    client = Client(transport=transport, fetch_schema_from_transport=True)
    with client as session:
        status = session.execute(gql("query { whatsAppStatus { connected qrCode qrCodeSvg } }"))
        assert status == {"whatsAppStatus": {"connected": False, "qrCode": None,
                                             "qrCodeSvg": None}}
        assert client.schema is not None
        assert "sendWhatsAppNotification" in client.schema.mutation_type.fields
        with pytest.raises(GraphQLError, match="Cannot query field 'conected'"):
            session.execute(gql("query { whatsAppStatus { conected } }"))  # checked locally


def test_the_explorer_files_are_served_by_the_gateway_under_its_own_policy(
        gateway: Gateway) -> None:
    """No token (the files hold no data), no CDN: every file the page names is ours."""
    page = requests.get(gateway.url + "/graphql", timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    [nonce] = re.findall(r'nonce="([^"]+)"', page.text)
    assert page.headers["Content-Security-Policy"] == page_policy(nonce)
    again = requests.get(gateway.url + "/graphql", timeout=10)
    assert nonce not in again.text and again.headers["Cache-Control"] == "no-store"
    assert "'self'" in CONTENT_SECURITY_POLICY and "http" not in CONTENT_SECURITY_POLICY
    assert "esm.sh" not in page.text and "https://" not in page.text
    for name, kind in [("graphiql.min.js", "javascript"), ("graphiql.min.css", "text/css"),
                       ("react.production.min.js", "javascript"),
                       ("react-dom.production.min.js", "javascript"),
                       ("explorer.js", "javascript"), ("explorer.css", "text/css"),
                       ("THIRD-PARTY-LICENSES.txt", "text/plain")]:
        assert f"/graphql/assets/{name}" in page.text or name.endswith(".txt")
        asset = requests.get(f"{gateway.url}/graphql/assets/{name}", timeout=10)
        assert asset.status_code == 200, name
        assert kind in asset.headers["Content-Type"], (name, asset.headers["Content-Type"])
        assert asset.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    for name in ("index.html", "..%2Fexplorer.py", "vendor", "nothing.js"):
        assert requests.get(f"{gateway.url}/graphql/assets/{name}",
                            timeout=10).status_code == 404, name


def test_with_introspection_and_the_explorer_off_neither_is_served(
        make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway({"graphql": {"introspection": False, "explorer": False}}).start()
    result = gw.gql(STANDARD)
    assert result.data is None and result.errors
    [error] = result.errors
    assert error["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    assert "introspection is off on this gateway" in error["message"]
    for path in ("/graphql", "/graphql/assets/graphiql.min.js"):
        assert requests.get(gw.url + path, timeout=10).status_code == 401  # not public now
        off = gw.http.get(gw.url + path, timeout=10)
        assert off.status_code == 404, path
    assert "the GraphQL explorer is off (graphql.explorer)" in gw.http.get(
        gw.url + "/graphql", timeout=10).json()["errors"][0]["message"]
