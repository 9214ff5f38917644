"""The delivery loop against a real HTTP receiver on loopback, over a real SQLite event
table and the real endpoint store: signatures verify on the receiving side, retries
follow the (shrunk) schedule, order holds per endpoint, 410 and an exhausted schedule
disable, re-enabling resumes from the cursor."""

from __future__ import annotations

import json
import time
from pathlib import Path

from standardwebhooks.webhooks import Webhook

from actors.webhooks import signing
from actors.webhooks.schedule import SCHEDULE_SECONDS
from actors.webhooks.store import EndpointStore
from tests.webhooks.conftest import CONFIG, KEY, EventLog, MakeDeliverer, drive
from tests.webhooks.receiver import CLOSE, HANG, Receiver


def endpoint(store: EndpointStore, url: str, **kwargs: object) -> tuple[str, str]:
    secret = signing.new_secret()
    made = store.create(url, kwargs.get("events", ()), kwargs.get("sessions", ()),  # type: ignore[arg-type]
                        "test", secret, time.time())
    return made.id, secret


def test_events_arrive_signed_in_order_and_the_cursor_follows(
        log: EventLog, store: EndpointStore, deliverer: MakeDeliverer) -> None:
    ids = [log.add(status=s) for s in ("SENT", "DELIVERED", "READ")]
    with Receiver() as receiver:
        hook, secret = endpoint(store, receiver.url())
        loop = deliverer()
        drive(loop, lambda: len(receiver.requests) == 3)
        got = receiver.wait_for(3)
    assert [r.headers["webhook-id"] for r in got] == ids
    for r in got:
        document = Webhook(secret).verify(r.body, r.headers)  # the receiving side's check
        assert document["type"] == "message.status"
    assert [json.loads(r.body)["data"]["status"] for r in got] == ["SENT", "DELIVERED", "READ"]
    assert store.get(hook).cursor == 3 and store.get(hook).last_status == 200
    assert loop.stats.deliveries[(hook, "delivered")] == 3


def test_a_failure_holds_later_events_back_and_the_retry_keeps_the_webhook_id(
        log: EventLog, store: EndpointStore, deliverer: MakeDeliverer) -> None:
    first, second = log.add(n=1), log.add(n=2)
    with Receiver(script=[(500, {}), CLOSE, (503, {})]) as receiver:
        hook, _ = endpoint(store, receiver.url())
        loop = deliverer()
        loop.run_endpoint(hook)  # 500
        state = store.get(hook)
        wait = state.next_attempt_at - (state.last_delivery_at or 0)
        low, high = (SCHEDULE_SECONDS[0] * CONFIG.retry_scale * (1 + f) for f in (-0.1, 0.1))
        assert low - 1e-6 <= wait <= high + 1e-6 and state.failures == 1 and state.cursor == 0
        drive(loop, lambda: store.get(hook).cursor == 2)
        got = [r.headers["webhook-id"] for r in receiver.wait_for(5)]
    assert got == [first, first, first, first, second]  # 500, close, 503, 200, then the next


def test_410_disables_and_reenabling_resumes_from_the_cursor(
        log: EventLog, store: EndpointStore, deliverer: MakeDeliverer) -> None:
    delivered, stuck = log.add(n=1), log.add(n=2)
    with Receiver(script=[(200, {}), (410, {})]) as receiver:
        hook, _ = endpoint(store, receiver.url())
        loop = deliverer()
        disabled: list[str] = []
        loop.on_disabled = lambda ep, reason: disabled.append(reason)
        drive(loop, lambda: not store.get(hook).enabled)
        assert "410" in store.get(hook).disabled_reason and disabled
        assert loop.run_due() == 0 and loop.stats.disabled == 1
        store.set_enabled(hook, True, "", time.time())
        drive(loop, lambda: store.get(hook).cursor == 2)
        got = [r.headers["webhook-id"] for r in receiver.wait_for(3)]
    assert got == [delivered, stuck, stuck]


def test_an_exhausted_schedule_disables_after_every_retry(
        log: EventLog, store: EndpointStore, deliverer: MakeDeliverer) -> None:
    log.add()
    with Receiver(default=(500, {})) as receiver:
        hook, _ = endpoint(store, receiver.url())
        loop = deliverer(retry_scale=0.000002)
        drive(loop, lambda: not store.get(hook).enabled)
        assert len(receiver.requests) == len(SCHEDULE_SECONDS) + 1  # now + 9 retries
    assert "every retry" in store.get(hook).disabled_reason
    assert loop.stats.deliveries[(hook, "exhausted")] == 1


def test_retry_after_from_a_429_sets_the_next_attempt(
        log: EventLog, store: EndpointStore, deliverer: MakeDeliverer) -> None:
    log.add()
    with Receiver(script=[(429, {"Retry-After": "120"})]) as receiver:
        hook, _ = endpoint(store, receiver.url())
        deliverer().run_endpoint(hook)
        receiver.wait_for(1)
    state = store.get(hook)
    assert state.last_status == 429
    assert state.next_attempt_at - (state.last_delivery_at or 0) >= 120


def test_a_hanging_receiver_times_out_and_a_redirect_is_not_followed(
        log: EventLog, store: EndpointStore, deliverer: MakeDeliverer) -> None:
    log.add()
    with Receiver(script=[HANG, (302, {"Location": "/elsewhere"})]) as receiver:
        hook, _ = endpoint(store, receiver.url())
        loop = deliverer(timeout_seconds=0.5, connect_timeout_seconds=0.5)
        loop.run_endpoint(hook)
        assert store.get(hook).last_error == "timed out"
        drive(loop, lambda: store.get(hook).last_status == 302)
        assert [r.path for r in receiver.requests] == ["/hook", "/hook"]
    assert store.get(hook).cursor == 0


def test_the_answer_is_read_only_up_to_the_cap(
        store: EndpointStore, deliverer: MakeDeliverer) -> None:
    with Receiver() as receiver:
        receiver.answer_body = b"x" * 100_000
        hook, _ = endpoint(store, receiver.url())
        attempt = deliverer(max_response_bytes=512).send_test(hook)
    assert attempt.status == 200 and len(attempt.body) == 512


def test_filters_skip_other_events_for_good(
        log: EventLog, store: EndpointStore, deliverer: MakeDeliverer) -> None:
    log.add("session.status", "main")
    wanted = log.add("message.status", "main")
    log.add("message.status", "other")
    with Receiver() as receiver:
        hook, _ = endpoint(store, receiver.url(), events=("message.status",),
                           sessions=("main",))
        loop = deliverer()
        drive(loop, lambda: store.get(hook).cursor == 3)
    assert [r.headers["webhook-id"] for r in receiver.requests] == [wanted]


def test_each_endpoint_keeps_its_own_order_and_cursor(
        log: EventLog, store: EndpointStore, deliverer: MakeDeliverer) -> None:
    ids = [log.add(n=n) for n in range(4)]
    with Receiver() as good, Receiver(script=[(500, {})]) as flaky:
        a, _ = endpoint(store, good.url())
        b, _ = endpoint(store, flaky.url())
        drive(deliverer(), lambda: store.get(a).cursor == 4 and store.get(b).cursor == 4)
    assert [r.headers["webhook-id"] for r in good.requests] == ids
    assert [r.headers["webhook-id"] for r in flaky.requests] == [ids[0], *ids]


def test_replay_delivers_again_with_the_same_ids(
        log: EventLog, store: EndpointStore, deliverer: MakeDeliverer) -> None:
    ids = [log.add(n=n) for n in range(3)]
    with Receiver() as receiver:
        hook, _ = endpoint(store, receiver.url())
        loop = deliverer()
        drive(loop, lambda: store.get(hook).cursor == 3)
        store.set_cursor(hook, 1, time.time())
        drive(loop, lambda: len(receiver.requests) == 5)
    assert [r.headers["webhook-id"] for r in receiver.requests] == [*ids, *ids[1:]]


def test_rotation_signs_with_both_secrets_until_the_overlap_ends(
        log: EventLog, store: EndpointStore, deliverer: MakeDeliverer) -> None:
    log.add()
    log.add()
    with Receiver() as receiver:
        hook, old = endpoint(store, receiver.url())
        new = signing.new_secret()
        store.rotate(hook, new, time.time(), overlap=3600)
        loop = deliverer()
        loop.run_endpoint(hook, max_requests=1)
        store.rotate(hook, signing.new_secret(), time.time(), overlap=0)
        loop.run_endpoint(hook, max_requests=1)
        first, second = receiver.wait_for(2)
    Webhook(old).verify(first.body, first.headers)
    Webhook(new).verify(first.body, first.headers)
    assert len(second.headers["webhook-signature"].split(" ")) == 1


def test_an_endpoint_deleted_while_due_ends_its_turn_quietly(
        log: EventLog, store: EndpointStore, deliverer: MakeDeliverer) -> None:
    log.add()
    with Receiver() as receiver:
        hook, _ = endpoint(store, receiver.url())
        loop = deliverer()
        assert [e.id for e in loop.due()] == [hook]
        store.delete(hook)
        assert loop.run_endpoint(hook) == 0 and loop.run_due() == 0
        assert receiver.requests == []


def test_a_replay_while_a_request_is_out_is_not_undone_by_its_2xx(
        tmp_path: Path, log: EventLog, store: EndpointStore,
        deliverer: MakeDeliverer) -> None:
    ids = [log.add(n=n) for n in range(2)]
    replayed = []

    def replay_now(_: object) -> None:
        if not replayed:  # the API's replay, from another connection, mid-request
            other = EndpointStore(tmp_path / "webhooks", KEY)
            replayed.append(other.set_cursor(hook, 0, time.time()).cursor)
            other.close()

    with Receiver(on_request=replay_now) as receiver:
        hook, _ = endpoint(store, receiver.url())
        loop = deliverer()
        loop.run_endpoint(hook, max_requests=1)
        assert store.get(hook).cursor == 0  # the replay's cursor, not the 2xx's
        drive(loop, lambda: store.get(hook).cursor == 2)
    assert [r.headers["webhook-id"] for r in receiver.requests] == [ids[0], *ids]


def test_a_hanging_endpoint_holds_up_only_itself(
        tmp_path: Path, log: EventLog, store: EndpointStore,
        deliverer: MakeDeliverer) -> None:
    from dataclasses import replace

    from actors.webhooks.client import make_client
    from actors.webhooks.delivery import ConcurrentDeliverer, Deliverer
    from actors.webhooks.source import SqliteEventSource

    config = replace(CONFIG, timeout_seconds=15.0, connect_timeout_seconds=2.0)
    overview = deliverer(timeout_seconds=15.0, connect_timeout_seconds=2.0)

    def worker() -> Deliverer:
        return Deliverer(EndpointStore(tmp_path / "webhooks", KEY),
                         SqliteEventSource(log.path), make_client(2.0, 15.0), config,
                         time.time, stats=overview.stats)

    ids = [log.add(n=n) for n in range(3)]
    with Receiver(script=[HANG]) as stuck, Receiver() as healthy:
        slow, _ = endpoint(store, stuck.url())  # first in line
        fast, _ = endpoint(store, healthy.url())
        pool = ConcurrentDeliverer(overview, worker, workers=4)
        try:
            drive(pool, lambda: store.get(fast).cursor == 3)  # type: ignore[arg-type]
            assert stuck.wait_for(1)[0].headers["webhook-id"] == ids[0]
            assert store.get(slow).failures == 0 and pool.busy()  # still waiting for it
        except BaseException:
            stuck.__exit__(None, None, None)  # release the hung request before closing
            pool.close()
            raise
    pool.close()  # the receivers are gone: the hung request ended, its turn with it
    assert [r.headers["webhook-id"] for r in healthy.requests] == ids
    assert store.get(slow).failures == 1 and store.get(slow).cursor == 0


def test_an_up_to_date_endpoint_rests_instead_of_spinning(
        tmp_path: Path, log: EventLog, store: EndpointStore,
        deliverer: MakeDeliverer) -> None:
    """Regression (found by tests/perf/bench_webhooks.py): an endpoint's cursor leaves it
    "due now" once it is up to date, and the webhook actor's loop started turn after turn
    on an empty log (and spun while a turn ran): a core busy with nothing to deliver, and
    half the delivery rate. Now a turn that finds nothing rests the endpoint for the poll
    interval, and a running turn is not "due"."""
    from actors.webhooks.client import make_client
    from actors.webhooks.delivery import ConcurrentDeliverer, Deliverer
    from actors.webhooks.source import SqliteEventSource

    overview = deliverer()

    def worker() -> Deliverer:
        return Deliverer(EndpointStore(tmp_path / "webhooks", KEY),
                         SqliteEventSource(log.path), make_client(2.0, 2.0), CONFIG,
                         time.time, stats=overview.stats)

    seen: list[float | None] = []
    ids = [log.add(n=n) for n in range(2)]
    with Receiver() as receiver:
        hook, _ = endpoint(store, receiver.url())
        pool = ConcurrentDeliverer(overview, worker, workers=2, poll_seconds=0.3)
        receiver.on_request = lambda _: seen.append(pool.next_due())
        try:
            drive(pool, lambda: store.get(hook).cursor == 2)  # type: ignore[arg-type]
            assert seen[0] is None  # its own turn was running: nothing else is due
            drive(pool, lambda: hook in pool.resting)  # type: ignore[arg-type]
            assert pool.run_due() == 0  # up to date: no turn until the rest is over
            assert (pool.next_due() or 0) >= pool.resting[hook] - 1e-6
            ids.append(log.add(n=2))
            started, end = 0, time.monotonic() + 20
            while store.get(hook).cursor != 3:  # what the actor's loop does, counted
                assert time.monotonic() < end, "the new event was not delivered"
                started += pool.run_due()
                time.sleep(0.01)
            assert started <= 2  # the turn after the rest (and at most one that raced it)
        finally:
            pool.close()
    assert [r.headers["webhook-id"] for r in receiver.requests] == ids
