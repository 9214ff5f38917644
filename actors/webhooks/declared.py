"""Endpoints declared in the config file (``[[webhooks.endpoints]]``) kept in the store.

A declared endpoint's id is derived from its url (``cfg_`` + a hash), so a restart finds
the same row, with its cursor and state: the file changes the url's filters, its
description and its secret (read from the variable ``secret_env`` names), never where
it stands in the log. A declared endpoint that left the file is removed. Endpoints
created through the API are not touched. Pure, over the store.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

from actors.webhooks.signing import BadSecret, check_secret
from actors.webhooks.store import EndpointStore
from gateway.core.config import WebhookEndpointConfig
from gateway.core.urls import loggable_url

CONFIG_ORIGIN = "config"


def declared_id(url: str) -> str:
    return "cfg_" + hashlib.sha256(url.encode("utf-8")).hexdigest()[:24]


def sync_declared(store: EndpointStore, declared: Sequence[WebhookEndpointConfig],
                  environ: Mapping[str, str], now: float, head: int) -> list[str]:
    """Bring the store's declared endpoints in line with the file; a new one starts at
    ``head`` (the log's current end). Returns the problems (an endpoint whose secret
    variable is unset or malformed is skipped, named, never with the secret)."""
    problems: list[str] = []
    wanted: set[str] = set()
    for item in declared:
        endpoint_id = declared_id(item.url)
        wanted.add(endpoint_id)
        try:
            secret = check_secret(environ.get(item.secret_env, "").strip())
        except BadSecret as exc:
            problems.append(f"webhook {loggable_url(item.url)}: the variable "
                            f"{item.secret_env} does not hold its secret ({exc}); the "
                            "endpoint is not delivered to")
            continue
        if endpoint_id not in {e.id for e in store.all()}:
            store.create(item.url, item.events, item.sessions, item.description, secret,
                         now, cursor=head, endpoint_id=endpoint_id, origin=CONFIG_ORIGIN)
            continue
        store.update(endpoint_id, events=item.events, sessions=item.sessions,
                     description=item.description)
        if store.secrets(endpoint_id, now)[0] != secret:
            store.rotate(endpoint_id, secret, now, overlap=0.0)
    for endpoint in store.all():
        if endpoint.origin == CONFIG_ORIGIN and endpoint.id not in wanted:
            store.delete(endpoint.id)
    return problems
