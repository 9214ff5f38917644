"""The operator dashboard in a real browser against a real gateway: sign in, link a
simulated phone by QR code or pairing code, send, log out; roles, demo mode, phones."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import Locator, Page, expect

from tests.browser.conftest import FAST_QR, PHONE, shot
from tests.integration.harness import Gateway, wait_for

RECIPIENT = "+1 415 555 2671"
CONTROLS = "input, select, textarea, button, summary, [role=button]"


def card(page: Page, session: str = "default") -> Locator:
    return page.locator(f'article[data-session="{session}"]')


def sign_in(page: Page, token: str) -> None:
    page.get_by_label("API token", exact=True).fill(token)
    page.get_by_role("button", name="Sign in").click()


def expect_labelled_controls(page: Page) -> None:
    """Every visible form control has an accessible name (a label, or its text)."""
    controls = page.locator(CONTROLS)
    checked = 0
    for i in range(controls.count()):
        control = controls.nth(i)
        if control.is_visible():
            expect(control).to_have_accessible_name(re.compile(r"\S"))
            checked += 1
    assert checked, "no visible form controls"


def test_link_a_phone_and_send_a_message_from_the_dashboard(
        make_gateway: Callable[..., Gateway], open_page: Callable[..., Page]) -> None:
    gw = make_gateway(FAST_QR).start()
    page = open_page(gw)

    # Asked for a token once; a wrong one shows the API's own message.
    expect(page.get_by_role("heading", name="Sign in with an API token")).to_be_visible()
    expect(page.locator("#demo-banner")).to_be_hidden()
    expect_labelled_controls(page)
    shot(page, "01-sign-in")
    sign_in(page, "wgt_wrong")
    expect(page.get_by_role("alert").filter(has_text="UNAUTHENTICATED")).to_contain_text(
        "this API token is not valid")
    shot(page, "02-wrong-token")
    sign_in(page, gw.token)

    session = card(page)
    expect(session).to_have_attribute("data-state", "NEW")
    expect(page.locator("#who-name")).to_have_text("harness-admin")
    expect(session).to_contain_text("Not linked")
    expect_labelled_controls(page)
    shot(page, "03-dashboard-new-session")

    # Pairing: a big QR code that changes by itself, with a countdown.
    page.evaluate("window.__notReloaded = true")
    session.get_by_role("button", name="Connect default").click()
    expect(session).to_have_attribute("data-state", "QR_PENDING")
    qr = session.get_by_test_id("qr")
    expect(qr).to_have_attribute("src", re.compile(r"^data:image/svg\+xml;base64,"))
    expect(session.get_by_test_id("countdown")).to_contain_text(re.compile(r"expires in \d+ s"))
    box = qr.bounding_box()
    assert box is not None and box["width"] >= 250, box  # big enough to scan
    first_code = qr.get_attribute("src")
    shot(page, "04-qr-pending")
    expect(qr).not_to_have_attribute("src", first_code or "")  # the code rotated
    shot(page, "05-qr-rotated")

    # Unscanned, the window closes: QR_EXPIRED, and a new code on request.
    expect(session).to_have_attribute("data-state", "QR_EXPIRED")
    expect(session).to_contain_text("Press New code")
    expect(qr).to_be_hidden()
    shot(page, "06-qr-expired")
    session.get_by_role("button", name="New code for default").click()
    expect(session).to_have_attribute("data-state", "QR_PENDING")
    expect(qr).to_have_attribute("src", re.compile(r"^data:image/svg\+xml;base64,"))
    shot(page, "07-new-code")

    # The phone scans it: the card turns connected without a reload.
    gw.sim("scan", "--session", "default")
    expect(session).to_have_attribute("data-state", "CONNECTED")
    expect(session.get_by_test_id("phone")).to_have_text(re.compile(r"^\+\d{6,}$"))
    expect(session.get_by_test_id("uptime")).to_have_text(re.compile(r"\d+ s"))
    expect(qr).to_be_hidden()
    assert page.evaluate("window.__notReloaded") is True
    shot(page, "08-connected")

    # A test message reaches the simulated recipient and shows in the recent messages.
    page.get_by_label("Phone number, with country code").fill(RECIPIENT)
    page.get_by_label("Message", exact=True).fill("Hello from the dashboard test")
    page.get_by_role("button", name="Send message").click()
    expect(page.locator("#send-result")).to_contain_text("Accepted: message")
    wait_for(lambda: "Hello from the dashboard test" in [m["text"] for m in gw.inbox()], 15,
             interval=0.2, message="the message in the simulator's inbox")
    row = page.locator("#messages-body tr").filter(has_text="+14155552671").first
    expect(row).to_contain_text(re.compile(r"SENT|DELIVERED|READ"))
    page.get_by_role("button", name="Connection test").click()
    expect(page.locator("#send-result")).to_contain_text("WhatsApp acknowledged")
    expect(page.locator("#usage-text")).to_contain_text(re.compile(r"^2 of 1000"))
    expect(page.locator("#messages-body tr")).to_have_count(2)  # the test message too
    expect(page.locator("#messages-more")).to_be_hidden()
    shot(page, "09-message-sent")

    # Log out asks first; cancelling changes nothing.
    session.get_by_role("button", name="Log out default").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("Log out default?")
    shot(page, "10-confirm-logout", full_page=False)
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()
    expect(session).to_have_attribute("data-state", "CONNECTED")
    session.get_by_role("button", name="Log out default").click()
    dialog.get_by_role("button", name="Log out").click()
    expect(session).to_have_attribute("data-state", "LOGGED_OUT")
    expect(session).to_contain_text("scan a new QR code")
    shot(page, "11-logged-out")
    assert gw.status()["state"] == "LOGGED_OUT"


def test_link_a_named_session_with_a_pairing_code(
        make_gateway: Callable[..., Gateway], open_page: Callable[..., Page]) -> None:
    gw = make_gateway({"qr": {"first_seconds": 30.0, "next_seconds": 10.0, "codes": 2}}).start()
    page = open_page(gw)
    sign_in(page, gw.token)
    expect(card(page)).to_have_attribute("data-state", "NEW")

    page.get_by_label("Session name").fill("bad name!")
    page.get_by_role("button", name="Connect", exact=True).click()
    expect(page.locator("#add-session-error")).to_contain_text("1 to 64 letters")
    page.get_by_label("Session name").fill("alerts")
    page.get_by_role("button", name="Connect", exact=True).click()
    alerts = card(page, "alerts")
    expect(alerts).to_have_attribute("data-state", "QR_PENDING")

    alerts.get_by_text("No camera? Link with a phone number instead").click()
    alerts.get_by_label("The phone's own number, with country code").fill("+49 151 2345 6789")
    alerts.get_by_role("button", name="Get pairing code").click()
    code_box = alerts.get_by_test_id("pairing-code")
    expect(code_box).to_contain_text(re.compile(r"[A-Z0-9]{4}-[A-Z0-9]{4}"))
    expect_labelled_controls(page)
    shot(page, "12-pairing-code")
    code = re.search(r"[A-Z0-9]{4}-[A-Z0-9]{4}", code_box.inner_text())
    assert code is not None
    gw.sim("scan", "--session", "alerts", "--code", code.group(0))
    expect(alerts).to_have_attribute("data-state", "CONNECTED")
    expect(alerts.get_by_test_id("phone")).to_have_text("+4915123456789")
    expect(card(page)).to_have_attribute("data-state", "NEW")  # the other one is untouched
    expect(page.locator("#send-session option")).to_have_text(["alerts", "default"])

    # The same page on a phone-sized screen: one column, nothing wider than the screen.
    phone = open_page(gw, PHONE)
    sign_in(phone, gw.token)
    expect(card(phone, "alerts")).to_have_attribute("data-state", "CONNECTED")
    width = phone.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the page is {width} px wide on a {PHONE['width']} px screen"
    expect_labelled_controls(phone)
    shot(phone, "13-phone-390x844", full_page=False)
    shot(phone, "14-phone-390x844-full")


def test_a_viewer_sees_only_what_it_may_see(
        make_gateway: Callable[..., Gateway], open_page: Callable[..., Page]) -> None:
    """A viewer's page used to offer Connect and the send panel, which ended in
    FORBIDDEN; it now shows the state only, and a note says what is hidden and why."""
    gw = make_gateway()
    viewer = gw.make_token("viewer", sessions=["default"])  # read at start
    gw.start()
    page = open_page(gw)
    sign_in(page, viewer)
    expect(page.locator("#who-role")).to_have_text("role viewer")
    # Limited to "default": the daily count of every session's sends is not its to see.
    expect(page.locator("#usage-text")).to_contain_text("not shown")
    expect(page.locator("#usage-meter")).to_be_hidden()
    session = card(page)
    expect(session).to_have_attribute("data-state", "NEW")
    expect(session.get_by_role("button")).to_have_count(0)
    expect(session).to_contain_text("Press Connect (whatsAppConnect), then scan the QR code "
                                    "with the phone. "
                                    "(with a token of role admin or operator)")
    for hidden in ("#send-section", "#check-section", "#messages-section", "#add-session-form"):
        expect(page.locator(hidden)).to_be_hidden()
    note = page.locator("#role-note")
    expect(note).to_contain_text("Role viewer")
    expect(note).to_contain_text("cannot link, unlink or remove sessions")
    expect(page.get_by_text("FORBIDDEN")).to_have_count(0)
    shot(page, "15-viewer")
    assert gw.status()["state"] == "NEW"  # nothing happened

    # The token is kept for the tab: a reload does not ask again; forgetting it does.
    page.reload()
    expect(page.locator("#who-name")).to_have_text(re.compile(r"^viewer-"))
    page.get_by_role("button", name="Forget token").click()
    expect(page.get_by_label("API token", exact=True)).to_be_visible()
    page.reload()
    expect(page.get_by_label("API token", exact=True)).to_be_visible()


def test_demo_mode_needs_no_token_and_says_so(
        make_gateway: Callable[..., Gateway], open_page: Callable[..., Page]) -> None:
    gw = make_gateway({"auth": {"required": False}}).start()
    page = open_page(gw)
    expect(page.locator("#demo-banner")).to_be_visible()
    expect(page.locator("#demo-banner")).to_contain_text("without API tokens")
    expect(page.get_by_label("API token", exact=True)).to_be_hidden()
    expect(page.locator("#who-name")).to_have_text("demo")
    expect(page.get_by_role("button", name="Forget token")).to_be_hidden()
    expect(card(page)).to_have_attribute("data-state", "NEW")
    shot(page, "16-demo-mode")


def test_a_long_message_is_counted_and_refused_never_cut(
        make_gateway: Callable[..., Gateway], open_page: Callable[..., Page]) -> None:
    """A pasted 5000-character message used to be cut to 4096 by the textarea's
    maxlength and the cut text delivered ("Accepted ... SENT"). The page shows the count
    in the API's unit (code points) and the API's refusal, and never changes the text."""
    gw = make_gateway().start()
    gw.link()
    page = open_page(gw)
    sign_in(page, gw.token)
    expect(card(page)).to_have_attribute("data-state", "CONNECTED")
    page.get_by_label("Phone number, with country code").fill(RECIPIENT)
    box = page.get_by_label("Message", exact=True)

    too_long = "x" * 4990 + "\U0001f600" * 10  # 5000 code points, 5010 UTF-16 units
    box.fill(too_long)
    assert box.input_value() == too_long  # nothing was cut
    count = page.locator("#send-count")
    expect(count).to_contain_text("5000 of 4096 characters: 904 too many")
    shot(page, "17-message-too-long")
    page.get_by_role("button", name="Send message").click()
    result = page.locator("#send-result")
    expect(result).to_contain_text("INVALID_MESSAGE")
    expect(result).to_contain_text("message is 5000 characters long but the limit is 4096")
    assert box.input_value() == too_long

    # 4096 emoji are 4096 characters to the API (8192 UTF-16 units): accepted, unchanged.
    longest = "\U0001f600" * 4096
    box.fill(longest)
    assert box.input_value() == longest
    expect(count).to_have_text("4096 of 4096 characters")
    page.get_by_role("button", name="Send message").click()
    expect(result).to_contain_text("Accepted: message")
    wait_for(lambda: longest in [m["text"] for m in gw.inbox()], 15, interval=0.2,
             message="the 4096-emoji message in the inbox")
    assert not any(m["text"].startswith("x" * 4000) for m in gw.inbox())


def test_a_long_session_name_is_refused_not_cut(
        make_gateway: Callable[..., Gateway], open_page: Callable[..., Page]) -> None:
    """The session-name field cut a pasted 70-character name to 64 and connected a
    session nobody named; the page refuses it instead."""
    gw = make_gateway().start()
    page = open_page(gw)
    sign_in(page, gw.token)
    expect(card(page)).to_have_attribute("data-state", "NEW")
    name = "a" * 70
    page.get_by_label("Session name").fill(name)
    assert page.get_by_label("Session name").input_value() == name
    page.get_by_role("button", name="Connect", exact=True).click()
    expect(page.locator("#add-session-error")).to_contain_text("1 to 64 letters")
    sessions = gw.gql("{ whatsAppSessions { session } }").data["whatsAppSessions"]
    assert not [s for s in sessions if s["session"].startswith("a" * 64)], sessions
    expect(card(page, "a" * 64)).to_have_count(0)


def test_check_numbers_box_tells_who_is_on_whatsapp(
        make_gateway: Callable[..., Gateway], open_page: Callable[..., Page]) -> None:
    gw = make_gateway().start()
    gw.link()
    gw.sim("unregister", "4915112345002")
    page = open_page(gw)
    sign_in(page, gw.token)
    expect(card(page)).to_have_attribute("data-state", "CONNECTED")
    page.get_by_label("Phone numbers, with country code").fill(
        "+49 151 12345001\n+49 151 12345002")
    page.get_by_role("button", name="Check on WhatsApp").click()
    answers = page.locator("#check-result li")
    expect(answers).to_have_count(2)
    expect(answers.nth(0)).to_have_text("+4915112345001: on WhatsApp")
    expect(answers.nth(1)).to_contain_text("NOT on WhatsApp")
    expect_labelled_controls(page)
    shot(page, "20-check-numbers")
    page.get_by_role("button", name="Check on WhatsApp").click()
    expect(answers.nth(0)).to_contain_text("cached")


def test_attach_a_picture_and_a_document_in_the_send_form(
        make_gateway: Callable[..., Gateway], open_page: Callable[..., Page],
        tmp_path: Path) -> None:
    """The send form's file field: a picture shows its preview and goes out as an IMAGE
    with the message as caption; a PDF shows as a chip and goes out as a DOCUMENT; both
    reach the simulated recipient byte for byte."""
    from tests import media_fixtures as fx

    gw = make_gateway({"simulator": {"server_dir": str(tmp_path / "servers")}}).start()
    gw.link()
    page = open_page(gw)
    sign_in(page, gw.token)
    expect(card(page)).to_have_attribute("data-state", "CONNECTED")
    picture, pdf = tmp_path / "photo.png", tmp_path / "report.pdf"
    picture.write_bytes(fx.png())
    pdf.write_bytes(fx.pdf())

    page.get_by_label("Phone number, with country code").fill(RECIPIENT)
    page.get_by_label("Message", exact=True).fill("Your order")
    page.locator("#send-file").set_input_files(str(picture))
    expect(page.locator("#send-preview")).to_have_attribute(
        "src", re.compile(r"^data:image/png;base64,"))
    expect(page.locator("#send-kind")).to_have_value("IMAGE")
    shot(page, "20-attached-picture")
    page.get_by_role("button", name="Send message").click()
    expect(page.locator("#send-result")).to_contain_text("Accepted: image")
    expect(page.locator("#send-attachment")).to_be_hidden()  # cleared after the send

    page.locator("#send-file").set_input_files(str(pdf))
    expect(page.locator("#send-file-chip")).to_contain_text("report.pdf")
    expect(page.locator("#send-preview")).to_be_hidden()
    expect(page.locator("#send-kind")).to_have_value("DOCUMENT")
    page.get_by_role("button", name="Send message").click()
    expect(page.locator("#send-result")).to_contain_text("Accepted: document")
    shot(page, "21-sent-document")

    def both() -> list[dict[str, object]] | None:
        found = [m for m in gw.inbox() if m.get("kind")]
        return found if len(found) == 2 else None

    image, document = sorted(wait_for(both, 15, 0.2, "both files at the recipient"),
                             key=lambda m: str(m["kind"]) != "IMAGE")
    assert image["kind"] == "IMAGE" and image["text"] == "Your order"
    assert document["kind"] == "DOCUMENT" and document["file_name"] == "report.pdf"
    out = tmp_path / "got"
    gw.sim("media", str(image["id"]), "--out", str(out))
    assert out.read_bytes() == picture.read_bytes()


def test_a_received_picture_shows_as_a_thumbnail_and_a_sent_file_in_recent_messages(
        make_gateway: Callable[..., Gateway], open_page: Callable[..., Page],
        tmp_path: Path) -> None:
    from tests import media_fixtures as fx

    gw = make_gateway({"simulator": {"server_dir": str(tmp_path / "servers")}}).start()
    gw.link()
    picture = tmp_path / "hello.png"
    picture.write_bytes(fx.png())
    gw.sim("reply", "--to-session", "default", "--from", "4915112345678", "--file",
           str(picture), "--text", "look")
    page = open_page(gw)
    sign_in(page, gw.token)
    chip = page.get_by_test_id("file-chip").first
    expect(chip).to_contain_text("image · image/png")
    expect(page.get_by_test_id("thumbnail").first).to_have_attribute(
        "src", re.compile(r"^data:image/png;base64,"))
    page.get_by_label("Phone number, with country code").fill(RECIPIENT)
    page.locator("#send-file").set_input_files(str(picture))
    page.get_by_role("button", name="Send message").click()
    expect(page.locator("#send-result")).to_contain_text("Accepted: image")
    expect(page.locator("#messages-body tr").first).to_contain_text("image · image/png")
    shot(page, "22-received-thumbnail")
