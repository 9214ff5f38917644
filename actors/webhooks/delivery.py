"""The delivery loop: each endpoint walks the event log from its cursor, in order.

Per endpoint, one request at a time and in seq order: the event after the cursor that
passes the endpoint's filters is sent; a 2xx moves the cursor past it; any other answer
leaves the cursor where it is and schedules the same event again (``schedule.decide``),
so a later event never overtakes an earlier one. 410 disables the endpoint, and so does
a schedule that ran out; re-enabling resumes from the cursor. Delivery is therefore
at least once: an event whose 2xx was lost (a crash before the cursor was written, a
timeout after the receiver acted) is sent again with the same ``webhook-id``.

No actor and no threads here: the actor calls ``run_endpoint`` for each due endpoint and
sleeps until ``next_due``. Disabling is reported through ``on_disabled`` (the actor
audits it) and counted in ``Stats``.
"""

from __future__ import annotations

import random
import threading
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx
import structlog

from actors.outbox.db import STORE_RETRY_SECONDS, StoreUnavailable
from actors.webhooks import schedule, signing
from actors.webhooks.client import Attempt, Channels, post
from actors.webhooks.safety import Resolver, UnsafeTarget, resolve, target
from actors.webhooks.source import Event, EventSource
from actors.webhooks.store import Endpoint, EndpointStore, UnknownEndpoint
from gateway.core.config import WebhooksConfig
from gateway.core.disk import is_disk_full
from gateway.core.threads import started_executor

log = structlog.get_logger("wagate.webhooks")

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TEST_EVENT_TYPE = "webhook.test"
# How long an endpoint rests when its cursor could not be written for want of disk
# space: each try sends the event again (the cursor stays), so not every poll.
DISK_FULL_REST_SECONDS = 5.0


@dataclass
class Stats:
    """Counters the actor reports as metrics (fed by the delivery thread, read by the
    actor's thread at a scrape: hence the lock)."""

    deliveries: Counter[tuple[str, str]] = field(default_factory=Counter)  # (endpoint, outcome)
    latency: Counter[float] = field(default_factory=Counter)  # bucket upper bound -> count
    latency_sum: float = 0.0
    disabled: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def observe(self, endpoint_id: str, outcome: str, seconds: float) -> None:
        bucket = next((b for b in LATENCY_BUCKETS if seconds <= b), float("inf"))
        with self.lock:
            self.deliveries[(endpoint_id, outcome)] += 1
            self.latency_sum += seconds
            self.latency[bucket] += 1

    def count_disabled(self) -> None:
        with self.lock:
            self.disabled += 1

    def snapshot(self) -> dict[str, Any]:
        """Plain data for the web tier: deliveries by endpoint and outcome, the latency
        histogram (cumulative, Prometheus' way) and the endpoints disabled so far."""
        with self.lock:
            deliveries = [[e, o, n] for (e, o), n in sorted(self.deliveries.items())]
            counts = dict(self.latency)
            total, disabled = self.latency_sum, self.disabled
        running, buckets = 0, []
        for bound in (*LATENCY_BUCKETS, float("inf")):
            running += counts.get(bound, 0)
            buckets.append([bound, running])
        return {"deliveries": deliveries, "latency_buckets": buckets,
                "latency_sum": total, "disabled_total": disabled}


Clock = Callable[[], float]
OnDisabled = Callable[[Endpoint, str], None]
Opened = TypeVar("Opened")


class Deliverer:
    def __init__(self, store: EndpointStore, source: EventSource,
                 client: httpx.Client | Channels,
                 config: WebhooksConfig, clock: Clock, *, resolver: Resolver = resolve,
                 rng: random.Random | None = None,
                 on_disabled: OnDisabled | None = None, stats: Stats | None = None) -> None:
        self.store, self.source, self.client, self.config = store, source, client, config
        self.clock, self.resolver = clock, resolver
        self.rng = rng or random.Random()
        self.on_disabled = on_disabled
        self.stats = stats or Stats()

    def due(self) -> list[Endpoint]:
        now = self.clock()
        return [e for e in self.store.all() if e.enabled and e.next_attempt_at <= now]

    def next_due(self) -> float | None:
        """When the earliest waiting endpoint is due (None: none is enabled). An endpoint
        that is up to date is "due" now: new events are found by polling the log."""
        times = [e.next_attempt_at for e in self.store.all() if e.enabled]
        return min(times) if times else None

    def run_due(self) -> int:
        """One pass over every due endpoint; the number of requests made."""
        return sum(self.run_endpoint(e.id) for e in self.due())

    def run_endpoint(self, endpoint_id: str, max_requests: int | None = None) -> int:
        """Deliver ``endpoint_id``'s events from its cursor until one fails, the log is
        drained, or ``max_requests`` (default ``batch_events``) were made.

        The log is read ``batch_events`` rows at a time and walked in memory: reading it
        again for every request cost more than the request itself. The endpoint's row is
        still read before each request (a disable, a delete or a replay through the API
        takes effect at the next event); a cursor that is not where this turn left it
        (a replay moved it) makes the turn read the log again from there."""
        limit = max_requests or self.config.batch_events
        made = 0
        pending: deque[Event] = deque()
        position: int | None = None  # the cursor the events in ``pending`` follow
        while made < limit:
            try:  # deleted through the API meanwhile: nothing more to do for it
                endpoint = self.store.get(endpoint_id)
            except UnknownEndpoint:
                break
            if not endpoint.enabled or endpoint.next_attempt_at > self.clock():
                break
            if endpoint.cursor != position or not pending:
                pending = deque(self.source.events_after(endpoint.cursor,
                                                         self.config.batch_events))
                position = endpoint.cursor
                if not pending:
                    break
            event = self._first_wanted(endpoint, pending)
            if event is None:  # every event read was filtered out: read on from there
                position = None
                continue
            made += 1
            if not self._deliver(endpoint, event):
                break
            position = event.seq
        return made

    def _first_wanted(self, endpoint: Endpoint, pending: deque[Event]) -> Event | None:
        """The first event of ``pending`` that passes the filters (taken off it); the
        ones before it that do not are skipped for good (the cursor moves past them)."""
        while pending:
            event = pending.popleft()
            if endpoint.wants(event.type, event.session):
                return event
            self.store.skipped(endpoint.id, event.seq, endpoint.replays)
        return None

    def _deliver(self, endpoint: Endpoint, event: Event) -> bool:
        try:
            attempt = self.send(endpoint, event)
        except UnknownEndpoint:
            return False  # deleted while its request was being prepared
        now = self.clock()
        if attempt.status is not None and 200 <= attempt.status < 300:
            # A replay that moved the cursor while the request was out wins.
            self.store.delivered(endpoint.id, event.seq, attempt.status, now,
                                 endpoint.replays)
            self.stats.observe(endpoint.id, "delivered", attempt.seconds)
            return True
        decision = schedule.decide(
            attempt.status, endpoint.failures, scale=self.config.retry_scale,
            jitter=self.config.jitter_fraction, rng=self.rng,
            retry_after=schedule.retry_after_seconds(attempt.retry_after,
                                                     datetime.now(UTC)),
            max_retry_after=self.config.max_retry_after_seconds)
        self.store.failed(endpoint.id, attempt.status, attempt.error, now,
                          now + decision.delay_seconds)
        self.stats.observe(endpoint.id, decision.outcome.value, attempt.seconds)
        if decision.outcome is schedule.Outcome.GONE:
            self._disable(endpoint, "the endpoint answered 410 Gone")
        elif decision.outcome is schedule.Outcome.EXHAUSTED:
            self._disable(endpoint, f"event {event.id} failed on every retry of the "
                          "schedule (last: " + (attempt.error or f"HTTP {attempt.status}")
                          + ")")
        return False

    def _disable(self, endpoint: Endpoint, reason: str) -> None:
        disabled = self.store.set_enabled(endpoint.id, False, reason, self.clock())
        self.stats.count_disabled()
        if self.on_disabled is not None:
            self.on_disabled(disabled, reason)

    def send(self, endpoint: Endpoint, event: Event) -> Attempt:
        """One signed request of ``event`` to ``endpoint``; an unsafe target is a failed
        attempt whose error says why (checked on every attempt: DNS may change)."""
        try:
            where = target(endpoint.url, self.config.allow_insecure, self.resolver)
        except UnsafeTarget as exc:
            return Attempt(None, None, str(exc), 0.0)
        body = signing.payload(event.type, event.created_at, event.data)
        secrets = self.store.secrets(endpoint.id, self.clock())
        headers = signing.headers(event.id, body, secrets, datetime.now(UTC))
        via = self.client.get(where) if isinstance(self.client, Channels) else self.client
        return post(via, where, headers, body, timeout=self.config.timeout_seconds,
                    max_bytes=self.config.max_response_bytes)

    def send_test(self, endpoint_id: str) -> Attempt:
        """``sendTestWebhook``: one signed ``webhook.test`` event, outside the log and the
        cursor; its outcome is returned, not retried."""
        endpoint = self.store.get(endpoint_id)
        now = datetime.now(UTC)
        event = Event(0, "evt_test_" + signing.new_secret()[6:18].replace("/", "_"),
                      TEST_EVENT_TYPE, "", now, {"endpoint": endpoint.id})
        attempt = self.send(endpoint, event)
        self.stats.observe(endpoint.id, "test", attempt.seconds)
        return attempt


def cursor_before(source: EventSource, since: datetime, batch: int = 1000) -> int:
    """The cursor that replays every event created at or after ``since``: the seq of
    the last event before it (0 when none)."""
    cursor = 0
    while True:
        events = source.events_after(cursor, batch)
        for event in events:
            if event.created_at >= since:
                return cursor
            cursor = event.seq
        if len(events) < batch:
            return cursor


def head_of(source: EventSource) -> int:
    """The seq of the newest event (0 for an empty log): where a new endpoint starts.
    One indexed read: walking the log here cost a start with a million events some
    seconds of CPU."""
    return source.head()


class ConcurrentDeliverer:
    """Endpoints delivered side by side: each due endpoint's turn (``run_endpoint``) runs
    on a pool of ``workers`` threads, never two turns of one endpoint at once, so order
    holds per endpoint while a slow or hanging endpoint holds up only itself. Each
    worker thread has a ``Deliverer`` of its own (its own SQLite connection and client,
    made by ``make``); ``overview`` (this thread's) finds what is due."""

    def __init__(self, overview: Deliverer, make: Callable[[], Deliverer],
                 workers: int, poll_seconds: float = 0.0) -> None:
        self.overview, self.make = overview, make
        self.pool = started_executor(workers, "wagate-webhook")  # gateway.core.threads
        self.lock = threading.Lock()
        self.in_flight: set[str] = set()
        # An endpoint whose turn found nothing to send is up to date; its cursor stays
        # "due now", so without a rest the loop would start turn after turn on an empty
        # log (a busy loop). It rests ``poll_seconds``: how long a new event may wait.
        self.poll_seconds = poll_seconds
        self.resting: dict[str, float] = {}  # endpoint id -> when to look at the log again
        self.local = threading.local()
        self.made: list[Deliverer] = []
        # The endpoint store's database (PostgreSQL, multi-host mode) could not be
        # reached: said once per outage, not at every poll.
        self.store_down = False

    @property
    def stats(self) -> Stats:
        return self.overview.stats

    def next_due(self) -> float | None:
        """When the earliest endpoint that has no turn running is due (None: none). An
        endpoint with a running turn is left out: its turn ends by itself, and counting
        it (due "now") would make the caller spin while it runs. Without the store's
        database: in ``STORE_RETRY_SECONDS`` (the loop must not die of it)."""
        try:
            endpoints = self.overview.store.all()
        except StoreUnavailable as exc:
            self._store_lost(exc)
            return self.overview.clock() + STORE_RETRY_SECONDS
        with self.lock:
            running = set(self.in_flight)
            known = {e.id for e in endpoints}
            for gone in [i for i in self.resting if i not in known]:  # deleted meanwhile
                del self.resting[gone]
            resting = dict(self.resting)
        times = [max(e.next_attempt_at, resting.get(e.id, 0.0))
                 for e in endpoints if e.enabled and e.id not in running]
        return min(times) if times else None

    def run_due(self) -> int:
        """Start a turn for every due endpoint that has none running and is not resting
        (up to date at its last turn); how many started."""
        started = 0
        now = self.overview.clock()
        try:
            due = self.overview.due()
        except StoreUnavailable as exc:  # nothing is lost: the cursors wait in the store
            self._store_lost(exc)
            return 0
        if self.store_down:
            self.store_down = False
            log.info("webhook delivery resumes: the endpoint store answers again")
        for endpoint in due:
            with self.lock:
                if endpoint.id in self.in_flight or self.resting.get(endpoint.id, 0.0) > now:
                    continue
                self.in_flight.add(endpoint.id)
            self.pool.submit(self._turn, endpoint.id)
            started += 1
        return started

    def _turn(self, endpoint_id: str) -> None:
        made = 0
        rest = self.poll_seconds
        try:
            made = self._mine().run_endpoint(endpoint_id)
        except Exception as exc:  # the endpoint is due again, nothing is lost
            if isinstance(exc, StoreUnavailable):
                # PostgreSQL did not answer: a cursor move may be lost, so the event
                # goes out again (at least once, same webhook-id). Rest as the store's
                # connection does before asking again.
                self._store_lost(exc)  # said once per outage, not at every turn
                rest, made = STORE_RETRY_SECONDS, 0
            elif is_disk_full(exc):
                # The cursor (or a retry time) could not be written: the event goes out
                # again once there is space (at least once). Until then, a longer rest
                # than a poll keeps the endpoint from getting it again and again.
                log.warning("webhook delivery paused: the disk is full, the endpoint's "
                            "cursor cannot be written; free disk space on data_dir",
                            endpoint=endpoint_id, retry_seconds=DISK_FULL_REST_SECONDS)
                rest, made = DISK_FULL_REST_SECONDS, 0
            else:  # a bug: logged
                log.exception("webhook delivery turn failed", endpoint=endpoint_id)
        finally:
            with self.lock:
                self.in_flight.discard(endpoint_id)
                if made:
                    self.resting.pop(endpoint_id, None)
                else:  # nothing to send (or not due, or no space): look again after a rest
                    self.resting[endpoint_id] = self.overview.clock() + rest

    def _store_lost(self, exc: StoreUnavailable) -> None:
        if not self.store_down:
            self.store_down = True
            log.warning("webhook delivery paused: PostgreSQL (the endpoint store or the "
                        "event log) cannot be reached; trying again", error=str(exc),
                        retry_seconds=STORE_RETRY_SECONDS)

    def _mine(self) -> Deliverer:
        mine: Deliverer | None = getattr(self.local, "deliverer", None)
        if mine is None:
            mine = self.make()
            self.local.deliverer = mine
            with self.lock:
                self.made.append(mine)
        return mine

    def busy(self) -> bool:
        with self.lock:
            return bool(self.in_flight)

    def close(self) -> None:
        """Wait for the running turns (each ends within ``webhooks.timeout_seconds``),
        then close every worker's connection and client."""
        self.pool.shutdown(wait=True)
        for deliverer in self.made:
            deliverer.client.close()
            deliverer.store.close()


def when_reachable(open_store: Callable[[], Opened], stopping: threading.Event
                   ) -> Opened | None:
    """``open_store()`` once the endpoint store's database answers (PostgreSQL, multi-
    host mode): a leader whose webhook thread starts while the database is down must not
    lose that thread for good (it would deliver nothing until its next restart). Tries
    every ``STORE_RETRY_SECONDS``, said once; None when ``stopping`` is set first."""
    said = False
    while not stopping.is_set():
        try:
            return open_store()
        except StoreUnavailable as exc:
            if not said:
                said = True
                log.warning("webhook delivery waits: the endpoint store (PostgreSQL) "
                            "cannot be reached", error=str(exc),
                            retry_seconds=STORE_RETRY_SECONDS)
        stopping.wait(STORE_RETRY_SECONDS)
    return None
