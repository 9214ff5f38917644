"""Media messages end to end through ``wagate serve`` with the simulator: every kind
uploaded by the GraphQL multipart request specification and fetched by url, received
byte for byte by the simulated recipient; every refusal; the files encrypted at rest.

One gateway for the module (a start costs seconds; CI time is tight). The simulated
WhatsApp server keeps what recipients received outside data_dir (simulator.server_dir),
as WhatsApp's servers are not the gateway's disk: so the encrypted-at-rest check looks
at everything the gateway itself wrote.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from tests import media_fixtures as fx
from tests.integration.harness import Gateway, expect_error, wait_for

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


def received(gateway: Gateway, sha256: str, deadline: float = 15) -> dict[str, Any]:
    return wait_for(lambda: next((m for m in gateway.inbox() if m.get("sha256") == sha256),
                                 None), deadline, 0.1, f"the file {sha256[:8]} at the recipient")


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
    if kind == "DOCUMENT":  # what an operator reads in `wagate sim inbox`
        line = next(x for x in gateway.sim("inbox").stdout.splitlines()
                    if at_recipient["id"] in x)
        assert f"[DOCUMENT application/pdf {len(data)} bytes sha256 {media['sha256']}" in line
        assert "'a document'" in line and "attachment" in served.headers[
            "Content-Disposition"]


# ---- refusals ------------------------------------------------------------------------------


def error_of(response: requests.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["data"] is None and len(body["errors"]) == 1, body
    return dict(body["errors"][0])


def test_every_refusal_has_its_code_and_leaves_no_file(gateway: Gateway) -> None:
    before = stored_files(gateway)
    mismatch = error_of(upload(gateway, "IMAGE", fx.pdf()))
    assert mismatch["extensions"]["code"] == "INVALID_MEDIA"
    assert mismatch["extensions"]["reason"] == "TYPE_MISMATCH"
    assert mismatch["extensions"]["mime"] == "application/pdf"
    voice = error_of(upload(gateway, "VOICE", fx.ogg_vorbis()))["extensions"]
    assert voice["reason"] == "TYPE_MISMATCH"
    big = fx.webp() + bytes(20_000)  # over this gateway's 0.01 MB sticker limit
    too_large = error_of(upload(gateway, "STICKER", big))["extensions"]
    assert too_large == {"code": "INVALID_MEDIA", "reason": "TOO_LARGE",
                         "limit": int(0.01 * 1024 * 1024)} | {
        k: v for k, v in too_large.items() if k == "requestId"}
    empty = error_of(upload(gateway, "DOCUMENT", b""))["extensions"]
    assert empty["reason"] == "UNREADABLE"
    caption = error_of(upload(gateway, "IMAGE", fx.png(), caption="x" * 1025))["extensions"]
    assert caption["code"] == "INVALID_MESSAGE" and caption["field"] == "caption"
    number = error_of(upload(gateway, "IMAGE", fx.png(), phoneNumber="12"))["extensions"]
    assert number["code"] == "INVALID_NUMBER"
    both = error_of(upload(gateway, "IMAGE", fx.png(), url="https://example.com/a.png"))
    assert both["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    assert stored_files(gateway) == before  # nothing refused was kept
    assert not temp_files(gateway)  # nor half kept


def test_a_key_reused_for_another_file_is_refused_and_a_resend_is_a_duplicate(
        gateway: Gateway) -> None:
    data = fx.png() + os.urandom(8)
    first = sent(upload(gateway, "IMAGE", data, idempotencyKey="media-key-1"))
    repeat = sent(upload(gateway, "IMAGE", data, idempotencyKey="media-key-1"))
    assert repeat["id"] == first["id"]
    other = error_of(upload(gateway, "IMAGE", fx.png() + os.urandom(8),
                            idempotencyKey="media-key-1"))
    assert other["extensions"]["code"] == "IDEMPOTENCY_KEY_REUSED"
    received(gateway, first["media"]["sha256"])
    assert sum(m.get("sha256") == first["media"]["sha256"] for m in gateway.inbox()) == 1


def test_ranges_are_served_as_players_ask(gateway: Gateway) -> None:
    data = fx.mp4() + os.urandom(200_000)  # over three encryption chunks
    media = sent(upload(gateway, "VIDEO", data))["media"]
    url = gateway.url + media["url"]
    part = gateway.http.get(url, headers={"Range": "bytes=65530-131080"}, timeout=10)
    assert part.status_code == 206 and part.content == data[65530:131081]
    assert part.headers["Content-Range"] == f"bytes 65530-131080/{len(data)}"
    assert part.headers["Content-Length"] == str(131081 - 65530)
    tail = gateway.http.get(url, headers={"Range": "bytes=-10"}, timeout=10)
    assert tail.status_code == 206 and tail.content == data[-10:]
    outside = gateway.http.get(url, headers={"Range": f"bytes={len(data)}-"}, timeout=10)
    assert outside.status_code == 416
    whole = gateway.http.get(url, timeout=10)
    assert whole.headers["Content-Length"] == str(len(data)) and whole.content == data
    assert whole.headers["X-Content-Type-Options"] == "nosniff"
    other = gateway.make_token("operator", sessions=["other"])
    hidden = requests.get(url, headers={"Authorization": f"Bearer {other}"}, timeout=10)
    assert hidden.status_code == 404
    assert gateway.http.get(gateway.url + "/media/nope", timeout=10).status_code == 404


# ---- url sends ------------------------------------------------------------------------------


class FileServer:
    """A loopback web server with a few files and one redirect."""

    def __init__(self, files: dict[str, bytes]) -> None:
        handler_files = files

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", "/a.png")
                    self.end_headers()
                    return
                body = handler_files.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def send_url(gateway: Gateway, kind: str, url: str) -> Any:
    return gateway.gql(SEND, {"input": {"phoneNumber": PHONE, "kind": kind, "url": url}})


def test_a_url_is_fetched_and_its_failures_are_fetch_failed(gateway: Gateway) -> None:
    data = fx.pdf() + os.urandom(32)
    with FileServer({"/report.pdf": data}) as server:
        record = send_url(gateway, "DOCUMENT", server.url("/report.pdf"))
        assert not record.errors, record
        media = record.data["sendWhatsAppMedia"]["media"]
        assert media["fileName"] == "report.pdf" and media["size"] == len(data)
        assert received(gateway, media["sha256"])["file_name"] == "report.pdf"
        for path, fragment in (("/missing.pdf", "404"), ("/redirect", "redirect")):
            error = expect_error(send_url(gateway, "DOCUMENT", server.url(path)),
                                 "INVALID_MEDIA", fragment)
            assert error["extensions"]["reason"] == "FETCH_FAILED"
    private = expect_error(send_url(gateway, "DOCUMENT", "http://10.0.0.1/x.pdf"),
                           "INVALID_MEDIA", "media.allow_insecure")
    assert private["extensions"]["reason"] == "FETCH_FAILED"


# ---- receiving and the store ---------------------------------------------------------------


def test_a_voice_note_reply_becomes_an_event_served_by_media(
        gateway: Gateway, tmp_path: Path) -> None:
    voice = fx.ogg_opus() + os.urandom(64)
    path = tmp_path / "note.ogg"
    path.write_bytes(voice)
    gateway.sim("reply", "--to-session", "default", "--from", "4915112345678",
                "--file", str(path))

    def event() -> dict[str, Any] | None:
        answer = gateway.gql('{ whatsAppEvents(first: 200, types: [MESSAGE_RECEIVED]) '
                             "{ edges { node { data } } } }")
        assert not answer.errors, answer
        return next((e["node"]["data"] for e in answer.data["whatsAppEvents"]["edges"]
                     if (e["node"]["data"].get("media") or {}).get("size") == len(voice)), None)

    data = wait_for(event, 15, 0.1, "the voice note's message.received event")
    media = data["media"]
    assert media["kind"] == "VOICE" and media["mime"] == "audio/ogg"
    assert data["kind"] == "voice" and media["file_name"] == "note.ogg"
    served = gateway.http.get(f"{gateway.url}/media/{media['id']}", timeout=10)
    assert served.status_code == 200 and served.content == voice


def temp_files(gateway: Gateway) -> list[Path]:
    """Every file under the media store's temp directories (one per host)."""
    return [p for p in (gateway.data_dir / "media" / "tmp").rglob("*") if p.is_file()]


def stored_files(gateway: Gateway) -> set[str]:
    return {p.name for p in (gateway.data_dir / "media").glob("??/*.wgm")}


def test_no_byte_of_any_file_is_in_clear_under_data_dir(gateway: Gateway) -> None:
    marker = b"WAGATE-PLAINTEXT-MARKER-" + os.urandom(8).hex().encode()
    record = sent(upload(gateway, "DOCUMENT", fx.pdf() + marker * 50, "secret.pdf"))
    received(gateway, record["media"]["sha256"])
    for path in gateway.data_dir.rglob("*"):
        if path.is_file():
            assert marker not in path.read_bytes(), path


def test_health_and_metrics_show_the_media_store(gateway: Gateway) -> None:
    sent(upload(gateway, "DOCUMENT", fx.pdf() + os.urandom(100)))
    error_of(upload(gateway, "IMAGE", fx.pdf()))
    on_disk = sum(p.stat().st_size for p in (gateway.data_dir / "media").glob("??/*.wgm"))
    # every referenced file once; a file stored and then refused (the reused key above)
    # is on disk, unreferenced, until the sweep
    shown = gateway.health()["mediaStore"]["bytes"]
    assert 0 < shown <= on_disk
    text = gateway.http.get(gateway.url + "/metrics", timeout=10).text
    assert f"wagate_media_bytes {float(shown)}" in text
    assert 'wagate_media_messages_total{kind="DOCUMENT",outcome="accepted"}' in text
    assert 'wagate_media_messages_total{kind="IMAGE",outcome="INVALID_MEDIA"}' in text
    assert 'wagate_media_received_total{kind="VOICE"}' in text


def test_a_full_media_store_refuses_with_queue_full(
        make_gateway: Any, tmp_path: Path) -> None:
    """media.max_total_mb (1 MB here): a new file that would not fit is RATE_LIMITED,
    reason QUEUE_FULL, scope media_store; a file already stored still goes (it costs
    nothing more); the refused upload is not counted against the store."""
    gw = make_gateway({"media": {"max_total_mb": 1},
                       "simulator": {"server_dir": str(tmp_path / "servers")}}).start()
    gw.link()
    first = fx.pdf() + os.urandom(700_000)
    sent(upload(gw, "DOCUMENT", first))
    refused = error_of(upload(gw, "DOCUMENT", fx.pdf() + os.urandom(700_000)))
    assert refused["extensions"]["code"] == "RATE_LIMITED"
    assert refused["extensions"]["reason"] == "QUEUE_FULL"
    assert refused["extensions"]["scope"] == "media_store"
    assert "media.max_total_mb" in refused["message"]
    again = sent(upload(gw, "DOCUMENT", first))  # the same file, stored once
    assert again["media"]["size"] == len(first)


def test_a_token_that_may_not_send_stores_nothing(gateway: Gateway) -> None:
    viewer = gateway.make_token("viewer")
    before = stored_files(gateway)
    operations = json.dumps({"query": SEND, "variables": {"input": {
        "phoneNumber": PHONE, "kind": "DOCUMENT", "file": None}}})
    response = requests.post(
        gateway.url + "/graphql", timeout=30, headers={"Authorization": f"Bearer {viewer}"},
        files=[("operations", (None, operations)),
               ("map", (None, json.dumps({"0": ["variables.input.file"]}))),
               ("0", ("x.pdf", fx.pdf() + os.urandom(100_000), "application/pdf"))])
    assert response.status_code == 403 and "FORBIDDEN" in response.text
    assert stored_files(gateway) == before
    assert not temp_files(gateway)


def test_a_gateway_killed_during_an_upload_keeps_no_trace_of_it(
        make_gateway: Any) -> None:
    """A crash between upload and acceptance: SIGKILL while the body streams in (the
    caller never heard anything), then a start: no half-written upload, no stored
    file and no message of it remain (issue 15). Its own gateway: the kill is of
    every process."""
    gw = make_gateway().start()
    gw.link()
    operations = json.dumps({"query": SEND, "variables": {"input": {
        "phoneNumber": PHONE, "kind": "DOCUMENT", "file": None}}}).encode()
    boundary = "wagate-crash-test"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"operations\"\r\n\r\n"
            ).encode() + operations + (
        f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"map\"\r\n\r\n"
        "{\"0\": [\"variables.input.file\"]}\r\n"
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"0\"; filename=\"a.pdf\"\r\n"
        "Content-Type: application/pdf\r\n\r\n").encode()
    part = fx.pdf() + os.urandom(2 * 1024 * 1024)
    tail = f"\r\n--{boundary}--\r\n".encode()
    length = len(head) + len(part) + len(tail)
    temp = gw.data_dir / "media" / "tmp"
    with socket.create_connection(("127.0.0.1", gw.port), timeout=30) as conn:
        conn.sendall((f"POST /graphql HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\n"
                      f"Authorization: Bearer {gw.token}\r\n"
                      f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                      f"Content-Length: {length}\r\n\r\n").encode() + head)
        conn.sendall(part[:len(part) // 2])  # half the file: the rest never comes
        wait_for(lambda: any(temp.rglob(".upload.*.tmp")), 30, 0.05,
                 "the upload being written to data_dir/media/tmp/<host>")
        gw.kill_everything()
    gw.start()
    assert not any(temp.rglob(".upload.*.tmp"))
    stored = [p for p in (gw.data_dir / "media").rglob("*.wgm")]
    assert stored == []
    listed = gw.gql("query { whatsAppMessages(first: 10) { edges { node { id } } } }")
    assert listed.data["whatsAppMessages"]["edges"] == [], listed


def test_retention_deletes_a_sent_file_and_its_download(make_gateway: Any) -> None:
    """A sent file is deleted once its message is finished and ``media.retention_days``
    has passed (here ~2.6 s), at the outbox's first prune after a start: no stored
    file, and ``GET /media/<id>`` answers 404 (issue 15)."""
    gw = make_gateway({"media": {"retention_days": 0.00003}}).start()
    gw.link()
    record = sent(upload(gw, "DOCUMENT", fx.pdf() + os.urandom(1000), "old.pdf"))
    received(gw, record["media"]["sha256"])
    download = gw.url + record["media"]["url"]
    assert gw.http.get(download, timeout=10).status_code == 200
    stored = list((gw.data_dir / "media").rglob("*.wgm"))
    assert len(stored) == 1
    time.sleep(3)  # the condition is the time itself: the retention must have passed
    gw.stop()
    gw.start()  # the outbox prunes at its first tick after a start
    wait_for(lambda: not stored[0].exists(), 30, 0.1, "the file deleted by retention")
    assert gw.http.get(download, timeout=10).status_code == 404


def test_the_readme_curl_example_sends_a_picture(gateway: Gateway, tmp_path: Path) -> None:
    """The README's curl multipart example, run as printed (the port and token of this
    gateway put in): the picture reaches the recipient byte for byte."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("With curl (`-F` makes the multipart request", 1)[1]
    command = block.split("```sh\n", 1)[1].split("```", 1)[0]
    command = command.replace("localhost:8080", f"127.0.0.1:{gateway.port}")
    picture = fx.png()
    (tmp_path / "photo.png").write_bytes(picture)
    done = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "TOKEN": gateway.token})
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert not answer.get("errors"), answer
    media = answer["data"]["sendWhatsAppMedia"]["media"]
    assert media["sha256"] == hashlib.sha256(picture).hexdigest()
    assert received(gateway, media["sha256"])["text"] == "Your order"  # the caption
