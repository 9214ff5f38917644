"""What a send answers, and what its record says, when things do not go straight:
idempotency keys of several callers, a key used for another message, a retried
transient error, a send whose fate nobody knows (WhatsApp's ack never came, or came
too late), a handler that fails after the write, and text that must not be kept.

Real ``wagate serve`` processes over real HTTP, the simulated WhatsApp service.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from tests.integration.harness import Gateway, GraphQLResult, expect_error, wait_for
from tests.integration.test_audit import events
from tests.integration.test_delivery import (
    FAST_DELIVERY,
    GET_MESSAGE,
    MESSAGE_FIELDS,
    NOTIFY_WITH_KEY,
    SEND_MESSAGE,
    get_message,
    send_message,
    texts,
    wait_message_state,
)

PHONE = "+14155552671"
LIST_SESSION = ("query($s: String) { whatsAppMessages(session: $s, first: 10) { "
                f"edges {{ node {{ {MESSAGE_FIELDS} }} }} }} }}")


def post_as(gw: Gateway, token: str, query: str, variables: dict[str, Any]) -> GraphQLResult:
    """One request with another API token than the harness's admin token."""
    response = requests.post(gw.url + "/graphql", json={"query": query, "variables": variables},
                             headers={"Authorization": f"Bearer {token}",
                                      "Connection": "close"}, timeout=30)
    assert response.status_code == 200 and "Traceback" not in response.text, response.text
    return GraphQLResult(response.json())


def message_input(phone: str, text: str, key: str) -> dict[str, Any]:
    return {"input": {"phoneNumber": phone, "message": text, "idempotencyKey": key}}


def uncertain_total(gw: Gateway) -> int:
    return int(gw.health()["queue"]["uncertainTotal"])


# ---- idempotency keys ------------------------------------------------------------------


def test_two_callers_sharing_a_session_and_a_key_each_get_their_own_message(
        make_gateway: Callable[..., Gateway]) -> None:
    """Keys are the caller's (API token's), not the session's: a second application
    that happens to pick the same key sends its own message, and hears its own record."""
    gw = make_gateway(FAST_DELIVERY).start()
    gw.link()
    shop, billing = gw.make_token("sender", name="shop"), gw.make_token("sender", name="billing")
    first = post_as(gw, shop, SEND_MESSAGE, message_input("+14155550101", "shop order", "k-1"))
    second = post_as(gw, billing, SEND_MESSAGE,
                     message_input("+14155550102", "billing invoice", "k-1"))
    assert not first.errors and not second.errors, (first, second)
    mine, theirs = first.data["sendWhatsAppMessage"], second.data["sendWhatsAppMessage"]
    assert mine["id"] != theirs["id"] and not mine["duplicate"] and not theirs["duplicate"]
    assert theirs["phoneNumber"] == "+14155550102" and theirs["state"] == "SENT"
    # Each caller's retry still finds its own message, and sends nothing.
    again = post_as(gw, billing, NOTIFY_WITH_KEY,
                    {"p": "+14155550102", "m": "billing invoice", "k": "k-1"})
    assert again.data == {"sendWhatsAppNotification": True}, again
    retry = post_as(gw, shop, SEND_MESSAGE, message_input("+14155550101", "shop order", "k-1"))
    assert retry.data["sendWhatsAppMessage"]["id"] == mine["id"]
    assert retry.data["sendWhatsAppMessage"]["duplicate"] is True
    assert sorted(texts(gw)) == ["billing invoice", "shop order"]


def test_a_key_used_again_for_another_message_is_refused_and_sends_nothing(
        make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway(FAST_DELIVERY).start()
    gw.link()
    first = send_message(gw, "code 1111", idempotencyKey="login-7")
    other_text = gw.gql(SEND_MESSAGE, {"input": {"phoneNumber": PHONE, "message": "code 2222",
                                                 "idempotencyKey": "login-7"}})
    error = expect_error(other_text, "IDEMPOTENCY_KEY_REUSED", "login-7", "new key")
    assert error["extensions"]["messageId"] == first["id"]
    assert error["extensions"]["field"] == "idempotencyKey"
    other_phone = gw.gql(NOTIFY_WITH_KEY, {"p": "+14155550000", "m": "code 1111",
                                           "k": "login-7"})
    expect_error(other_phone, "IDEMPOTENCY_KEY_REUSED")
    assert texts(gw) == ["code 1111"]
    assert gw.health()["limiter"]["global_day_used"] == 1.0  # refusals use no quota


# ---- what a send answers ------------------------------------------------------------------


def test_a_transient_error_is_not_the_answer_the_retry_is(
        make_gateway: Callable[..., Gateway]) -> None:
    """A send on a live connection answers with WhatsApp's ack: a failed attempt that
    will be retried is no answer yet, and the record of the message SENT afterwards
    says nothing of that attempt's error (its history does)."""
    gw = make_gateway(FAST_DELIVERY).start()
    gw.link()
    gw.sim("fail-next", "1", "--transient")
    sent = send_message(gw, "retried once")
    assert (sent["state"], sent["attempts"]) == ("SENT", 2), sent
    assert sent["reason"] is None and sent["uncertain"] is False
    assert [(h["state"], h["reason"]) for h in sent["history"]] == [
        ("QUEUED", None), ("SENDING", None), ("QUEUED", "SERVER_ERROR"), ("SENDING", None),
        ("SENT", None)]
    record = get_message(gw, sent["id"])
    assert record is not None and record["reason"] is None
    assert texts(gw) == ["retried once"]

    gw.sim("fail-next", "1", "--transient")
    assert gw.send(PHONE, "notified once").data == {"sendWhatsAppNotification": True}
    assert sorted(texts(gw)) == ["notified once", "retried once"]  # true came after the ack


def test_an_ambiguous_send_is_flagged_counted_and_sent_again(
        make_gateway: Callable[..., Gateway]) -> None:
    """WhatsApp took the message but its ack never came: nobody knows whether it
    arrived. It is flagged and counted, and (delivery.on_uncertain = "resend") sent
    again, so it arrives twice, as the flag warns."""
    gw = make_gateway(FAST_DELIVERY).start()
    gw.link()
    gw.sim("fail-next", "1", "--ambiguous")
    sent = send_message(gw, "maybe twice")
    assert (sent["state"], sent["uncertain"], sent["attempts"]) == ("SENT", True, 2), sent
    assert ("QUEUED", "AMBIGUOUS") in [(h["state"], h["reason"]) for h in sent["history"]]
    assert texts(gw) == ["maybe twice", "maybe twice"]
    assert uncertain_total(gw) == 1


def test_an_ambiguous_send_fails_as_uncertain_when_not_sent_again(
        make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway({**FAST_DELIVERY, "delivery": {**FAST_DELIVERY["delivery"],
                                                     "on_uncertain": "fail"}}).start()
    gw.link()
    gw.sim("fail-next", "1", "--ambiguous")
    error = expect_error(gw.send(PHONE, "maybe once"), "SEND_FAILED", "may or may not")
    assert error["extensions"]["reason"] == "AMBIGUOUS"
    assert error["extensions"]["uncertain"] is True
    record = get_message(gw, error["extensions"]["messageId"])
    assert record is not None and (record["state"], record["uncertain"]) == ("FAILED", True)
    assert texts(gw) == ["maybe once"]  # it did arrive: the record must not say "never"
    assert uncertain_total(gw) == 1


def test_a_send_not_confirmed_in_time_says_so_and_is_flagged(
        make_gateway: Callable[..., Gateway]) -> None:
    """WhatsApp is slower than messages.send_timeout_seconds: the caller hears that its
    message is stored and still on its way (not that it failed, which invites a second
    send), the record is flagged and counted, and the message is sent once."""
    gw = make_gateway({**FAST_DELIVERY, "messages": {"send_timeout_seconds": 0.5},
                       "simulator": {"send_delay_seconds": 2.0}}).start()
    gw.link()
    error = expect_error(gw.send(PHONE, "slow but sure"), "SEND_UNCONFIRMED",
                         "will be sent", "do not send it again")
    extensions = error["extensions"]
    assert extensions["reason"] == "ACK_TIMEOUT" and extensions["uncertain"] is True
    assert extensions["state"] in ("QUEUED", "SENDING")
    done = wait_message_state(gw, extensions["messageId"], "SENT", timeout=30)
    assert done["uncertain"] is True and done["reason"] is None
    assert texts(gw) == ["slow but sure"]
    assert uncertain_total(gw) == 1
    # The audit log's entry of the mutation names the message its answer is about.
    audited = wait_for(lambda: [e for e in events(gw, "mutation")
                                if e.get("outcome") == "SEND_UNCONFIRMED"], 10, 0.1,
                       "the audit entry of the unconfirmed send")
    assert audited[0]["messageId"] == extensions["messageId"], audited


def test_each_waiting_caller_hears_of_its_own_timeout_not_of_the_first_ones(
        make_gateway: Callable[..., Gateway]) -> None:
    """One timer serves every caller waiting for WhatsApp's ack (the outbox keeps their
    deadlines in order): callers who came later are still answered only once their own
    send_timeout has passed, not when the first one's did."""
    timeout = 1.0
    gw = make_gateway({**FAST_DELIVERY, "messages": {"send_timeout_seconds": timeout},
                       "simulator": {"send_delay_seconds": 4.0}}).start()
    gw.link()
    answers: dict[int, tuple[float, GraphQLResult]] = {}

    def send(index: int) -> None:
        started = time.monotonic()
        result = gw.send(PHONE, f"slow {index}")
        answers[index] = (time.monotonic() - started, result)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
        time.sleep(0.3)  # staggered sends (not a wait for an outcome)
    for thread in threads:
        thread.join(60)
    assert sorted(answers) == [0, 1, 2]
    for waited, result in answers.values():
        expect_error(result, "SEND_UNCONFIRMED", "will be sent")
        assert waited >= timeout, answers  # never before its own deadline
    assert sorted(texts_when(gw, 3)) == ["slow 0", "slow 1", "slow 2"]


def texts_when(gw: Gateway, count: int) -> list[str]:
    """The simulator's inbox once it holds ``count`` messages."""
    def enough() -> list[str] | None:
        found = texts(gw)
        return found if len(found) >= count else None

    return wait_for(enough, 60, 0.2, f"{count} messages in the inbox")


# ---- a handler that fails after the write ------------------------------------------------------

SECRET = "secret code 918273"
# A client of the actor system (as the web tier is) whose request makes the outbox's
# send handler fail after the message is on disk: it says the session runs at an
# address that is none, so handing the message over raises.
HOSTILE_CLIENT = """
import sys
from actors.messages import GetRoutes, SendText, SessionLink, SessionState
from actors.system import LOOPBACK, SUPERVISOR_NAME, join_system

system = join_system(int(sys.argv[1]), LOOPBACK, ())
supervisor = system.createActor("actors.supervisor.actor.SupervisorActor",
                                globalName=SUPERVISOR_NAME)
outbox = system.ask(supervisor, GetRoutes("routes"), 20).value["outbox"]
system.tell(outbox, SessionLink("poison", "no address", SessionState.CONNECTED, True))
reply = system.ask(outbox, SendText("poison", "14155552671", sys.argv[2], request_id="t1"), 30)
print(type(reply).__name__, getattr(reply, "code", ""))
"""


def test_a_send_whose_handler_fails_is_stored_once_answered_and_never_logged(
        make_gateway: Callable[..., Gateway]) -> None:
    """Thespian runs a handler that raised a second time: a message without a key
    would be stored (and sent) twice, and the message, text included, is written to
    the log. The send is stored once, its caller hears it is unconfirmed (the record
    says so too), and its text is in no log."""
    gw = make_gateway(FAST_DELIVERY).start()
    client = subprocess.run([sys.executable, "-c", HOSTILE_CLIENT, str(gw.admin_port), SECRET],
                            capture_output=True, text=True, timeout=90, cwd=Path.cwd(),
                            stdin=subprocess.DEVNULL)
    assert client.returncode == 0, client.stderr
    assert client.stdout.split() == ["Failed", "SEND_UNCONFIRMED"], client.stdout
    records = gw.gql(LIST_SESSION, {"s": "poison"}).data["whatsAppMessages"]["edges"]
    assert len(records) == 1, records
    assert records[0]["node"]["uncertain"] is True
    assert uncertain_total(gw) == 1
    gw.stop()
    logs = [path for path in (gw.data_dir / "logs").iterdir() if path.is_file()]
    assert logs
    for path in [*logs, gw.root / "serve.log"]:
        assert SECRET not in path.read_text(errors="replace"), path


# A client whose messages make the outbox's periodic tick fail: a queued message of a
# session that says it runs at an address that is none, due only once a pause (a
# NOT_CONNECTED result) is over, so that the tick is the first to hand it over.
FAILING_TICK_CLIENT = """
import sys
from actors.messages import (DeliveryResult, DeliveryResults, GetRoutes, SendText,
                             SessionLink, SessionState)
from actors.system import LOOPBACK, SUPERVISOR_NAME, join_system

system = join_system(int(sys.argv[1]), LOOPBACK, ())
supervisor = system.createActor("actors.supervisor.actor.SupervisorActor",
                                globalName=SUPERVISOR_NAME)
outbox = system.ask(supervisor, GetRoutes("routes"), 20).value["outbox"]
system.tell(outbox, SessionLink("poison", None, SessionState.RECONNECTING, True))
queued = system.ask(outbox, SendText("poison", "14155552671", "queued", request_id="t2"), 30)
system.tell(outbox, DeliveryResults((DeliveryResult(queued.message_id, ok=False,
                                                    reason="NOT_CONNECTED"),)))
system.tell(outbox, SessionLink("poison", "no address", SessionState.CONNECTED, True))
print(type(queued).__name__, queued.state)
"""


def test_a_tick_that_fails_does_not_stop_expiry_and_retries(
        make_gateway: Callable[..., Gateway]) -> None:
    """The outbox's tick (expiry, retries, pruning) re-arms itself. A tick that fails
    is not run again (RunOnce): the next one must still come, or nothing would ever
    expire or be retried again."""
    gw = make_gateway(FAST_DELIVERY).start()
    gw.link()
    client = subprocess.run([sys.executable, "-c", FAILING_TICK_CLIENT, str(gw.admin_port)],
                            capture_output=True, text=True, timeout=90, cwd=Path.cwd(),
                            stdin=subprocess.DEVNULL)
    assert client.returncode == 0, client.stderr
    assert client.stdout.split() == ["Accepted", "QUEUED"], client.stdout
    # The tick hands the poison message over (and fails) once its pause is over.
    wait_for(lambda: gw.gql(LIST_SESSION, {"s": "poison"}).data["whatsAppMessages"]["edges"][0]
             ["node"]["state"] == "SENDING", 20, 0.1, "a tick to hand the poison message over")
    gw.sim("drop", "--down-for", "60")
    gw.wait_state("RECONNECTING")
    short = send_message(gw, "expire me later", validForSeconds=1)
    wait_message_state(gw, short["id"], "EXPIRED")


# ---- delivery.keep_text = false -------------------------------------------------------------


def test_an_expired_message_keeps_no_text_when_keep_text_is_off(
        make_gateway: Callable[..., Gateway]) -> None:
    """Every final state erases the text, EXPIRED (reached by the expiry sweep, not by
    a send) included; a message still waiting keeps it, it is yet to be sent."""
    gw = make_gateway({**FAST_DELIVERY, "delivery": {**FAST_DELIVERY["delivery"],
                                                     "keep_text": False}}).start()
    gw.link()
    gw.sim("drop", "--down-for", "60")
    gw.wait_state("RECONNECTING")
    short = send_message(gw, "expiring secret", validForSeconds=1)
    waiting = send_message(gw, "waiting secret", validForSeconds=3600)
    wait_message_state(gw, short["id"], "EXPIRED")
    with sqlite3.connect(f"file:{gw.data_dir / 'outbox' / 'messages.sqlite3'}?mode=ro",
                         uri=True) as db:
        stored = dict(db.execute("SELECT id, text FROM messages").fetchall())
    db.close()
    assert stored == {short["id"]: None, waiting["id"]: "waiting secret"}
    assert gw.gql(GET_MESSAGE, {"id": short["id"]}).data["whatsAppMessage"]["state"] == "EXPIRED"
