"""The GraphQL explorer (GraphiQL at GET /graphql) in a real browser that may reach
nothing but the gateway: it loads from the gateway's own files, shows the schema and
runs ``whatsAppStatus`` with the token of the dashboard sign-in."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from playwright.sync_api import Page, expect

from tests.browser.conftest import shot
from tests.browser.test_dashboard import sign_in
from tests.integration.harness import Gateway


def test_the_explorer_loads_offline_shows_the_schema_and_runs_a_query(
        make_gateway: Callable[..., Gateway], open_page: Callable[..., Page]) -> None:
    gw = make_gateway().start()
    page = open_page(gw)  # any request outside the gateway fails the test (no CDN)
    sign_in(page, gw.token)
    expect(page.locator("#who-name")).to_have_text("harness-admin")

    answers: list[dict] = []
    page.on("response", lambda r: answers.append(r.request.post_data_json or {})
            if r.url.endswith("/graphql") and r.request.method == "POST" else None)
    page.goto("/graphql")
    expect(page.locator(".graphiql-container")).to_be_visible()
    expect(page.get_by_text("Loading the GraphQL explorer")).to_be_hidden()
    shot(page, "explorer-01-loaded")

    # The schema, read by GraphiQL's own introspection query (deeper than max_depth).
    page.get_by_role("button", name=re.compile("Documentation Explorer")).click()
    docs = page.locator(".graphiql-doc-explorer")
    expect(docs.locator(".graphiql-doc-explorer-root-type")).to_have_text(["query",
                                                                         "mutation"])
    docs.locator(".graphiql-doc-explorer-type-name", has_text=re.compile("^Query$")).click()
    expect(docs.locator(".graphiql-doc-explorer-title")).to_have_text("Query")
    expect(docs).to_contain_text("whatsAppStatus")
    expect(docs).to_contain_text("whatsAppSessions")
    shot(page, "explorer-02-schema")
    assert any("__schema" in (body.get("query") or "") for body in answers), answers

    # Run the starting query (whatsAppStatus) with the dashboard's token.
    page.get_by_role("button", name=re.compile("Execute query")).click()
    result = page.locator(".graphiql-response")
    expect(result).to_contain_text('"whatsAppStatus"')
    expect(result).to_contain_text('"state": "NEW"')
    expect(result).not_to_contain_text("UNAUTHENTICATED")
    text = result.inner_text().replace("\xa0", " ")  # the editor shows indents as nbsp
    answer = json.loads(text[text.index("{"):])
    assert answer["data"]["whatsAppStatus"]["connected"] is False
    shot(page, "explorer-03-status")


def test_without_a_sign_in_the_token_goes_in_the_headers_pane(
        make_gateway: Callable[..., Gateway], open_page: Callable[..., Page]) -> None:
    gw = make_gateway().start()
    page = open_page(gw)
    page.goto("/graphql")
    result = page.locator(".graphiql-response")
    expect(result).to_contain_text("UNAUTHENTICATED")  # the schema query, refused
    headers = page.get_by_role("region", name="Headers")
    expect(headers).to_be_visible()  # opened for the token
    headers.locator(".CodeMirror:visible").click()
    page.keyboard.type(f'{{"Authorization": "Bearer {gw.token}"')
    page.get_by_role("button", name=re.compile("Re-fetch GraphQL schema")).click()
    page.get_by_role("button", name=re.compile("Execute query")).click()
    expect(result).to_contain_text('"state": "NEW"')
    page.get_by_role("button", name=re.compile("Open settings dialog")).click()
    expect(page.get_by_role("dialog")).to_be_visible()
    shot(page, "explorer-04-headers-and-settings")
    page.keyboard.press("Escape")
    expect(page.get_by_role("dialog")).to_be_hidden()
