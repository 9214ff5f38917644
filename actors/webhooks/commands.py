"""What the API's webhook operations do to the endpoint store (admin only; the web tier
checks the role). Pure over the store, the event source and the deliverer, so the
actor only routes: each operation returns plain data (``describe``), or raises
``CommandRefused`` with a code of the API's error table and a message that says what
to do. A secret is returned by ``create`` and ``rotate`` only, once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from actors.webhooks import signing
from actors.webhooks.delivery import Deliverer, cursor_before, head_of
from actors.webhooks.safety import UnsafeTarget, check_url
from actors.webhooks.store import Endpoint, UnknownEndpoint
from gateway.core.errors import WagateError

MAX_DESCRIPTION = 200
MAX_FILTER_ITEMS = 100


class CommandRefused(WagateError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True, slots=True)
class Command:
    """One operation: ``op`` and its arguments as the API gave them."""

    op: str
    args: dict[str, Any]


def describe(endpoint: Endpoint) -> dict[str, Any]:
    """An endpoint as the API shows it: never its secret."""
    return {"id": endpoint.id, "url": endpoint.url, "events": list(endpoint.events),
            "sessions": list(endpoint.sessions), "description": endpoint.description,
            "origin": endpoint.origin, "enabled": endpoint.enabled,
            "disabledReason": endpoint.disabled_reason or None, "cursor": endpoint.cursor,
            "failures": endpoint.failures, "lastStatus": endpoint.last_status,
            "lastError": endpoint.last_error or None,
            "lastDeliveryAt": endpoint.last_delivery_at}


def run(loop: Deliverer, command: Command) -> Any:
    """Carry out ``command`` on ``loop``'s store; unknown endpoints are refused."""
    handler = HANDLERS.get(command.op)
    if handler is None:
        raise CommandRefused("WEBHOOK_INVALID", f"unknown webhook operation {command.op!r}")
    try:
        return handler(loop, **command.args)
    except UnknownEndpoint as exc:
        raise CommandRefused("WEBHOOK_NOT_FOUND", f"no webhook has the id {exc.args[0]!r}; "
                             "the `webhooks` query lists them") from None


def _checked_url(loop: Deliverer, url: str) -> str:
    try:
        check_url(url, loop.config.allow_insecure)
    except UnsafeTarget as exc:
        raise CommandRefused("WEBHOOK_INVALID", str(exc)) from None
    return url


def _checked_list(name: str, items: Sequence[str] | None) -> tuple[str, ...] | None:
    if items is None:
        return None
    if len(items) > MAX_FILTER_ITEMS or any(not 0 < len(i) <= 100 for i in items):
        raise CommandRefused("WEBHOOK_INVALID", f"{name}: at most {MAX_FILTER_ITEMS} names "
                             "of 1 to 100 characters each ([] means all)")
    return tuple(items)


def _checked_description(text: str | None) -> str | None:
    if text is not None and len(text) > MAX_DESCRIPTION:
        raise CommandRefused("WEBHOOK_INVALID",
                             f"description: at most {MAX_DESCRIPTION} characters")
    return text


def _create(loop: Deliverer, url: str, events: Sequence[str] = (),
            sessions: Sequence[str] = (), description: str = "") -> dict[str, Any]:
    secret = signing.new_secret()
    made = loop.store.create(
        _checked_url(loop, url), _checked_list("events", events) or (),
        _checked_list("sessions", sessions) or (), _checked_description(description) or "",
        secret, loop.clock(), cursor=head_of(loop.source))
    return {"webhook": describe(made), "secret": secret}


def _list(loop: Deliverer) -> list[dict[str, Any]]:
    return [describe(e) for e in loop.store.all()]


def _update(loop: Deliverer, id: str, url: str | None = None,
            events: Sequence[str] | None = None, sessions: Sequence[str] | None = None,
            description: str | None = None, enabled: bool | None = None) -> dict[str, Any]:
    endpoint = loop.store.update(
        id, url=None if url is None else _checked_url(loop, url),
        events=_checked_list("events", events), sessions=_checked_list("sessions", sessions),
        description=_checked_description(description))
    if enabled is not None and enabled != endpoint.enabled:
        endpoint = loop.store.set_enabled(id, enabled, "disabled by an operator", loop.clock())
    return describe(endpoint)


def _rotate(loop: Deliverer, id: str) -> dict[str, Any]:
    secret = signing.new_secret()
    loop.store.rotate(id, secret, loop.clock(), loop.config.rotation_overlap_seconds)
    return {"webhook": describe(loop.store.get(id)), "secret": secret}


def _delete(loop: Deliverer, id: str) -> bool:
    loop.store.delete(id)
    return True


def _test(loop: Deliverer, id: str) -> dict[str, Any]:
    attempt = loop.send_test(id)
    return {"status": attempt.status, "error": attempt.error or None,
            "delivered": attempt.status is not None and 200 <= attempt.status < 300}


def _replay(loop: Deliverer, id: str, after: int | None = None,
            since: datetime | None = None) -> dict[str, Any]:
    if (after is None) == (since is None):
        raise CommandRefused("WEBHOOK_INVALID", "replayWebhooks takes either `after` (a "
                             "cursor) or `since` (a time), not both and not neither")
    loop.store.get(id)  # an unknown id is WEBHOOK_NOT_FOUND, whatever the cursor
    if after is not None:
        _check_replay_cursor(after, head_of(loop.source))
    cursor = after if after is not None else cursor_before(loop.source, since)  # type: ignore[arg-type]
    return describe(loop.store.set_cursor(id, cursor, loop.clock()))


def _check_replay_cursor(after: int, head: int) -> None:
    """Refuse a cursor outside the log: past its head every later event has a smaller
    seq and would be skipped, so the endpoint would look healthy and receive nothing
    (refused rather than clamped, so a typo or another gateway's seq is noticed)."""
    if not 0 <= after <= head:
        raise CommandRefused("WEBHOOK_INVALID", f"after ({after}) must be a cursor from 0 "
                             f"to the event log's current end, {head}; 0 replays the "
                             "whole log")


HANDLERS: dict[str, Any] = {
    "create": _create, "list": _list, "update": _update, "rotate": _rotate,
    "delete": _delete, "test": _test, "replay": _replay}
