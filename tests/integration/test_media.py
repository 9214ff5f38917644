"""Media messages end to end through ``wagate serve`` with the simulator: every kind
uploaded by the GraphQL multipart request specification and fetched by url, received
byte for byte by the simulated recipient; every refusal; the files encrypted at rest.

One gateway for the module (a start costs seconds; CI time is tight). The simulated
WhatsApp server keeps what recipients received outside data_dir (simulator.server_dir),
as WhatsApp's servers are not the gateway's disk: so the encrypted-at-rest check looks
at everything the gateway itself wrote.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests import media_fixtures as fx
from tests.integration.harness import Gateway, wait_for

pytestmark = pytest.mark.integration

SEND = """mutation($input: SendWhatsAppMediaInput!) { sendWhatsAppMedia(input: $input) {
  id state media { id kind mimeType size sha256 fileName url } } }"""
PHONE = "+14155552671"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    root = tmp_path_factory.mktemp("media")
    gw = Gateway(root, {"simulator": {"server_dir": str(root / "whatsapp-servers")},
                        "media": {"max_sticker_mb": 0.01, "allow_insecure": ["127.0.0.0/8"]},
                        "limits": {"per_number_per_minute": 1000,
                                   "per_number_per_hour": 1000}})
    try:
        gw.start()
        gw.link()
        yield gw
        gw.stop()
    finally:
        leftovers = gw.cleanup()
        assert not leftovers, leftovers


def upload(gateway: Gateway, kind: str, data: bytes, name: str = "file.bin",
           **fields: Any) -> requests.Response:
    """One sendWhatsAppMedia as the multipart request spec (and apollo-upload-client) sends it."""
    variables = {"input": {"phoneNumber": PHONE, "kind": kind, "file": None, **fields}}
    operations = json.dumps({"query": SEND, "variables": variables})
    response = gateway.http.post(
        gateway.url + "/graphql", timeout=60,
        files=[("operations", (None, operations)),
               ("map", (None, json.dumps({"0": ["variables.input.file"]}))),
               ("0", (name, data, "application/octet-stream"))])
    assert "Traceback" not in response.text, response.text
    return response


def sent(response: requests.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body = response.json()
    assert not body.get("errors"), body
    return dict(body["data"]["sendWhatsAppMedia"])


def received(gateway: Gateway, sha256: str) -> dict[str, Any]:
    return wait_for(lambda: next((m for m in gateway.inbox() if m.get("sha256") == sha256),
                                 None), 15, 0.1, f"the file {sha256[:8]} at the recipient")


@pytest.mark.parametrize(("kind", "make", "mime"), [
    ("IMAGE", fx.png, "image/png"), ("VIDEO", fx.mp4, "video/mp4"),
    ("AUDIO", fx.mp3, "audio/mpeg"), ("VOICE", fx.ogg_opus, "audio/ogg"),
    ("DOCUMENT", fx.pdf, "application/pdf"), ("STICKER", fx.webp, "image/webp")])
def test_each_kind_reaches_the_recipient_byte_for_byte(
        gateway: Gateway, tmp_path: Path, kind: str, make: Any, mime: str) -> None:
    data = make() + os.urandom(16)  # unique per run: nothing deduplicated by accident
    caption = {"caption": f"a {kind.lower()}"} if kind in ("IMAGE", "VIDEO", "DOCUMENT") else {}
    record = sent(upload(gateway, kind, data, f"x.{kind.lower()}", **caption))
    media = record["media"]
    assert media["kind"] == kind and media["mimeType"] == mime and media["size"] == len(data)
    at_recipient = received(gateway, media["sha256"])
    assert at_recipient["kind"] == kind and at_recipient["mime"] == mime
    assert at_recipient["text"] == caption.get("caption", "")
    out = tmp_path / "out"
    gateway.sim("media", at_recipient["id"], "--out", str(out))
    assert out.read_bytes() == data
    served = gateway.http.get(gateway.url + media["url"], timeout=10)
    assert served.status_code == 200 and served.content == data
    assert served.headers["Content-Type"] == mime
