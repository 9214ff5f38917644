"""Issue 22's scenario H2 with leases: a member's API while the member is cut off.

The cluster of ``test_partitions`` (``netns_cluster``: a leader with one slot, a member
with two, each a real ``wagate serve`` in a network namespace of its own, the leases'
PostgreSQL on the bridge). Clients send through the MEMBER's GraphQL API, half with an
idempotency key of their own and half without, while every packet between the two
hosts is dropped without a word (TCP retries into the void: where a call used to block
for a minute), or refused at once by blackhole routes, for longer than the ask timeout.

What must hold, measured from the client:

- every call returns within its deadline (``messages.send_timeout_seconds`` plus
  ``actors.ask_timeout_seconds``) and ``ALLOWANCE`` more for HTTP and scheduling;
- an answer is a success, ``UNCERTAIN`` naming a key (the caller's, or the one the
  gateway made), or a refusal (``UNAVAILABLE``, ...) for a send that was never
  accepted: after the heal, neither the leader's records nor the simulated inbox know
  it;
- a client that sends every ``UNCERTAIN`` message again with the key it was given, after
  the heal, gets each delivered exactly once;
- the member's web threads are free again: a call after the heal answers promptly.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import requests

from tests import netns
from tests.integration.harness import Gateway, wait_for
from tests.integration.netns_cluster import (  # noqa: F401 (fixtures: net, pg)
    LEADER,
    MEMBER,
    member_alive,
    net,
    pg,
    settle,
    start_cluster,
)
from tests.integration.test_chaos import drained, records
from tests.pg import PgCluster

SESSIONS = ("s1", "s2", "s3")
PHONE = "+14155550177"
ASK_TIMEOUT = 2.0
SEND_TIMEOUT = 2.0
DEADLINE = ASK_TIMEOUT + SEND_TIMEOUT  # a send's deadline in the web tier
ALLOWANCE = 1.5  # HTTP, gunicorn and this machine's scheduling, on top of the deadline
CUT_SECONDS = 10.0  # longer than the ask timeout, and than the send's whole deadline
CLIENTS = 6
CLIENT_TIMEOUT = 90.0  # far beyond the deadline: a call that overran it is measured
SEND = ("mutation($i: SendWhatsAppMessageInput!) { sendWhatsAppMessage(input: $i) "
        "{ id idempotencyKey duplicate } }")


@dataclass
class Answer:
    """One call through the member's API and what it answered."""

    text: str
    session: str
    key: str | None  # the client's own key; None: the gateway makes one
    seconds: float
    code: str  # "OK", or the error's code
    named_key: str | None  # the key an answer named (a success's, an UNCERTAIN's)
    duplicate: bool = False  # a success: the key's message had been accepted before


def send(gw: Gateway, http: requests.Session, text: str, session: str,
         key: str | None) -> Answer:
    """One send through ``gw``'s API, timed from here."""
    given: dict[str, Any] = {"phoneNumber": PHONE, "message": text, "session": session}
    if key is not None:
        given["idempotencyKey"] = key
    started = time.monotonic()
    try:
        response = http.post(gw.url + "/graphql", json={"query": SEND, "variables": {"i": given}},
                             timeout=CLIENT_TIMEOUT)
        body = response.json()
    except (requests.RequestException, ValueError) as exc:
        return Answer(text, session, key, time.monotonic() - started,
                      f"NO_ANSWER {exc!r}"[:80], None)
    seconds = time.monotonic() - started
    assert "Traceback" not in response.text, response.text
    errors = body.get("errors") or []
    if not errors:
        sent = body["data"]["sendWhatsAppMessage"]
        return Answer(text, session, key, seconds, "OK", sent["idempotencyKey"],
                      bool(sent["duplicate"]))
    extensions = errors[0].get("extensions", {})
    return Answer(text, session, key, seconds, str(extensions.get("code")),
                  extensions.get("idempotencyKey"))


def resent(gw: Gateway, http: requests.Session, uncertain: Answer) -> Answer | None:
    """``uncertain``'s message sent again with the key it named; the answer once it is
    a success (None: try again)."""
    answer = send(gw, http, uncertain.text, uncertain.session, uncertain.named_key)
    return answer if answer.code == "OK" else None


class Clients:
    """``CLIENTS`` threads sending through the member's API one message after another,
    every other one with a key of its own, until told to stop."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.token = gw.make_token("sender")
        self.answers: list[Answer] = []
        self.errors: list[BaseException] = []
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True,
                                          name=f"h2-client-{n}") for n in range(CLIENTS)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self.stopping.set()
        for thread in self._threads:
            thread.join(CLIENT_TIMEOUT + 10)
        assert not [t.name for t in self._threads if t.is_alive()], "client threads still run"
        if self.errors:
            raise self.errors[0]

    def _run(self, n: int) -> None:
        http = requests.Session()
        http.headers["Authorization"] = f"Bearer {self.token}"
        try:
            i = 0
            while not self.stopping.is_set():
                text = f"h2-{n}-{i}"
                key = f"h2-key-{n}-{i}" if i % 2 == 0 else None
                answer = send(self.gw, http, text, SESSIONS[(n + i) % len(SESSIONS)], key)
                with self._lock:
                    self.answers.append(answer)
                i += 1
                self.stopping.wait(0.2)
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            http.close()


def cut(topology: netns.Topology, how: str) -> None:
    """``silent``: every packet between the two hosts dropped without a word (TCP
    retries into the void); ``blackhole``: routes between them that refuse at once.
    (A member cut from everything is cut from its clients too: ``Topology.isolate``
    takes its port on the bridge down, which the test's own link goes through.)"""
    if how == "silent":
        for host in topology.hosts:
            topology.degrade(host, 100, 0)
    else:
        topology.cut(LEADER, MEMBER)


def heal(topology: netns.Topology, how: str) -> None:
    if how == "silent":
        for host in topology.hosts:
            topology.restore(host)
    else:
        topology.heal(LEADER, MEMBER)


@pytest.mark.parametrize("how", ["silent", "blackhole"])
def test_h2_a_cut_off_members_api_answers_in_time_and_never_says_retry_for_an_accepted_send(
        how: str, net: netns.Topology, pg: PgCluster, make_gateway: Callable[..., Gateway],  # noqa: F811
        tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    leader, member = start_cluster(make_gateway, net, pg, shared,
                                   None, {"actors": {"ask_timeout_seconds": ASK_TIMEOUT}})
    clients = Clients(member)
    clients.start()
    try:
        wait_for(lambda: sum(a.code == "OK" for a in clients.answers) >= 6, 20, 0.1,
                 "sends through the member to flow")
        cut(net, how)
        try:
            wait_for(lambda: not member_alive(leader), 20, 0.2, "the leader to lose the member")
            cut_at = time.monotonic()
            wait_for(lambda: time.monotonic() - cut_at >= CUT_SECONDS, CUT_SECONDS + 5, 0.2,
                     "the cut to last")
        finally:
            heal(net, how)
        wait_for(lambda: member_alive(leader), 30, 0.2, "the member to be back")
    finally:
        clients.stop()
    settle(leader, shared)

    answers = clients.answers
    codes = Counter(a.code for a in answers)
    slowest = max(a.seconds for a in answers)
    late = [(a.text, round(a.seconds, 2), a.code) for a in answers
            if a.seconds > DEADLINE + ALLOWANCE]
    assert not late, f"calls past their deadline ({DEADLINE} + {ALLOWANCE} s): {late}"
    assert set(codes) != {"OK"}, f"the cut was not felt: {codes}"
    uncertain = [a for a in answers if a.code == "UNCERTAIN"]
    for a in uncertain:  # the caller's key, or one the gateway made
        assert a.named_key == (a.key or a.named_key) and a.named_key, a
        assert a.key is not None or a.named_key.startswith("auto-"), a
    refused = [a for a in answers if a.code not in ("OK", "UNCERTAIN")]

    # After the heal, a client sends every UNCERTAIN message again with its key.
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {clients.token}"
    retried: list[Answer] = []
    try:
        for a in uncertain:
            again = wait_for(partial(resent, member, http, a), 30, 0.2,
                             f"{a.text} sent again by its key")
            assert again.named_key == a.named_key, (a, again)
            retried.append(again)
        # The member's web threads are not held by the partition: a call answers promptly.
        after = send(member, http, "h2-after-heal", "s1", None)
    finally:
        http.close()
    assert after.code == "OK" and after.seconds <= DEADLINE + ALLOWANCE, after
    slowest_after = max([after.seconds, *(r.seconds for r in retried)])

    wait_for(lambda: drained(leader), 60, 0.2, "no message QUEUED or SENDING")
    mine = list(records(leader))  # this test's cluster has no other traffic
    inbox = Counter(m["text"] for m in leader.inbox() if m["text"].startswith("h2-"))
    sent = [a.text for a in answers if a.code in ("OK", "UNCERTAIN")] + [after.text]
    # A refusal said "not accepted": it never was (the retrying client would double it).
    accepted_refusals = [(a.text, a.code) for a in refused if a.text in inbox]
    assert not accepted_refusals, f"refused, yet accepted and sent: {accepted_refusals}"
    keyed_refusals = {a.key for a in refused if a.key is not None}
    assert not keyed_refusals & {r["idempotencyKey"] for r in mine}, keyed_refusals
    assert len(mine) == len(sent), (len(mine), len(sent), codes)  # nothing else accepted
    # Every success and every UNCERTAIN sent again by its key: delivered exactly once.
    counts = {text: inbox[text] for text in sent}
    assert set(counts.values()) == {1}, {t: n for t, n in counts.items() if n != 1}
    print(f"\nH2 member's API, {CUT_SECONDS:g} s {how} cut from the leader (deadline "
          f"{DEADLINE:g} s + {ALLOWANCE} s): {len(answers)} calls, answers {dict(codes)}, "
          f"slowest {slowest:.2f} s; after the heal {len(uncertain)} UNCERTAIN sent again by "
          f"key ({sum(r.duplicate for r in retried)} had been accepted), slowest call "
          f"{slowest_after:.2f} s; deliveries per text: all 1")
