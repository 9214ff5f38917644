"""The webhook operations of the API (admin only), bound to the schema's ``webhooks``
query and its webhook mutations. Each one is a ``WebhookCommand`` the supervisor hands
to the webhook actor (``actors.webhooks.commands`` does the work); every mutation is
recorded in the audit log with its outcome, never with a secret.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from ariadne import MutationType, QueryType
from graphql import GraphQLResolveInfo

from actors.messages import WebhookCommand
from gateway.api.context import authorize, request_context
from gateway.api.errors import GatewayError
from gateway.api.records import (
    WebhookRecord,
    WebhookTestRecord,
    WebhookWithSecretRecord,
    webhook_record,
    webhook_test_record,
    webhook_with_secret_record,
)

ADMIN = "admin"
webhook_query = QueryType()
webhook_mutation = MutationType()


def _command(info: GraphQLResolveInfo, op: str, **args: Any) -> Any:
    context = request_context(info)
    return context.bridge.ask(WebhookCommand(op, args, context.request_id or ""),
                              context.config.webhooks.timeout_seconds
                              + context.config.actors.ask_timeout_seconds)


def audited(resolver: Callable[..., Any]) -> Callable[..., Any]:
    """Admin only; the mutation, its webhook id and its outcome go to the audit log."""
    @functools.wraps(resolver)
    def guarded(obj: Any, info: GraphQLResolveInfo, **kwargs: Any) -> Any:
        outcome, result = "ok", None
        try:
            authorize(info, ADMIN)
            result = resolver(obj, info, **kwargs)
            return result
        except GatewayError as exc:
            outcome = exc.code
            raise
        except Exception:
            outcome = "INTERNAL"
            raise
        finally:
            context = request_context(info)
            webhook = kwargs.get("id") or _created_id(result)
            context.audit("webhook.changed", operation=info.field_name,
                          actor=context.principal.name, role=context.principal.role,
                          ip=context.client_ip, webhook=webhook, outcome=outcome)
    return guarded


def _created_id(result: Any) -> str | None:
    return result.webhook.id if isinstance(result, WebhookWithSecretRecord) else None


@webhook_query.field("webhooks")
def resolve_webhooks(_: Any, info: GraphQLResolveInfo) -> list[WebhookRecord]:
    authorize(info, ADMIN)
    return [webhook_record(w) for w in _command(info, "list")]


@webhook_mutation.field("createWebhook")
@audited
def resolve_create(_: Any, info: GraphQLResolveInfo, url: str, events: list[str],
                   sessions: list[str], description: str) -> WebhookWithSecretRecord:
    return webhook_with_secret_record(_command(
        info, "create", url=url, events=events, sessions=sessions, description=description))


@webhook_mutation.field("updateWebhook")
@audited
def resolve_update(_: Any, info: GraphQLResolveInfo, id: str, **changes: Any
                   ) -> WebhookRecord:
    return webhook_record(_command(info, "update", id=id, **changes))


@webhook_mutation.field("rotateWebhookSecret")
@audited
def resolve_rotate(_: Any, info: GraphQLResolveInfo, id: str) -> WebhookWithSecretRecord:
    return webhook_with_secret_record(_command(info, "rotate", id=id))


@webhook_mutation.field("deleteWebhook")
@audited
def resolve_delete(_: Any, info: GraphQLResolveInfo, id: str) -> bool:
    return bool(_command(info, "delete", id=id))


@webhook_mutation.field("sendTestWebhook")
@audited
def resolve_test(_: Any, info: GraphQLResolveInfo, id: str) -> WebhookTestRecord:
    return webhook_test_record(_command(info, "test", id=id))


@webhook_mutation.field("replayWebhooks")
@audited
def resolve_replay(_: Any, info: GraphQLResolveInfo, id: str, after: int | None = None,
                   since: str | None = None) -> WebhookRecord:
    return webhook_record(_command(info, "replay", id=id, after=after, since=_since(since)))


def _since(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise GatewayError("WEBHOOK_INVALID", f"since ({text[:40]!r}) must be an ISO 8601 "
                           "time such as 2026-01-31T12:00:00Z") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


WEBHOOK_BINDABLES = (webhook_query, webhook_mutation)
