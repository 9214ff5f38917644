"""The API's webhook operations over the real store, event table and receiver."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook

from actors.webhooks.commands import Command, CommandRefused, run
from tests.webhooks.conftest import EventLog, MakeDeliverer, drive
from tests.webhooks.receiver import Receiver


def test_create_returns_the_secret_once_and_starts_at_the_log_head(
        log: EventLog, deliverer: MakeDeliverer) -> None:
    log.add()
    loop = deliverer()
    with Receiver() as receiver:
        made = run(loop, Command("create", {"url": receiver.url(), "events": [],
                                            "sessions": [], "description": "d"}))
        assert made["secret"].startswith("whsec_") and made["webhook"]["cursor"] == 1
        listed = run(loop, Command("list", {}))
        assert made["secret"] not in repr(listed) and listed[0]["id"] == made["webhook"]["id"]
        fresh = log.add()
        hook = made["webhook"]["id"]
        drive(loop, lambda: loop.store.get(hook).cursor == 2)
        (got,) = receiver.requests
    assert got.headers["webhook-id"] == fresh
    Webhook(made["secret"]).verify(got.body, got.headers)


def test_refusals_carry_the_api_codes(deliverer: MakeDeliverer) -> None:
    loop = deliverer()
    for command, code in (
            (Command("create", {"url": "http://10.0.0.1/"}), "WEBHOOK_INVALID"),
            (Command("create", {"url": "https://x.example/", "description": "d" * 201}),
             "WEBHOOK_INVALID"),
            (Command("delete", {"id": "wh_nope"}), "WEBHOOK_NOT_FOUND"),
            (Command("replay", {"id": "wh_nope", "after": 1}), "WEBHOOK_NOT_FOUND"),
            (Command("explode", {}), "WEBHOOK_INVALID")):
        with pytest.raises(CommandRefused) as info:
            run(loop, command)
        assert info.value.code == code, command


def test_disable_enable_rotate_replay_test_and_delete(
        log: EventLog, deliverer: MakeDeliverer) -> None:
    loop = deliverer()
    with Receiver() as receiver:
        made = run(loop, Command("create", {"url": receiver.url()}))
        hook = made["webhook"]["id"]
        assert not run(loop, Command("update", {"id": hook, "enabled": False}))["enabled"]
        log.add()
        assert loop.run_due() == 0
        assert run(loop, Command("update", {"id": hook, "enabled": True}))["enabled"]
        drive(loop, lambda: loop.store.get(hook).cursor == 1)
        rotated = run(loop, Command("rotate", {"id": hook}))
        outcome = run(loop, Command("test", {"id": hook}))
        assert outcome == {"status": 200, "error": None, "delivered": True}
        test_request = receiver.requests[-1]
        for secret in (made["secret"], rotated["secret"]):
            Webhook(secret).verify(test_request.body, test_request.headers)
        with pytest.raises(CommandRefused):
            run(loop, Command("replay", {"id": hook}))
        since = datetime(2000, 1, 1, tzinfo=UTC)
        assert run(loop, Command("replay", {"id": hook, "since": since}))["cursor"] == 0
        drive(loop, lambda: loop.store.get(hook).cursor == 1 and len(receiver.requests) == 3)
        assert run(loop, Command("delete", {"id": hook})) is True
    assert run(loop, Command("list", {})) == []


@pytest.mark.parametrize("after", [-1, 3, 2_147_483_647])
def test_a_replay_cursor_outside_the_log_is_refused_naming_its_end(
        log: EventLog, deliverer: MakeDeliverer, after: int) -> None:
    """A cursor past the log's head would mute the endpoint (every new event has a
    smaller seq): refused with the head in the message; the cursor is unchanged."""
    log.add()
    log.add()
    loop = deliverer()
    hook = run(loop, Command("create", {"url": "http://127.0.0.1:9/"}))["webhook"]["id"]
    with pytest.raises(CommandRefused) as info:
        run(loop, Command("replay", {"id": hook, "after": after}))
    assert info.value.code == "WEBHOOK_INVALID" and "current end, 2" in info.value.message
    assert loop.store.get(hook).cursor == 2
    assert run(loop, Command("replay", {"id": hook, "after": 2}))["cursor"] == 2
