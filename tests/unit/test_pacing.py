"""Pacing decisions (actors/outbox/pacing.py) and the warm-up ledger (actors/outbox/warmup.py)."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import diskcache
import pytest

from actors.outbox.pacing import (
    DAY_SECONDS,
    Pacer,
    PacingRules,
    in_warmup,
    newly_linked,
    next_send_at,
    warmup_window,
)
from actors.outbox.warmup import Warmup
from gateway.core.config import PacingConfig

DEFAULTS = PacingRules.from_config(PacingConfig())


def test_the_rules_come_from_the_config_in_seconds() -> None:
    rules = PacingRules.from_config(PacingConfig(warmup_days=2.0, warmup_daily_cap=7))
    assert (rules.min_interval, rules.jitter, rules.typing) == (1.0, 0.5, 0.0)
    assert rules.warmup_seconds == 2 * DAY_SECONDS and rules.warmup_daily_cap == 7
    assert rules.paced and not PacingRules().paced
    assert PacingRules(jitter=0.1).paced  # jitter alone spaces sends too


@pytest.mark.parametrize("rand", [0.0, 0.25, 0.999999])
def test_the_next_send_waits_the_interval_plus_part_of_the_jitter(rand: float) -> None:
    rules = PacingRules(min_interval=2.0, jitter=1.0)
    assert next_send_at(100.0, rules, rand) == pytest.approx(102.0 + rand)


def test_a_paced_session_gets_one_message_at_a_time_when_its_time_has_come() -> None:
    pacer = Pacer(PacingRules(min_interval=1.0, jitter=0.5))
    assert pacer.wait("s", 0.0) == 0.0 and pacer.batch(32) == 1
    assert pacer.sent("s", 10.0, 0.5) == 11.25
    assert pacer.wait("s", 10.5) == pytest.approx(0.75)
    assert pacer.wait("other", 10.5) == 0.0  # every session has its own pace
    assert pacer.wait("s", 11.25) == 0.0


def test_an_unpaced_session_gets_everything_that_fits_at_once() -> None:
    pacer = Pacer(PacingRules())
    pacer.sent("s", 10.0, 0.9)
    assert pacer.wait("s", 10.0) == 0.0 and pacer.batch(32) == 32


def test_a_clock_set_back_never_stalls_a_session_longer_than_one_gap() -> None:
    pacer = Pacer(PacingRules(min_interval=1.0, jitter=0.5))
    pacer.sent("s", 1_000_000.0, 0.0)
    assert pacer.wait("s", 0.0) == 1.5  # the clock jumped back 11 days


def test_the_defaults_let_a_burst_of_ten_leave_within_fifteen_seconds() -> None:
    """One-time codes age: ten accepted together must all be sent within 15 s, whatever
    the jitter draws, and no two sends closer than the minimum interval."""
    for seed in range(200):
        draws = random.Random(seed)
        pacer, now, sent = Pacer(DEFAULTS), 0.0, []
        for _ in range(10):
            now += pacer.wait("s", now)
            sent.append(now)
            pacer.sent("s", now, draws.random())
        gaps = [b - a for a, b in itertools.pairwise(sent)]
        assert sent[-1] - sent[0] < 15.0
        assert min(gaps) >= DEFAULTS.min_interval
        assert len({round(g, 6) for g in gaps}) > 1  # not evenly spaced


def test_only_a_pairing_that_ends_linked_starts_a_warmup() -> None:
    assert newly_linked("QR_PENDING", False, True)
    assert not newly_linked(None, None, True)  # first seen already linked (a restart)
    assert not newly_linked("RECONNECTING", True, True)
    assert not newly_linked("CONNECTING", False, True)  # resumed stored credentials
    assert not newly_linked("QR_PENDING", False, False)


def test_warmup_lasts_its_days_from_the_linking() -> None:
    rules = PacingRules(warmup_seconds=3 * DAY_SECONDS, warmup_daily_cap=50)
    assert in_warmup(1000.0, 1000.0 + 3 * DAY_SECONDS - 1, rules)
    assert not in_warmup(1000.0, 1000.0 + 3 * DAY_SECONDS, rules)
    assert not in_warmup(None, 0.0, rules)
    assert not in_warmup(1000.0, 1000.0, PacingRules())  # 0 days: no warm-up
    assert warmup_window(rules).limit == 50 and warmup_window(rules).period == DAY_SECONDS


@pytest.fixture
def cache(tmp_path: Path) -> diskcache.Cache:
    with diskcache.Cache(str(tmp_path / "limits")) as opened:
        yield opened


def test_a_newly_linked_session_is_capped_per_24_hours_until_its_warmup_ends(
        cache: diskcache.Cache) -> None:
    rules = PacingRules(warmup_seconds=2 * DAY_SECONDS, warmup_daily_cap=3)
    warmup = Warmup(cache, rules)
    linked = 1_000_000.0
    assert warmup.allows("s", linked) == (True, 0.0)  # never linked here: no cap
    assert warmup.observe("s", "QR_PENDING", False, True, linked)
    for n in range(3):
        assert warmup.allows("s", linked + n)[0]
        warmup.record("s", linked + n)
    allowed, wait = warmup.allows("s", linked + 10)
    assert not allowed and 0 < wait <= DAY_SECONDS + DAY_SECONDS / 60
    assert warmup.allows("other", linked + 10) == (True, 0.0)  # per session
    # A day later the window has room again; after the warm-up there is no cap at all.
    assert warmup.allows("s", linked + DAY_SECONDS + DAY_SECONDS / 30)[0]
    for n in range(10):
        warmup.record("s", linked + 2 * DAY_SECONDS + n)
    assert warmup.allows("s", linked + 2 * DAY_SECONDS + 20) == (True, 0.0)


def test_the_wait_never_reaches_past_the_end_of_the_warmup(cache: diskcache.Cache) -> None:
    rules = PacingRules(warmup_seconds=DAY_SECONDS, warmup_daily_cap=1)
    warmup = Warmup(cache, rules)
    warmup.observe("s", "QR_PENDING", False, True, 0.0)
    warmup.record("s", DAY_SECONDS - 100)
    allowed, wait = warmup.allows("s", DAY_SECONDS - 50)
    assert not allowed and wait == pytest.approx(50.0)


def test_the_warmup_survives_a_restart_and_a_new_link_starts_it_again(
        cache: diskcache.Cache) -> None:
    rules = PacingRules(warmup_seconds=DAY_SECONDS, warmup_daily_cap=1)
    Warmup(cache, rules).observe("s", "QR_PENDING", False, True, 0.0)
    Warmup(cache, rules).record("s", 10.0)
    reopened = Warmup(cache, rules)
    assert reopened.linked_at("s") == 0.0
    assert not reopened.allows("s", 20.0)[0]
    # Unlinked and linked again: a new device, a new warm-up with an empty window.
    assert reopened.observe("s", "QR_PENDING", False, True, 30.0)
    assert reopened.linked_at("s") == 30.0 and reopened.allows("s", 31.0)[0]
