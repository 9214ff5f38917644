"""The real transport (neonize 0.5.2) against real Go code, offline.

Each scenario of ``tests/neonize/scenarios.py`` runs in a child process (pytest
itself never loads neonize's Go runtime: a process that has it must not fork, and
a Go panic would kill pytest), inside a fresh network namespace with only loopback
when ``unshare -n`` works here, and always with the client's proxy on 127.0.0.1.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from actors.transport.engine import BOT_TAG, engine_environment, library_file_name

REPO = Path(__file__).resolve().parents[2]
SCENARIO_TIMEOUT = 60.0


def _neonize_problem() -> str | None:
    """Why neonize cannot be used here (None when it can), checked in a child process."""
    if importlib.util.find_spec("neonize") is None:
        return "neonize is not installed (pip install -e '.[test]' installs it)"
    probe = subprocess.run([sys.executable, "-c", "import neonize.client"], cwd=REPO,
                           capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        return f"import neonize.client fails: {probe.stderr.strip().splitlines()[-1:]}"
    return None


_PROBLEM = _neonize_problem()
if _PROBLEM is not None:
    pytest.skip(_PROBLEM, allow_module_level=True)


@functools.cache
def _netns_prefix() -> tuple[str, ...]:
    """A fresh network namespace with only loopback (``unshare -n`` as root, or with
    a user namespace, ``-rn``, otherwise) when this host allows it, else nothing:
    the scenarios then rely on their 127.0.0.1 proxies alone."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return ()
    for flags in (("-n",), ("-r", "-n")):
        prefix = ("unshare", *flags, "--", "sh", "-c", 'ip link set lo up && exec "$0" "$@"')
        try:
            probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return prefix
    return ()


def run_scenario(name: str, workdir: Path, env: dict[str, str] | None = None,
                 stderr: list[str] | None = None,
                 stdout: list[str] | None = None) -> dict[str, Any]:
    """Run one scenario in a child process and return what it observed.

    The child starts with the environment a gateway gives its sessions (the engine's
    variables for the default configuration), unless ``env`` replaces it; its standard
    error is appended to ``stderr`` when given. ``subprocess.run`` kills the child when
    the deadline passes; ``unshare`` and ``sh`` exec into Python, so that one kill ends
    everything the scenario started.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    command = [*_netns_prefix(), sys.executable, "-m", "tests.neonize.scenarios", name,
               str(workdir)]
    if env is None:
        env = {**os.environ, **engine_environment(mark_as_bot=False)}
    env = {**env, "PYTHONPATH": env.get("PYTHONPATH", str(REPO))}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=SCENARIO_TIMEOUT)
    if stderr is not None:
        stderr.append(done.stderr)
    if stdout is not None:
        stdout.append(done.stdout)
    assert done.returncode == 0, f"scenario {name} failed:\n{done.stderr[-4000:]}"
    return json.loads((workdir / "result.json").read_text(encoding="utf-8"))


def test_scenarios_run_isolated_when_the_host_allows_it() -> None:
    """Documents (and keeps visible in -v output) how the network is fenced in."""
    if not _netns_prefix():
        pytest.skip("unshare -n is not available here; scenarios rely on loopback proxies")
    assert _netns_prefix()[0] == "unshare" and "-n" in _netns_prefix()


# --------------------------------------------------------------------------- dialing

PRIVATE_DIR, PRIVATE_FILE = 0o700, 0o600


@pytest.mark.parametrize(("mode", "expected"), [
    ("refused", "connection refused"),
    ("close", "unexpected EOF"),
    ("http502", "Bad Gateway"),
    ("ok_then_close", "connection reset by peer"),
])
def test_a_failed_dial_reports_one_disconnected_and_closes_cleanly(
        tmp_path: Path, mode: str, expected: str) -> None:
    result = run_scenario(mode, tmp_path)
    assert result["events"] == [{"type": "Disconnected", "recovering": False,
                                 "reason": result["events"][0]["reason"]}]
    reason = result["events"][0]["reason"]
    assert expected in reason
    assert reason.startswith("failed to dial whatsapp web websocket")
    assert result["first_event_seconds"] < 5.0
    assert result["connect_returned_seconds"] < 0.5  # connect() never waits for the dial
    assert result["close_seconds"] < 0.1
    assert result["wait_closed"] is True
    assert result["events_after_close"] == []
    assert result["non_daemon_threads"] == []
    assert result["early_send"] == {"reason": "NOT_CONNECTED", "permanent": False,
                                    "message": "the session is not connected"}
    assert result["early_lookup"] == {"reason": "NOT_CONNECTED", "permanent": False,
                                      "message": "the session is not connected"}
    assert result["has_credentials"] is False
    modes = result["modes"]
    assert (modes["sessions"], modes["session"]) == (PRIVATE_DIR, PRIVATE_DIR)
    assert modes["neonize.db"] == PRIVATE_FILE
    assert modes["neonize.db-wal"] in (None, PRIVATE_FILE)
    assert modes["neonize.db-shm"] in (None, PRIVATE_FILE)
    if mode != "refused":
        assert result["proxy_connections"] == 1
        assert result["proxy_requests"] == ["CONNECT web.whatsapp.com:443 HTTP/1.1"]
        assert result["proxy_threads"] == []


def test_close_during_a_hanging_tls_handshake_returns_at_once(tmp_path: Path) -> None:
    result = run_scenario("tls_hang", tmp_path)
    assert result["proxy_requests"] == ["CONNECT web.whatsapp.com:443 HTTP/1.1"]
    assert result["tls_hello_bytes"] > 0  # closed while the handshake was hanging
    assert result["close_seconds"] < 0.1
    # Go gives the TLS handshake 10 s from the dial and its stop cannot cut it short.
    assert result["wait_closed"] is True
    assert result["stop_done_seconds"] < 15.0
    assert result["events"] == []  # closed before the failure: it is never reported
    assert result["non_daemon_threads"] == []
    assert result["proxy_threads"] == []


# --------------------------------------------------------------------------- storage


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run_scenario("storage", tmp_path_factory.mktemp("storage"))


def test_the_session_database_is_private_and_in_wal_mode(storage: dict[str, Any]) -> None:
    modes = storage["modes"]
    assert (modes["sessions"], modes["session"]) == (PRIVATE_DIR, PRIVATE_DIR)
    assert {modes[name] for name in ("neonize.db", "neonize.db-wal", "neonize.db-shm")} \
        <= {PRIVATE_FILE, None}
    assert modes["neonize.db"] == PRIVATE_FILE
    assert storage["journal_mode"] == "wal"


def test_has_credentials_reads_the_whatsmeow_device_table(storage: dict[str, Any]) -> None:
    assert storage["before"] is False  # no file yet
    assert storage["empty"] is False  # schema created by the failed connect, no device
    assert storage["linked"] is True  # after a fabricated whatsmeow_device row
    columns = {name for name, _, _ in storage["device_columns"]}
    assert {"jid", "noise_key", "identity_key", "adv_device_sig"} <= columns


def test_logout_deletes_the_session_database(storage: dict[str, Any]) -> None:
    assert storage["after_logout"] is False
    assert storage["files_left"] == []
    assert storage["wait_closed"] is True
    assert storage["non_daemon_threads"] == []


def test_the_real_go_error_of_a_stopped_client_maps_to_not_connected(
        storage: dict[str, Any]) -> None:
    assert storage["go_send"] == {"reason": "NOT_CONNECTED", "permanent": False,
                                  "message": "client is nil"}


# --------------------------------------------------------------------------- events


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run_scenario("events", tmp_path_factory.mktemp("events"))


def test_qr_codes_pass_the_payload_through_with_their_lifetimes(events: dict[str, Any]) -> None:
    first, second = events["qr"]
    assert first["type"] == second["type"] == "QrCode"
    assert first["code"] == events["qr_payload"]
    assert second["code"] == events["qr_payload"] + "2"
    start, end = events["qr_window"]
    assert start + 60.0 <= first["expires_at"] <= end + 60.0
    assert start + 20.0 <= second["expires_at"] <= end + 20.0


def test_pairing_code_only_while_pairing(events: dict[str, Any]) -> None:
    assert events["pair_before_qr"]["reason"] == "NOT_PAIRING"
    assert events["pair_code"] == "ABCD-EFGH"
    # The phone is told "Firefox (Linux)" as without device properties: with ours set,
    # neonize would take their Safari (5) for ClientType 5, OPERA.
    assert events["pair_params"] == {"phone": "4917012345678", "push": True,
                                     "client_type": 3, "display_name": "Firefox (Linux)"}
    assert events["pair_error"] == {"reason": "PAIRING_FAILED", "permanent": True,
                                    "message": "websocket not connected"}


def test_login_status_success_and_connected(events: dict[str, Any]) -> None:
    assert events["login_success"] == [{"type": "PairingClosed", "reason": "success"}]
    assert events["connected"] == [{"type": "Connected", "phone": "4917012345678"}]


def test_send_text_sends_a_plain_conversation_to_the_number(events: dict[str, Any]) -> None:
    assert events["send"] == {
        "id": "3EB0C0FFEE", "timestamp": 1_700_000_000.0,
        "to_user": "4917011111111", "to_server": "s.whatsapp.net",
        "conversation": "hello @4917022222222 https://example.com", "has_extended": False,
    }


@pytest.mark.parametrize(("text", "reason", "permanent"), [
    ("failed to get user info for 4917011111111@s.whatsapp.net to fill LID cache: "
     "failed to send usync query: websocket not connected", "NOT_CONNECTED", False),
    ("client is nil", "NOT_CONNECTED", False),
    ("timed out waiting for message send response", "AMBIGUOUS", True),
    ("server returned error 463", "REACHOUT_TIMELOCK", True),
    ("failed to get user info for 4917011111111:463@s.whatsapp.net to fill LID cache: "
     "failed to send usync query: info query timed out", "LOOKUP_TIMEOUT", False),
    ("server returned error 479", "SERVER_ERROR_ACK", True),
    # the socket died while waiting for the server's ack: maybe delivered
    ("websocket disconnected before info query returned response", "AMBIGUOUS", True),
    # ... but during the recipient lookup that precedes a send: certainly not sent
    ("failed to get user info for 4917011111111@s.whatsapp.net to fill LID cache: "
     "failed to send usync query: websocket disconnected before info query returned "
     "response", "NOT_CONNECTED", False),
    # every client stop ends a send in flight this way (whatsmeow retryFrame after
    # Disconnect): the node left, the ack never came -> maybe delivered
    ("websocket disconnected before message send returned response", "AMBIGUOUS", True),
    ("websocket disconnected before message send (retry) returned response", "AMBIGUOUS",
     True),
    # lookups before the node is written: nothing left, so retryable
    ("failed to get user info for 4917011111111@s.whatsapp.net to fill LID cache: "
     "failed to send usync query: info query timed out", "LOOKUP_TIMEOUT", False),
    ("failed to get user info for 4917011111111@s.whatsapp.net to fill LID cache: "
     "failed to send usync query: info query returned status 429: rate-overlimit",
     "RATE_OVERLIMIT", False),
    ("failed to get user info for 4917011111111@s.whatsapp.net to fill LID cache: "
     "failed to send usync query: info query returned status 500: internal-server-error",
     "SERVER_ERROR", False),
    ("failed to get device list: failed to send usync query: info query returned status "
     "503: service-unavailable", "SERVER_ERROR", False),
    ("failed to get device list: failed to send usync query: websocket disconnected before "
     "info query returned response", "NOT_CONNECTED", False),
    # the number has no WhatsApp account
    ("no LID found for 4917011111111@s.whatsapp.net from server", "NOT_ON_WHATSAPP", True),
    ("failed to send message node: websocket not connected", "NOT_CONNECTED", False),
    ("failed to prefetch sessions: database is locked", "LOOKUP_FAILED", False),
])
def test_send_errors_map_to_reasons(events: dict[str, Any], text: str, reason: str,
                                    permanent: bool) -> None:
    got = events["send_errors"][text]
    assert (got["reason"], got["permanent"]) == (reason, permanent)
    assert got["message"].startswith(text)
    # Only a send that may have reached WhatsApp is uncertain (flagged by the outbox).
    from actors.transport.neonize import send_error_from  # pure: loads no engine

    assert send_error_from(text).uncertain is (reason == "AMBIGUOUS")


def test_an_error_ack_says_what_whatsmeow_knows_of_its_code(events: dict[str, Any]) -> None:
    """The server answered the send with an error ack: refused for good, with the code
    and, for 479 (whatsmeow client.go), its meaning."""
    message = events["send_errors"]["server returned error 479"]["message"]
    assert "WhatsApp error 479" in message and "stanza invalid" in message


def test_typing_is_whatsmeows_composing_chat_presence_and_never_fails_a_send(
        events: dict[str, Any]) -> None:
    typing = events["typing"]
    call = {"to": "4917011111111@s.whatsapp.net", "state": typing["composing"],
            "media": typing["text"]}
    assert typing["calls"] == [call, call]  # the second one failed in Go, quietly


def test_sends_are_refused_locally_while_down(events: dict[str, Any]) -> None:
    assert events["send_while_down"]["reason"] == "NOT_CONNECTED"
    assert events["send_bad_number"]["reason"] == "REJECTED"
    from tests.neonize.scenarios import ENGINE_SEND_ERRORS

    # one success + every mapped error + five media sends (the failed upload sends nothing)
    assert events["sends_reaching_go"] == 8 + len(ENGINE_SEND_ERRORS) + 5


def test_media_is_uploaded_with_the_engine_and_sent_without_ffmpeg(
        events: dict[str, Any]) -> None:
    """Each kind in its own message field, naming the upload; a voice note is PTT Opus;
    the caption only where WhatsApp shows one; an upload error is UPLOAD_FAILED, which
    the outbox retries (nothing reached the recipient)."""
    media_video, media_audio, media_document = 1, 2, 3  # neonize's MediaType (not imported
    # here: this process must never load the engine)
    sends = events["media_sends"]
    fields = {kind: sends[kind]["field"] for kind in
              ("IMAGE", "DOCUMENT", "VOICE", "VIDEO", "STICKER")}
    assert fields == {"IMAGE": "imageMessage", "DOCUMENT": "documentMessage",
                      "VOICE": "audioMessage", "VIDEO": "videoMessage",
                      "STICKER": "stickerMessage"}
    assert all(sends[k]["url"] == "https://mmg.whatsapp.net/d/f/x.enc" for k in fields)
    assert sends["VOICE"]["ptt"] is True
    assert sends["VOICE"]["mimetype"] == "audio/ogg; codecs=opus"
    assert sends["VOICE"]["upload"][1] == media_audio
    assert sends["VIDEO"]["upload"][1] == media_video
    assert sends["DOCUMENT"]["upload"][1] == media_document
    assert sends["DOCUMENT"]["file_name"] == "a.pdf"
    assert sends["IMAGE"]["caption"] == sends["VIDEO"]["caption"] == "cap"
    assert sends["upload_failed"]["reason"] == "UPLOAD_FAILED"
    assert sends["upload_failed"]["permanent"] is False


def test_receipts_delivered_and_read_one_per_message_id(events: dict[str, Any]) -> None:
    """Each carries the receipt's own time (unix seconds in neonize's encoding); an
    ``inactive`` receipt (a companion device not active lately) is a delivery."""
    sender, at = "4917099999999", 1_700_000_000.0
    assert events["receipts"] == [
        {"type": "Receipt", "message_id": "3EB0AAA", "kind": "delivered", "phone": sender,
         "at": at},
        {"type": "Receipt", "message_id": "3EB0BBB", "kind": "delivered", "phone": sender,
         "at": at},
        {"type": "Receipt", "message_id": "3EB0AAA", "kind": "read", "phone": sender,
         "at": at},
        # played (a voice message listened to) is read for the sender; read-self is not
        {"type": "Receipt", "message_id": "3EB0AAA", "kind": "read", "phone": sender,
         "at": at},
        {"type": "Receipt", "message_id": "3EB0FFF", "kind": "delivered", "phone": sender,
         "at": 1_700_000_123.0},
        {"type": "Receipt", "message_id": "3EB0FFF", "kind": "delivered", "phone": sender,
         "at": 0.0},
    ]


def test_receipts_from_a_lid_carry_the_phone_number_behind_it(events: dict[str, Any]) -> None:
    """WhatsApp names more and more people by LID: the number sent along with the LID
    wins, else the engine's own LID store is asked (real ctypes path, Go stood in
    for); a LID it does not know leaves the number empty rather than a LID's digits."""
    assert events["lid_receipts"] == [
        {"type": "Receipt", "message_id": "3EB0CCC", "kind": "delivered",
         "phone": "4917077777777", "at": 1_700_000_000.0},
        {"type": "Receipt", "message_id": "3EB0DDD", "kind": "delivered",
         "phone": "4917088888888", "at": 1_700_000_000.0},
        {"type": "Receipt", "message_id": "3EB0EEE", "kind": "read", "phone": "",
         "at": 1_700_000_000.0},
    ]
    assert events["lid_lookups"] == ["123456789012345@lid", "999000111@lid"]


def test_messages_written_to_the_account_become_incoming_messages(
        events: dict[str, Any]) -> None:
    """Real Message events through neonize's ctypes dispatch: text, a quoting reply, a
    sender named by LID (mapped through the engine's LID store), an image in a group
    (kind and metadata, the caption as text), a reaction; the account's own message and
    a protocol message are not reported. A read receipt goes to Go's MarkRead."""
    from tests.neonize.scenarios import DOWNLOADED

    ann = "4917099999999@s.whatsapp.net"
    base = {"type": "IncomingMessage", "chat": ann, "sender_jid": ann,
            "sender_phone": "4917099999999", "sender_lid": "", "push_name": "Ann",
            "is_group": False, "kind": "text", "quoted_id": "", "at": 1_700_000_000.0,
            "meta": [], "media_data": None, "file_name": ""}
    group = "120363000000000001@g.us"
    lid = "123456789012345@lid"
    assert events["incoming"]["received"] == [
        {**base, "message_id": "3EB0M1", "text": "STOP"},
        {**base, "message_id": "3EB0M2", "text": "thanks!", "quoted_id": "3EB0AAA"},
        {**base, "message_id": "3EB0M3", "text": "by lid", "chat": lid, "sender_jid": lid,
         "sender_phone": "4917077777777", "sender_lid": lid},
        {**base, "message_id": "3EB0M4", "text": "look", "chat": group, "is_group": True,
         "kind": "image", "meta": [["mimetype", "image/jpeg"], ["fileLength", "2048"]],
         "media_data": DOWNLOADED.hex()},
        # a failed download: the message arrives without its file
        {**base, "message_id": "3EB0M8", "text": "", "kind": "document",
         "meta": [["mimetype", "application/pdf"], ["fileLength", "10"],
                  ["fileName", "a.pdf"]]},
        # larger than any media may be: not downloaded at all
        {**base, "message_id": "3EB0M9", "text": "", "kind": "video",
         "meta": [["mimetype", "video/mp4"], ["fileLength", str(3 * 1024**3)]]},
        {**base, "message_id": "3EB0M7", "text": "👍", "kind": "reaction",
         "quoted_id": "3EB0BBB"},
    ]
    assert events["incoming"]["downloads"] == 2  # the image, the failed document
    assert events["incoming"]["read_marks"] == [
        {"ids": ["3EB0M1", "3EB0M2"], "chat": ann, "sender": ann, "receipt": "read"}]


def test_drops_and_connect_failures(events: dict[str, Any]) -> None:
    assert events["disconnected"] == [{"type": "Disconnected", "reason": "connection lost",
                                       "recovering": True}]
    assert events["connect_failure"] == [{
        "type": "Disconnected", "recovering": False,
        "reason": "connect failure SERVICE_UNAVAILABLE: 503 service unavailable"}]


def test_a_keepalive_timeout_is_a_lost_connection_until_pings_are_answered_again(
        events: dict[str, Any]) -> None:
    """whatsmeow's keepalive loop reports every failed ping and, after 3 minutes, drops
    the socket with its own Disconnect (an expected disconnect: no Disconnected event)
    and reconnects silently. Unwatched, the session showed CONNECTED for the whole
    outage and sent into the dead socket."""
    keepalive = events["keepalive"]
    lost = {"type": "Disconnected", "recovering": True,
            "reason": "keepalive timed out: WhatsApp did not answer 1 ping(s), last answer "
                      "at 22:13:20 UTC; the engine is recovering the connection"}
    back = {"type": "Connected", "phone": "4917012345678"}
    assert keepalive["lost_then_restored"] == [lost, back]  # one each, not one per ping
    assert keepalive["send_while_lost"] == {"reason": "NOT_CONNECTED", "permanent": False,
                                            "message": "the session is not connected"}
    assert keepalive["sends_reaching_go"] == 0
    assert keepalive["send_after_restored"] == "3EB0C0FFEE"
    dropped = {"type": "Disconnected", "reason": "connection lost", "recovering": True}
    assert keepalive["lost_then_reconnected"] == [lost, dropped, back]
    assert keepalive["timeout_while_down"] == [dropped, back]


@pytest.mark.parametrize(("name", "expected"), [
    ("logged_out", {"type": "LoggedOut", "reason": "MAIN_DEVICE_GONE"}),
    ("stream_replaced", {"type": "StreamReplaced"}),
    ("client_outdated", {"type": "ClientOutdated"}),
    ("login_timeout", {"type": "PairingClosed", "reason": "timeout"}),
    ("login_err-client-outdated", {"type": "ClientOutdated"}),
    ("login_err-scanned-without-multidevice",
     {"type": "PairingClosed", "reason": "err-scanned-without-multidevice"}),
])
def test_final_events_are_reported_once_then_the_client_stops(
        events: dict[str, Any], name: str, expected: dict[str, Any]) -> None:
    assert events[name]["events"] == [expected]  # the Connected fed after it was dropped
    assert events[name]["stop_requested"] is True


def test_temporary_ban_reports_until_when(events: dict[str, Any]) -> None:
    ban = events["temporary_ban"]
    (event,) = ban["events"]
    assert event["type"] == "TemporaryBan"
    assert event["reason"] == "SENT_TOO_MANY_SAME_MESSAGE"
    assert ban["at"] + 3600 <= event["until"] <= ban["at"] + 3601
    assert ban["stop_requested"] is True


def test_a_ban_end_no_clock_can_show_is_an_unknown_end(events: dict[str, Any]) -> None:
    """An ``Expire`` of 2**62 s made ``until`` a time that whatsAppStatus could not
    render (``bannedUntil``: datetime overflow): the ban stands, its end is unknown."""
    (event,) = events["temporary_ban_absurd"]["events"]
    assert event["type"] == "TemporaryBan" and event["until"] is None
    assert event["reason"] == "SENT_TOO_MANY_SAME_MESSAGE"


def test_logout_unlinks_through_go_and_reports_nothing(events: dict[str, Any]) -> None:
    assert events["logout"] == {"go_logouts": 1, "events": [], "files": []}


def test_nothing_is_reported_after_close(events: dict[str, Any]) -> None:
    assert events["after_close"] == []
    assert "closed" in events["connect_after_close"]
    assert events["wait_closed"] is True
    assert events["go_stops"] == 0  # never entered Go, so nothing to stop there
    assert events["non_daemon_threads"] == []


# --------------------------------------------------------------------------- threads


@pytest.fixture(scope="module")
def fake_session(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run_scenario("fake_session", tmp_path_factory.mktemp("fake_session"))


def test_handlers_are_subscribed_before_go_starts(fake_session: dict[str, Any]) -> None:
    assert fake_session["subscribed"] == sorted(fake_session["codes"].values())
    assert fake_session["log_level"] == "WARN"  # not every Go DEBUG line through the FFI
    assert fake_session["proxy_given"] is True


def test_go_gets_our_device_properties_not_neonizes(fake_session: dict[str, Any]) -> None:
    """The phone's Linked devices list shows transport.device_name ("wagate" by default),
    not "Neonize"; the platform (Safari, 5) stays what neonize used."""
    assert fake_session["device_props"] == {"os": "wagate", "platform": 5}


def test_callbacks_arrive_on_neonizes_worker_thread(fake_session: dict[str, Any]) -> None:
    assert fake_session["qr_arrived"] is True
    assert fake_session["event_threads"] == [fake_session["uuid"]]
    assert fake_session["go_thread"] == fake_session["uuid"]
    # neonize makes it non-daemon; a Go call that never returns must not pin the process
    assert fake_session["go_thread_is_daemon"] is True
    assert fake_session["connect_again_is_noop"] is True


def test_close_stops_a_running_go_call(fake_session: dict[str, Any]) -> None:
    assert fake_session["close_seconds"] < 0.1
    assert fake_session["wait_closed"] is True
    assert fake_session["go_stops"] == 1  # once: the stop thread's, not the end's again
    assert fake_session["events_after_close"] == []
    assert fake_session["non_daemon_threads"] == []


def test_a_go_call_stuck_after_a_qr_timeout_holds_up_nothing(tmp_path: Path) -> None:
    """goneonize's FetchMe spins forever after a QR timeout (Stop cannot end it): the
    timeout is reported once, the client is stopped, close() returns at once, only a
    daemon thread stays behind, and the next client starts as usual. The session then
    ends QR_EXPIRED, a final state, and its process exits with the stuck thread."""
    result = run_scenario("fetchme_spin", tmp_path)
    assert result["got"] is True
    assert [e["type"] for e in result["events"]] == ["QrCode", "PairingClosed"]
    assert result["events"][1]["reason"] == "timeout"
    assert result["close_seconds"] < 0.1
    assert result["stuck_after_close"] is True  # what the engine does: never returns
    assert result["go_stops"] == 1
    assert result["second_qr"] is True and result["second_closed"] is True
    assert result["non_daemon_threads"] == []


def test_an_unasked_end_of_the_go_call_is_a_disconnect(fake_session: dict[str, Any]) -> None:
    assert fake_session["returns"] == [{"type": "Disconnected", "recovering": False,
                                        "reason": "client stopped unexpectedly"}]
    assert fake_session["fails"] == [{"type": "Disconnected", "recovering": False,
                                      "reason": "boom from go"}]
    assert fake_session["returns_wait_closed"] and fake_session["fails_wait_closed"]


def test_a_send_past_its_deadline_stops_the_client_and_is_ambiguous(tmp_path: Path) -> None:
    """whatsmeow holds its per-client send lock while it waits, with no limit, for a
    reconnect to retry a send; neonize gives it no context to end that. A send still
    running at ``transport.send_deadline_seconds`` stops the client (the session then
    reconnects) and its message is AMBIGUOUS: it may have left. If the engine does
    not even let go then, the send still ends (its thread is left behind)."""
    result = run_scenario("send_deadline", tmp_path)
    deadline = result["deadline"]
    stopped = {"type": "Disconnected", "recovering": False,
               "reason": f"a send got no answer within {deadline:g} s "
                         "(transport.send_deadline_seconds); the client was stopped to free it"}
    released, hung = result["released"], result["hung"]
    assert released["error"] == {
        "reason": "AMBIGUOUS", "permanent": True, "uncertain": True,
        "message": f"no answer within {deadline:g} s, so the client was stopped: websocket "
                   "disconnected before message send returned response"}
    assert hung["error"] == {
        "reason": "AMBIGUOUS", "permanent": True, "uncertain": True,
        "message": f"no answer within {deadline:g} s, so the client was stopped, and the "
                   "engine did not return the send; it may have been delivered"}
    for case in (released, hung):
        assert case["events"] == [{"type": "Connected", "phone": "4917012345678"}, stopped]
        assert case["go_stops"] >= 1 and case["stop_requested"] is True
        assert case["returned_after_stop"] is True  # Go's Stop is what woke the send
        assert case["took"] >= deadline
        assert case["wait_closed"] is True
    assert result["non_daemon_threads"] == []


def test_many_clients_connecting_and_closing_at_once_do_not_abort_go(tmp_path: Path) -> None:
    """300 connects and closes from 30 threads in one process (the Go lock at work)."""
    result = run_scenario("concurrent", tmp_path)
    assert result == {"transports": 300, "wait_closed": True, "non_daemon_threads": []}


def test_every_engine_client_leaves_file_descriptors_open_for_good(tmp_path: Path) -> None:
    """The engine behaviour the session's client budget exists for: each Go client
    keeps its database open after it stopped (SQLite here: the file and its WAL; a
    Postgres pool holds connections instead). Only the process's end frees them, so a
    session process is retired after transport.max_clients_per_process clients."""
    result = run_scenario("client_fds", tmp_path)
    fds = result["fds"]
    assert all(later > earlier for earlier, later in itertools.pairwise(fds)), fds
    assert result["clients_created"] == [1, 2, 3, 4, 5]


def test_the_engines_own_prints_are_captured_not_written_to_stdout(tmp_path: Path) -> None:
    """goneonize prints failed sends (whatsmeow's error names the recipient) with
    fmt.Println to descriptor 1, the actor log: the real library's line must arrive
    in wagate's capture (redacted, tests/unit/test_engine_output.py) and nowhere else."""
    stdout: list[str] = []
    result = run_scenario("engine_output", tmp_path, stdout=stdout)
    assert result["got"] is True and result["error"] == "client is nil"
    assert result["lines"] == ["SendMessage: Error sending message: client is nil"]
    assert result["same_capture"] is True  # one capture per process
    assert "SendMessage" not in stdout[0]
    assert "python's own print" in stdout[0]
    # whatsmeow's log lines (through the log callback Go calls) are redacted too.
    assert result["log_arrived"] is True
    assert result["log_records"] == [
        "whatsmeow.Client WARNING Failed to encrypt 3EB0C0FFEE for <redacted>@s.whatsapp.net: "
        "no signal session"]


def test_loading_neonize_leaves_the_root_logger_alone(tmp_path: Path) -> None:
    result = run_scenario("logging", tmp_path)
    assert result == {"root_unchanged": True, "go_log_level": 30, "neonize_loaded": True}


def test_engine_number_answers_are_matched_by_number_and_a_missing_one_is_unknown(
        tmp_path: Path) -> None:
    result = run_scenario("number_answers", tmp_path)
    assert result["infos"] == [["4915112345678", True, "4915112345678@s.whatsapp.net", True],
                               ["4915112340000", False, "", None]]
    assert result["missing"] == "LOOKUP_FAILED"


def test_loading_the_engine_leaves_link_previews_and_url_fetching_for_first_use(
        tmp_path: Path) -> None:
    """Issue 17: neonize imports link previews and two HTTP clients the gateway never
    calls (about 8 MiB per session); they load when first used, not with the engine."""
    result = run_scenario("unused_imports", tmp_path)
    assert result == {"loaded_with_engine": [], "engine_loaded": True,
                      "loaded_on_use": True, "same_function": True}


def test_preloaded_messages_leave_the_engine_out_and_a_fork_loads_it(tmp_path: Path) -> None:
    """Issue 17: the launcher preloads the engine's generated message modules so that
    the sessions share them. That must never load the engine (a fork would hang), and
    a process forked afterwards loads the engine over the same module objects."""
    result = run_scenario("preload_then_fork", tmp_path)
    before = result["before_fork"]
    assert before["preloaded"] > 10, before  # the message modules and protobuf's runtime
    assert before == {**before, "engine_mapped": False, "binder": False, "package": False,
                      "libraries": True}
    assert result["child"] == {"engine_mapped": True, "same_module": True}, result
    assert result["child_exit"] == 0


def test_this_process_never_loaded_neonize() -> None:
    """The scenarios ran elsewhere: pytest itself must stay fork-safe (a process that
    loaded neonize's Go runtime hangs in its forked children)."""
    loaded = sorted(name for name in sys.modules if name.split(".")[0] == "neonize")
    assert loaded == [], "something imported neonize into the pytest process"



# --------------------------------------------------------------------------- engine set-up


@pytest.mark.parametrize("mark_as_bot", [False, True])
def test_the_engine_runs_with_the_operators_bot_tag_choice(tmp_path: Path,
                                                           mark_as_bot: bool) -> None:
    """The engine appends WhatsApp's "AI" badge (``<bot biz_bot="1"/>``) unless
    NEONIZE_BOT_TAG is off in the environment block its process was exec'd with; a
    variable set from Python is invisible to Go. The child starts with the opposite
    value (an operator's stray environment), goes through the launcher's re-exec, then
    loads the real library the way a session does.

    What Go sees: ``GODEBUG=inittrace=1`` rides in the same block, and the Go runtime
    of the real library reads it from there at load (its init trace on standard error,
    ending with the engine's own package ``main``); ``/proc/PID/environ`` is that block.
    """
    wanted = engine_environment(mark_as_bot)[BOT_TAG]
    stray = engine_environment(not mark_as_bot)[BOT_TAG]
    env = {**os.environ, BOT_TAG: stray, "GODEBUG": "inittrace=1"}
    stderr: list[str] = []
    result = run_scenario("bot_tag_on" if mark_as_bot else "bot_tag_off", tmp_path, env,
                          stderr)
    assert result["engine_loaded"] is True
    assert result["exec_value"] == wanted
    assert result["engine_adds_bot_node"] is mark_as_bot
    assert "init main @" in stderr[0], stderr[0][-2000:]  # Go read the exec'd block


def test_a_process_started_without_the_variable_refuses_the_engine(tmp_path: Path) -> None:
    """Setting NEONIZE_BOT_TAG from Python after the start cannot reach Go: a process
    whose start environment lacks it must not load the engine (it would badge every
    message), and says how to start it instead."""
    env = {k: v for k, v in os.environ.items() if k != BOT_TAG}
    result = run_scenario("bot_tag_unset", tmp_path, env)
    assert result["engine_loaded"] is False
    refused = result["refused"]
    assert refused is not None and "no NEONIZE_BOT_TAG" in refused
    assert "transport.mark_as_bot = false" in refused and "wagate serve" in refused


def _fake_engine_library(path: Path, version: str) -> None:
    """A shared library exporting only ``GetVersion``, like the engine's of ``version``."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build a stand-in engine library")
    source = path.with_suffix(".c")
    source.write_text(f'const char *GetVersion(void) {{ return "{version}"; }}\n')
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(path), str(source)], check=True,
                   capture_output=True, timeout=60)
    source.unlink()


@pytest.mark.parametrize("library", ["missing", "another_version"])
def test_a_missing_or_mismatched_engine_library_is_refused_without_a_download(
        tmp_path: Path, library: str) -> None:
    """neonize downloads its library from the internet when the bundled one is missing
    or of another version. A copy of the installed package with no library (or a
    stand-in of version 0.4.9) is put first on the path, inside ``unshare -n`` where
    the host allows it: the engine is refused, naming the file and the version, and no
    network call is even attempted (an audit hook in the child watches)."""
    spec = importlib.util.find_spec("neonize")
    assert spec is not None and spec.submodule_search_locations
    installed = Path(next(iter(spec.submodule_search_locations)))
    expected = importlib.metadata.version("neonize")
    root = tmp_path / "site"
    package = root / "neonize"
    shutil.copytree(installed, package,
                    ignore=shutil.ignore_patterns(library_file_name(), "__pycache__"))
    path = package / library_file_name()
    if library == "another_version":
        _fake_engine_library(path, "0.4.9")
    before = path.read_bytes() if path.exists() else None
    env = {**os.environ, **engine_environment(mark_as_bot=False),
           "PYTHONPATH": f"{root}{os.pathsep}{REPO}"}
    result = run_scenario("engine_library", tmp_path / "run", env)
    refused = result["refused"]
    assert refused is not None and not refused.startswith("not refused"), refused
    assert str(path) in refused
    assert f"version {expected}" in refused and "never downloads" in refused
    if library == "another_version":
        assert "version 0.4.9" in refused
    assert result["network_attempts"] == []
    assert result["neonize_imported"] is False
    assert (path.read_bytes() if path.exists() else None) == before  # nothing replaced it


def test_number_lookups_are_one_usync_query_through_the_real_bindings(
        events: dict[str, Any]) -> None:
    lookup = events["lookup"]
    assert lookup["asked"] == [["+4917011111111", "+4917022222222", "+4917033333333"]]
    assert lookup["answers"] == [
        ["4917011111111", True, "4917011111111@s.whatsapp.net", None],
        ["4917022222222", False, "", None],
        ["4917033333333", True, "4917033333333@s.whatsapp.net", True]]


@pytest.mark.parametrize(("text", "reason"), [
    ("failed to send usync query: websocket not connected", "NOT_CONNECTED"),
    ("info query timed out", "TIMEOUT"),
    ("Function returned nothing.", "LOOKUP_FAILED"),
    ("failed to send usync query: info query returned status 429: rate-overlimit",
     "RATE_LIMITED"),
])
def test_failed_lookups_map_to_unknown_with_a_reason(events: dict[str, Any], text: str,
                                                     reason: str) -> None:
    assert events["lookup_errors"][text] == {"reason": reason, "permanent": False,
                                             "message": text}


# --------------------------------------------------------------------------- engine states
# issue 20: what the real engine does at the edges of its event encoding and pairing


@pytest.fixture(scope="module")
def pump_deaths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run_scenario("pump_deaths", tmp_path_factory.mktemp("pump_deaths"))


def test_a_ban_the_engine_cannot_encode_is_reported_as_a_ban(
        pump_deaths: dict[str, Any]) -> None:
    """goneonize's pump returns on the first marshal error (a ban code outside 101-104
    and 106 leaves the required ``TemporaryBan.Code`` unset): the Go call ends with that
    error. It is the ban (BANNED, no retries), not a lost connection."""
    (event,) = pump_deaths["ban"]
    assert event["type"] == "TemporaryBan" and event["until"] is None
    assert "ban code the engine cannot report" in event["reason"]
    assert pump_deaths["ban_wait_closed"] is True


def test_the_end_of_an_unencodable_ban_comes_from_the_engines_log_line(
        tmp_path: Path) -> None:
    """whatsmeow logs the server's failure node (with ``expire``) before it emits the
    ban; fed through goneonize's real log callback path (neonize's log thread), it gives
    ``bannedUntil`` even though the ban event itself is lost."""
    result = run_scenario("logged_ban", tmp_path)
    (event,) = result["events"]
    assert event["type"] == "TemporaryBan"
    assert result["started"] + 86400 <= event["until"] <= result["ended"] + 86400
    assert event["reason"] == "ban code 105, which the engine cannot name"
    assert result["wait_closed"] is True and result["non_daemon_threads"] == []


@pytest.mark.parametrize(("scenario", "ban_seconds"), [
    # logging.level = "ERROR": the Go call was given ERROR, so whatsmeow never passed
    # its ban line (a warning) on, and the root logger's level dropped it too
    ("logged_ban_error_level", 86400),
    # 14 days: 1209600 has seven digits, and the engine-log redaction took it for a
    # phone number before the ban line was read
    ("logged_long_ban", 14 * 86400),
])
def test_the_logged_end_of_a_ban_survives_a_quiet_log_and_a_long_ban(
        tmp_path: Path, scenario: str, ban_seconds: int) -> None:
    """The ban's end comes from the engine's log line whatever the gateway's log level,
    and however long the ban lasts."""
    result = run_scenario(scenario, tmp_path)
    (event,) = result["events"]
    assert event["type"] == "TemporaryBan"
    assert event["until"] is not None
    assert result["started"] + ban_seconds <= event["until"] <= result["ended"] + ban_seconds
    assert result["wait_closed"] is True and result["non_daemon_threads"] == []
    # a gateway logging at ERROR does not log the engine's warnings for it
    assert result["logged"] == ([] if scenario == "logged_ban_error_level" else
                                ['Temporary ban connect failure: <failure code="105" '
                                 'expire="<number>" reason="402"/>'])


def test_other_events_the_engine_cannot_encode_say_what_they_were(
        pump_deaths: dict[str, Any]) -> None:
    (failure,) = pump_deaths["connect_failure"]
    assert failure["type"] == "Disconnected" and "refused the connection" in failure["reason"]
    (receipt,) = pump_deaths["receipt"]
    assert receipt["type"] == "Disconnected" and "receipt" in receipt["reason"]
    (logout,) = pump_deaths["logged_out"]
    assert logout["type"] == "LoggedOut"
    assert all(pump_deaths[f"{name}_wait_closed"]
               for name in ("connect_failure", "receipt", "logged_out"))
    assert pump_deaths["non_daemon_threads"] == []


@pytest.fixture(scope="module")
def pairing_ends(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run_scenario("pairing_ends", tmp_path_factory.mktemp("pairing_ends"))


@pytest.mark.parametrize(("name", "expected"), [
    # err-unexpected-state: whatsmeow's QR channel saw a LoggedOut/TemporaryBan/...; the
    # event itself follows from the pump once the QR loop ended
    ("ban", {"type": "TemporaryBan", "reason": "SENT_TOO_MANY_SAME_MESSAGE"}),
    ("banned_account", {"type": "LoggedOut", "reason": "UNKNOWN_LOGOUT"}),
    ("connect_failure", {"type": "Disconnected", "recovering": False,
                         "reason": "connect failure GENERIC: bad request"}),
    # "timeout" with a Disconnected behind it: the socket dropped, the code did not expire
    ("drop", {"type": "PairingClosed", "reason": "connection-lost"}),
    # "error": the PairError's text comes as the pair-status event
    ("pair_error", {"type": "PairingClosed",
                    "reason": "error: failed to verify device identity"}),
    # nothing follows: the bare status, after transport.engine_detail_seconds
    ("expired", {"type": "PairingClosed", "reason": "timeout"}),
])
def test_a_pairing_end_keeps_the_real_reason(pairing_ends: dict[str, Any], name: str,
                                             expected: dict[str, Any]) -> None:
    (event,) = pairing_ends[name]["events"]
    if expected["type"] == "TemporaryBan":
        event = {k: v for k, v in event.items() if k != "until"}
    assert event == expected
    assert pairing_ends[name]["stop_requested"] is True


def test_err_unexpected_state_of_an_already_paired_device_connects(
        pairing_ends: dict[str, Any]) -> None:
    already = pairing_ends["already_paired"]
    assert already["events"][0] == {"type": "Connected", "phone": "4917012345678"}
    assert already["stop_requested"] is False  # a live connection, not an end
    assert pairing_ends["success"] == [{"type": "PairingClosed", "reason": "success"},
                                       {"type": "Connected", "phone": "4917012345678"}]
    assert pairing_ends["wait_closed"] is True
    assert pairing_ends["non_daemon_threads"] == []


def test_passkey_linking_is_reported_and_the_stop_waits_for_the_qr_channel(
        tmp_path: Path) -> None:
    """A Go stop while whatsmeow's QR channel is open leaves neonize's Go call waiting
    forever; after a passkey request the channel stays open, so the stop must wait for
    it to close (its codes running out) and then completes."""
    result = run_scenario("passkey", tmp_path)
    assert result["events"][1:] == [{"type": "PairingClosed", "reason": "passkey-request"}]
    assert result["stopped_during_qr"] is False
    assert result["stop_deferred"] is True
    assert result["wait_closed"] is True and result["go_stops"] >= 1
    assert result["events_after"] == []
    assert result["non_daemon_threads"] == []
