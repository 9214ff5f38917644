"""The dashboard shows what the token can do and says what really happens; at phone
width nothing hides behind a sideways scroll (issue 12, items 8, 9 and 16)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import Page, expect

from tests.browser.conftest import FAST_QR, PHONE, shot
from tests.browser.test_dashboard import RECIPIENT, card, sign_in
from tests.integration.harness import Gateway, wait_for

TOKEN_LINE = re.compile(r"^\s+(wgt_\S+)\s*$", re.MULTILINE)


def run_hint_command(command: str, cwd: Path) -> str:
    """Run the page's ``wagate token create`` (NAME filled in) from another directory
    and return the token it printed."""
    words = command.replace("NAME", "from-the-hint").split()
    assert words[:3] == ["wagate", "token", "create"], command
    done = subprocess.run([sys.executable, "-m", "gateway.cli", *words[1:]], cwd=cwd,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                          env={**os.environ, "PYTHONPATH": str(Path.cwd())})
    assert done.returncode == 0, done.stderr
    found = TOKEN_LINE.search(done.stdout)
    assert found, done.stdout
    return found.group(1)


def test_the_sign_in_hint_gives_a_command_that_works_for_this_config(
        make_gateway: Callable[..., Gateway], open_page: Callable[..., Page],
        tmp_path: Path) -> None:
    """The hint said ``--role operator`` (which cannot send) and had no ``--config``: run
    elsewhere, the token went to ./data/tokens.toml and was "not valid" here."""
    gw = make_gateway().start()
    page = open_page(gw)
    command = page.locator("#token-command")
    expect(command).to_contain_text(f"--config {gw.config_path.resolve()}")
    expect(command).to_contain_text("--role admin")
    shot(page, "30-sign-in-hint")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    token = run_hint_command(command.inner_text(), elsewhere)
    assert not (elsewhere / "data").exists()  # nothing landed in the wrong place
    sign_in(page, token)
    expect(page.locator("#who-name")).to_have_text("from-the-hint")
    expect(page.locator("#send-section")).to_be_visible()
    expect(page.locator("#role-note")).to_be_hidden()


def test_the_hint_names_data_dir_when_the_token_file_lives_there(
        make_gateway: Callable[..., Gateway], open_page: Callable[..., Page],
        tmp_path: Path) -> None:
    gw = make_gateway({"auth": {"tokens_file": ""}})
    gw.tokens_file = gw.data_dir / "tokens.toml"  # where such a gateway reads tokens
    gw.data_dir.mkdir(mode=0o700)
    gw.token = gw.make_token("admin", name="harness-admin")
    gw.start()
    page = open_page(gw)
    command = page.locator("#token-command")
    expect(command).to_contain_text(f"--data-dir {gw.data_dir.resolve()}")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    sign_in(page, run_hint_command(command.inner_text(), elsewhere))
    expect(page.locator("#who-name")).to_have_text("from-the-hint")


def test_an_operator_gets_no_send_panel_that_would_fail_with_forbidden(
        make_gateway: Callable[..., Gateway], open_page: Callable[..., Page]) -> None:
    gw = make_gateway()
    operator = gw.make_token("operator")
    gw.start()
    page = open_page(gw)
    sign_in(page, operator)
    expect(page.locator("#who-role")).to_have_text("role operator")
    expect(card(page)).to_have_attribute("data-state", "NEW")
    # What it can do is there; what it cannot is not, and a note says why.
    expect(card(page).get_by_role("button", name="Connect default")).to_be_visible()
    expect(page.locator("#messages-section")).to_be_visible()
    expect(page.locator("#send-section")).to_be_hidden()
    expect(page.locator("#check-section")).to_be_hidden()
    note = page.locator("#role-note")
    expect(note).to_contain_text("Role operator")
    expect(note).to_contain_text("cannot send messages")
    expect(note).to_contain_text("admin or sender")
    expect(page.get_by_text("FORBIDDEN")).to_have_count(0)
    shot(page, "31-operator")

    sender = gw.make_token("sender")
    page = open_page(gw)
    sign_in(page, sender)
    expect(page.locator("#send-section")).to_be_visible()
    expect(page.locator("#messages-section")).to_be_hidden()
    expect(card(page).get_by_role("button", name="Connect default")).to_have_count(0)
    expect(page.locator("#add-session-form")).to_be_hidden()
    expect(page.locator("#role-note")).to_contain_text("cannot link, unlink or remove sessions")
    expect(page.get_by_text("FORBIDDEN")).to_have_count(0)
    shot(page, "32-sender")


def test_the_disconnect_dialog_says_sends_are_refused_and_they_are(
        make_gateway: Callable[..., Gateway], open_page: Callable[..., Page]) -> None:
    """It promised "messages sent meanwhile wait in the queue"; a send on a
    DISCONNECTED session is refused with NOT_CONNECTED."""
    gw = make_gateway().start()
    gw.link()
    page = open_page(gw)
    sign_in(page, gw.token)
    session = card(page)
    expect(session).to_have_attribute("data-state", "CONNECTED")
    session.get_by_role("button", name="Disconnect default").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("refused with NOT_CONNECTED")
    expect(dialog).not_to_contain_text("wait in the queue")
    shot(page, "33-confirm-disconnect", full_page=False)
    dialog.get_by_role("button", name="Disconnect").click()
    expect(session).to_have_attribute("data-state", "DISCONNECTED")
    expect(session).to_contain_text("refused (NOT_CONNECTED)")
    # Still linked: it can be logged out, not removed.
    expect(session.get_by_role("button", name="Log out default")).to_be_visible()
    expect(session.get_by_role("button", name="Remove default")).to_be_hidden()

    page.get_by_label("Phone number, with country code").fill(RECIPIENT)
    page.get_by_role("button", name="Send message").click()
    expect(page.locator("#send-result")).to_contain_text("NOT_CONNECTED")
    assert gw.inbox() == []
    session.get_by_role("button", name="Log out default").click()
    expect(dialog).to_contain_text("SESSION_LOGGED_OUT")
    dialog.get_by_role("button", name="Cancel").click()


def test_at_phone_width_messages_stay_readable_and_dead_sessions_can_go(
        make_gateway: Callable[..., Gateway], open_page: Callable[..., Page]) -> None:
    gw = make_gateway(FAST_QR).start()
    gw.link()
    gw.sim("fail-next", "1")
    assert gw.send(RECIPIENT, "one that fails").errors
    assert not gw.send(RECIPIENT, "one that goes").errors
    page = open_page(gw, PHONE)
    sign_in(page, gw.token)
    expect(card(page)).to_have_attribute("data-state", "CONNECTED")
    rows = page.locator("#messages-body tr")
    expect(rows).to_have_count(2)

    # No sideways scroll anywhere; every row's State and a long error fit the screen.
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the page is {width} px wide on {PHONE['width']} px"
    wrap = page.locator(".table-wrap")
    assert wrap.evaluate("e => e.scrollWidth <= e.clientWidth"), "the table scrolls sideways"
    failed = rows.filter(has_text="FAILED")
    expect(failed).to_contain_text("rejected")
    for i in range(rows.count()):
        chip = rows.nth(i).locator(".chip")
        expect(chip).to_be_visible()
        box = chip.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], \
            box
    details = failed.locator("td.details")
    box = details.bounding_box()
    assert box is not None and box["x"] + box["width"] <= PHONE["width"], box
    assert details.evaluate("e => e.scrollWidth <= e.clientWidth"), "the error is cut"
    expect(failed.locator("td[data-label=State]")).to_be_visible()
    details.scroll_into_view_if_needed()
    shot(page, "34-phone-messages")

    # The phone field's example does not look like a value.
    phone_field = page.get_by_label("Phone number, with country code")
    expect(phone_field).to_have_attribute("placeholder", re.compile(r"^e\.g\. "))
    assert phone_field.evaluate("e => getComputedStyle(e, '::placeholder').fontStyle") == \
        "italic"

    # A session that never linked: no Log out, but it can be removed from the list.
    page.get_by_label("Session name").fill("stale")
    page.get_by_role("button", name="Connect", exact=True).click()
    stale = card(page, "stale")
    expect(stale).to_have_attribute("data-state", "QR_EXPIRED", timeout=30_000)
    expect(stale.get_by_role("button", name="Log out stale")).to_have_count(0)
    # Its last error is a sentence: it gets the card's whole width, not a narrow column.
    error_box = stale.get_by_test_id("last-error").bounding_box()
    card_box = stale.bounding_box()
    assert error_box and card_box and error_box["width"] >= 0.8 * card_box["width"] - 40, \
        (error_box, card_box)
    expect(card(page).get_by_role("button", name="Remove default")).to_be_hidden()  # linked
    shot(page, "35-phone-never-linked")
    stale.get_by_role("button", name="Remove stale").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("SESSION_FORGOTTEN")
    dialog.get_by_role("button", name="Remove").click()
    expect(stale).to_have_count(0)
    wait_for(lambda: "stale" not in [s["session"] for s in gw.gql(
        "{ whatsAppSessions { session } }").data["whatsAppSessions"]], 10,
        message="the gateway to forget session stale")
    page.reload()
    expect(card(page)).to_have_attribute("data-state", "CONNECTED")
    expect(card(page, "stale")).to_have_count(0)
    shot(page, "36-phone-removed")
