"""Signing a delivery the Standard Webhooks way, with the ``standardwebhooks`` package.

The headers are ``webhook-id`` (the event's stable id, the same on every retry, so a
consumer dedupes on it), ``webhook-timestamp`` (seconds, the time of this attempt) and
``webhook-signature``: ``v1,<base64 HMAC-SHA256 over "id.timestamp.body">``, one entry
per secret that currently signs (during a rotation's overlap, the new and the old),
separated by spaces as the specification allows. Pure: no I/O but ``os.urandom``.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from standardwebhooks.webhooks import Webhook

from gateway.core.errors import WagateError

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32


class BadSecret(WagateError, ValueError):
    """A signing secret that is not ``whsec_`` + base64 of at least 24 bytes."""


def new_secret() -> str:
    """A fresh signing secret, ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(os.urandom(SECRET_BYTES)).decode("ascii")


def check_secret(text: str) -> str:
    """``text`` if it is a usable secret; an operator's own secret (a config endpoint's)
    is checked before it signs anything, so a typo is a clear error, not a bad signature."""
    if not text.startswith(SECRET_PREFIX):
        raise BadSecret("a webhook secret starts with whsec_ followed by base64")
    try:
        raw = base64.b64decode(text[len(SECRET_PREFIX):], validate=True)
    except ValueError:
        raise BadSecret("a webhook secret is whsec_ followed by base64") from None
    if len(raw) < 24:
        raise BadSecret("a webhook secret holds at least 24 random bytes (32 are generated)")
    return text


def payload(event_type: str, created_at: datetime, data: Mapping[str, Any]) -> bytes:
    """The body: ``{type, timestamp, data}``, timestamp in ISO 8601 UTC."""
    stamp = created_at.astimezone(UTC).isoformat().replace("+00:00", "Z")
    document = {"type": event_type, "timestamp": stamp, "data": dict(data)}
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def headers(event_id: str, body: bytes, secrets: Sequence[str], now: datetime
            ) -> dict[str, str]:
    """The three Standard Webhooks headers for one attempt, signed with every secret."""
    if not secrets:
        raise BadSecret("an endpoint without a secret cannot sign")
    moment = now.astimezone(UTC).replace(microsecond=0)
    text = body.decode("utf-8")
    signatures = [Webhook(s).sign(msg_id=event_id, timestamp=moment, data=text)
                  for s in secrets]
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(int(moment.timestamp())),
        "webhook-signature": " ".join(signatures),
        "content-type": "application/json",
    }
