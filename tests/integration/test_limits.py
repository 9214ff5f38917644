"""Rate and session limits, end to end.

The limits are what keeps a WhatsApp account from being banned for spamming, so
they are checked through the public API against real processes: that they bite
at the documented numbers, that a refusal tells the caller when to retry, that a
refusal costs nothing, and that a restart does not hand out a fresh quota.
"""

from __future__ import annotations

from collections.abc import Callable

from tests.integration.harness import Gateway, expect_error, wait_for

OK = {"sendWhatsAppNotification": True}


def sent_to(gateway: Gateway, digits: str) -> list[str]:
    return [m["text"] for m in gateway.inbox() if m["to"] == digits]


def assert_retry_after(error: dict, low: int, high: int) -> int:
    """``retryAfterSeconds`` must be a whole number a client can sleep on."""
    retry = error["extensions"]["retryAfterSeconds"]
    assert type(retry) is int and low <= retry <= high, error
    return retry


def test_per_recipient_limit_per_minute(gateway: Gateway) -> None:
    """The default 10 messages per recipient per minute: the 11th is refused with a
    retry time within the minute, for any spelling of the number, while other
    recipients are unaffected."""
    gateway.link()
    for i in range(10):
        assert gateway.send("+14155550120", f"burst {i}").data == OK, i
    for spelling in ("+14155550120", "+1 (415) 555-0120", "0014155550120"):
        error = expect_error(gateway.send(spelling, "eleventh"), "RATE_LIMITED", "retry in")
        assert error["extensions"]["scope"] == "recipient_minute"
        retry = assert_retry_after(error, 1, 61)
        assert f"{retry} s" in error["message"]
    assert gateway.send("+14155550121", "someone else").data == OK
    assert sent_to(gateway, "14155550120") == [f"burst {i}" for i in range(10)]
    assert sent_to(gateway, "14155550121") == ["someone else"]


def test_spellings_of_one_whatsapp_account_share_one_recipient_limit(
        make_gateway: Callable[..., Gateway]) -> None:
    """WhatsApp addresses an Argentine mobile as 549 + area + number; ``+54 11 ...``
    (no 9) is the same person. Each spelling used to get a quota of its own, so a
    caller alternating them sent twice the limit to one recipient. What is sent and
    stored stays the number as the caller wrote it (normalised)."""
    gw = make_gateway({"limits": {"per_number_per_minute": 2}}).start()
    gw.link()
    assert gw.send("+54 9 11 2345-6789", "with the nine").data == OK
    assert gw.send("+54 11 2345-6789", "without the nine").data == OK
    for spelling in ("+54 11 15 2345-6789", "+54 11 2345 6789", "+5491123456789"):
        error = expect_error(gw.send(spelling, "third"), "RATE_LIMITED", "this recipient")
        assert error["extensions"]["scope"] == "recipient_minute"
    assert gw.send("+54 9 11 2345-6780", "another line").data == OK
    sent = {(m["to"], m["text"]) for m in gw.inbox()}
    assert sent == {("5491123456789", "with the nine"), ("541123456789", "without the nine"),
                    ("5491123456780", "another line")}


def test_refusals_consume_no_quota_and_global_daily_limit(
        make_gateway: Callable[..., Gateway]) -> None:
    """A refused send must not count against any window (otherwise a client retrying
    too early would lock itself out for longer); and the global daily limit bounds
    the whole gateway, whatever the recipients."""
    gw = make_gateway({"limits": {"per_number_per_minute": 2, "global_per_day": 3}}).start()
    gw.link()
    assert gw.send("+14155550130", "a1").data == OK
    assert gw.send("+14155550130", "a2").data == OK
    for attempt in ("a3", "a4"):
        error = expect_error(gw.send("+14155550130", attempt), "RATE_LIMITED")
        assert error["extensions"]["scope"] == "recipient_minute"
        assert_retry_after(error, 1, 61)
    assert gw.health()["limiter"]["global_day_used"] == 2  # the refusals took nothing

    # Only because a3 and a4 consumed nothing is there room for this one.
    assert gw.send("+14155550131", "b1").data == OK
    for phone in ("+14155550131", "+14155550132"):
        error = expect_error(gw.send(phone, "over the day"), "RATE_LIMITED", "this gateway")
        assert error["extensions"]["scope"] == "global_day"
        assert_retry_after(error, 61, 86400 + 1441)  # about a day, never "retry in a minute"
    limiter = gw.health()["limiter"]
    assert limiter["global_day_used"] == 3 and limiter["global_day_limit"] == 3
    assert sorted(m["text"] for m in gw.inbox()) == ["a1", "a2", "b1"]


def test_limits_survive_a_restart(make_gateway: Callable[..., Gateway]) -> None:
    """Restarting the gateway must not reset the windows, or a crash loop (or an
    impatient operator) would let a burst through and get the account banned."""
    gw = make_gateway().start()
    gw.link()
    for i in range(10):
        assert gw.send("+14155550140", f"before restart {i}").data == OK, i
    gw.stop()
    gw.start()  # a new launcher and actor system on the same data dir
    gw.wait_state("CONNECTED")
    error = expect_error(gw.send("+14155550140", "after restart"), "RATE_LIMITED")
    assert error["extensions"]["scope"] == "recipient_minute"
    assert_retry_after(error, 1, 61)
    assert gw.send("+14155550141", "another recipient").data == OK
    assert gw.health()["limiter"]["global_day_used"] == 11
    assert "after restart" not in sent_to(gw, "14155550140")


def test_session_limit_and_a_freed_slot(make_gateway: Callable[..., Gateway]) -> None:
    """At most 5 concurrent WhatsApp connections (the default): a 6th session is
    refused with SESSION_LIMIT, and logging one out frees its slot."""
    gw = make_gateway().start()
    names = [f"s{i}" for i in range(1, 6)]
    for name in names:
        gw.link(name)
    error = expect_error(gw.connect("s6"), "SESSION_LIMIT", "sessions.max_sessions")
    assert error["extensions"]["limit"] == 5
    assert gw.status("s6")["state"] == "NEW"
    assert all(gw.status(name)["state"] == "CONNECTED" for name in names)

    assert gw.disconnect("s1").data == {"whatsAppDisconnect": True}
    gw.wait_state("LOGGED_OUT", "s1")
    # The slot is released when the session's process has exited, just after its
    # final state is reported; a retry loop is what a client would do as well.
    wait_for(lambda: gw.connect("s6").data == {"whatsAppConnect": True}, 10,
             message="a slot to free up for s6")
    gw.wait_state("QR_PENDING", "s6")
    gw.sim("scan", "--session", "s6")
    gw.wait_state("CONNECTED", "s6")
    expect_error(gw.connect("s7"), "SESSION_LIMIT")
