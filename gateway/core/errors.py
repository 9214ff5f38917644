"""One error tree, and the one table of the codes a client sees.

Every exception wagate raises on purpose derives from ``WagateError``, so
``except WagateError`` catches every error of ours and nothing of a library's (a
class that code also catches by a builtin base, ``ValueError`` say, keeps that base
next to this one).

An error carries a stable upper-case ``code``. Only a *public* error
(``GatewayError``, and ``gateway.core.validation.ValidationError``) reaches a client
with its own code and message: its code is one of ``CODES``, the API's
``extensions.code`` table. Any other error of ours that escapes to a client is, as
far as the client is concerned, a bug: it sees ``INTERNAL`` and a request id, never
the internal message (``gateway.api.errors.format_error``). The codes of non-public
errors (``ENGINE_UNAVAILABLE`` ...) are for logs and a session's ``lastError``.

``CODES`` is the source of the README's error table (a test compares the two row by
row, and the schema's list of codes) so the three cannot drift apart.

Pure: imports nothing of ours.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar


@dataclass(frozen=True, slots=True)
class ErrorCode:
    """One row of the API's error table (README, "Error codes").

    ``when`` says what happened, ``action`` what the client does about it,
    ``extensions`` which extra ``extensions`` keys the error may carry. ``graphql`` is
    False for a code only an HTTP answer outside GraphQL carries (``NOT_FOUND``).
    """

    code: str
    when: str
    action: str
    extensions: tuple[str, ...] = ()
    graphql: bool = True

    def markdown_row(self) -> str:
        """This code's row of the README's table (markdown)."""
        extensions = ", ".join(f"`{key}`" for key in self.extensions)
        return f"| `{self.code}` | {self.when} | {self.action} | {extensions} |"


# The order is the README's: input, connection, delivery, sessions, the gateway, access.
CODES: tuple[ErrorCode, ...] = (
    ErrorCode(
        "INVALID_NUMBER",
        "the phone number is not a valid international number: without a country code "
        "the message says to add one; with one, that the digits are not a valid number "
        "for that country (e.g. `+44 7700 900123`, a range reserved for fiction), with "
        "what a mobile number there looks like",
        "correct the number (international form, with the country code) and send again",
        ("field",)),
    ErrorCode(
        "INVALID_MESSAGE",
        "empty, whitespace only, longer than `messages.max_length`, or a NUL character; "
        "also an `idempotencyKey` of more than 128 characters, or `validForSeconds` "
        "outside 1 to 2147483647",
        "correct the field the error names and send again",
        ("field",)),
    ErrorCode(
        "INVALID_MEDIA",
        "`sendWhatsAppMedia`'s file does not fit: its type (read from its bytes) does not "
        "fit `kind` (`reason: TYPE_MISMATCH`, with the `mime` found), it is larger than "
        "the kind's `media.max_<kind>_mb` (`TOO_LARGE`, `limit` in bytes), it is empty "
        "or unreadable (`UNREADABLE`), or its `url` could not be fetched (`FETCH_FAILED`, "
        "the message says why); nothing was stored or sent",
        "send a file that fits the kind (any file may be a `DOCUMENT`), a smaller one, or "
        "a url the gateway may reach",
        ("reason", "limit", "mime")),
    ErrorCode(
        "INVALID_SESSION",
        "a session name with characters other than letters, digits, `_`, `-` (max 64)",
        "use a name of letters, digits, `_` and `-`, at most 64 characters",
        ("field",)),
    ErrorCode(
        "NOT_CONNECTED",
        "the session was never linked, is pairing, logged out, failed, or (for "
        "`testWhatsAppConnection`) not live right now; for a `FAILED` session the message "
        "says why it gave up (its `lastError`) and `reason` is that error's code",
        "link the session (`whatsAppConnect`, then scan) or wait until it is `CONNECTED`; "
        "for a `FAILED` one fix `reason` first",
        ("state", "session", "reason")),
    ErrorCode(
        "QR_EXPIRED",
        "the session's pairing window closed before a scan",
        "call `whatsAppConnect` for a new code",
        ("state", "session")),
    ErrorCode(
        "RATE_LIMITED",
        "a rate limit is reached (`scope`: `recipient_minute`, `recipient_hour`, "
        "`global_day`; for `whatsAppCheckNumbers`: `lookup_minute`, `lookup_day`), a newly "
        "linked device's warm-up cap is reached (`scope`: `warmup_day`, see "
        "[below](#how-wagate-keeps-an-account-looking-like-a-person)), or the session's "
        "queue is full (`reason: QUEUE_FULL`); the request used no quota. For "
        "`testWhatsAppConnection` also: WhatsApp rate-limits the account's lookups "
        "(`reason: RATE_OVERLIMIT`, `scope: whatsapp`); the test message was not sent",
        "retry after `retryAfterSeconds`; nothing was sent",
        ("retryAfterSeconds", "scope", "reason")),
    ErrorCode(
        "SEND_FAILED",
        "WhatsApp rejected the message (`reason`: `REJECTED`, `REACHOUT_TIMELOCK`), it "
        "gave up after `delivery.max_attempts`, or its outcome is unknown and it is not "
        "sent again (`AMBIGUOUS`, `UNCERTAIN`, `TRANSPORT_ERROR` with `on_uncertain = "
        "\"fail\"` or out of attempts; `uncertain: true`: it may have arrived), or its "
        "device is gone (`SESSION_LOGGED_OUT`, `SESSION_FORGOTTEN`, `ACCOUNT_CHANGED`: it "
        "was not sent)",
        "with `uncertain: true` it may have arrived: do not simply send it again; "
        "otherwise fix what `reason` names, or use another channel",
        ("reason", "messageId", "uncertain")),
    ErrorCode(
        "SEND_UNCONFIRMED",
        "WhatsApp has not confirmed the message within `messages.send_timeout_seconds` "
        "(`reason: ACK_TIMEOUT`), or the gateway failed after storing it "
        "(`GATEWAY_ERROR`): it is stored and still sent",
        "do not send it again; follow `messageId` (`whatsAppMessage`)",
        ("reason", "messageId", "state", "uncertain")),
    ErrorCode(
        "NOT_ON_WHATSAPP",
        "the recipient has no WhatsApp account: a lookup said so (cached up to "
        "`numbers.negative_ttl_hours`; nothing was stored or sent), or WhatsApp said so "
        "when the message was sent (`reason: NOT_ON_WHATSAPP`, the message is `FAILED` "
        "and the number is cached as such)",
        "fall back to SMS or another channel",
        ("phoneNumber", "checkedAt", "messageId", "reason")),
    ErrorCode(
        "IDEMPOTENCY_KEY_REUSED",
        "this token already used the `idempotencyKey` on this session for another "
        "recipient or text; nothing was sent",
        "use a new key",
        ("field", "messageId")),
    ErrorCode(
        "SESSION_LIMIT",
        "`whatsAppConnect` for a new session while `max_sessions` sessions run, or while "
        "the gateway knows `max_sessions` sessions that all hold a linked device or run",
        "log out a session you no longer need (`whatsAppDisconnect`), whose place a new "
        "one then takes, or raise `max_sessions`",
        ("limit",)),
    ErrorCode(
        "UNKNOWN_SESSION",
        "`whatsAppDisconnect` or `whatsAppForgetSession` for a name the gateway does not "
        "know",
        "use a name `whatsAppSessions` lists",
        ("session",)),
    ErrorCode(
        "SESSION_IN_USE",
        "`whatsAppForgetSession` for a session that runs or has a linked device, or "
        "whose files could not be deleted",
        "log it out with `whatsAppDisconnect` first, then forget it; for files, fix the "
        "permissions of its directory and try again",
        ("state", "session")),
    ErrorCode(
        "WEBHOOK_NOT_FOUND",
        "a webhook operation named an id no webhook has (deleted, or never created)",
        "use an id the `webhooks` query lists",
        ()),
    ErrorCode(
        "WEBHOOK_INVALID",
        "`createWebhook` or `updateWebhook` with a url that is not https (or plain http, "
        "or a non-public address, for a host not in `webhooks.allow_insecure`), with "
        "credentials in it, or malformed; more than 100 event types or sessions, or a "
        "description over 200 characters; `replayWebhooks` with both or neither of "
        "`after` and `since`, or an `after` below 0 or past the event log's current end "
        "(named in the message)",
        "use an https url of a public host (the operator allowlists a private receiver "
        "in `webhooks.allow_insecure`), and correct the argument the message names",
        ()),
    ErrorCode(
        "UNAVAILABLE",
        "the actor system does not answer (starting, stopping, failed, or out of reach "
        "of this host); a send answered so was never handed to the message store. With "
        "`reason: DISK_FULL`: the file system of `data_dir` has less free space than "
        "`storage.min_free_mb` (or a write found it full); the message was not accepted. "
        "A webhook change whose write finds the disk full is refused the same way, "
        "nothing changed. With `reason: RATE_STATE_UNAVAILABLE` (several hosts with "
        "`cluster.database_url`): the leader could not read or write the rate limits in "
        "the database within 1 s; nothing was stored or sent, and no quota used. With "
        "`reason: STORE_UNAVAILABLE` (several hosts with `cluster.database_url`): the "
        "message store in the database did not answer; nothing was stored. A webhook "
        "operation refused so may or may not have been made: check with the `webhooks` "
        "query before you repeat a `createWebhook`. With "
        "`reason: LEADER_STANDBY` (several hosts with `cluster.database_url`): this leader "
        "is a standby (another leader holds the leadership lock, or this one lost it and "
        "stepped down); nothing was stored or read",
        "retry in a few seconds (`LEADER_STANDBY`: send through the active leader's API, "
        "or a member's, which follows it; `DISK_FULL`: after `retryAfterSeconds`, sends "
        "and changes resume by themselves once the operator frees disk space); if it "
        "lasts, the operator checks `wagate status` and the logs",
        ("reason", "retryAfterSeconds")),
    ErrorCode(
        "UNCERTAIN",
        "a send did not get its answer in time (`actors.ask_timeout_seconds` plus "
        "`messages.send_timeout_seconds`) after it was handed to the message store: it "
        "may have been accepted and sent, or not (a partition between hosts, an "
        "overloaded gateway). `idempotencyKey` is the send's key: the caller's, or one "
        "the gateway made (`auto-...`) when the caller gave none",
        "do not send blindly again: look the message up with `whatsAppMessageByKey` "
        "(`idempotencyKey`, `session`), or send again with the same `idempotencyKey`, "
        "which never sends it twice",
        ("idempotencyKey", "session")),
    ErrorCode(
        "INTERNAL",
        "a bug: the message is masked",
        "report `requestId` to the operator, who finds the error in the logs by it",
        ("requestId",)),
    ErrorCode(
        "GRAPHQL_VALIDATION_FAILED",
        "the query itself is malformed, asks for unknown fields or nests too deeply; an "
        "argument out of range (`first`: 1 to 200); a body that is not JSON, or holds an "
        "unpaired UTF-16 surrogate (`\"\\ud800\"`, not text)",
        "correct the query, the argument (`field`) or the body as the message says",
        ("field",)),
    ErrorCode(
        "PAIRING_FAILED",
        "WhatsApp did not issue a pairing code",
        "try `whatsAppRequestPairingCode` again later, or link by QR code",
        ("reason",)),
    ErrorCode(
        "UNAUTHENTICATED",
        "no, a malformed, unknown, expired or revoked API token (HTTP 401)",
        "send a valid token: `Authorization: Bearer <token>`",
        ()),
    ErrorCode(
        "FORBIDDEN",
        "the token's role may not do this, or not on this session, or not from this "
        "address; or a browser request from another site's page, or for a host name the "
        "gateway does not answer to ([Browsers](#browsers-host-and-origin)) (HTTP 403, or "
        "200 with the error inside a GraphQL answer)",
        "use a token whose role and sessions allow it, from an allowed network; list a "
        "browser's host or origin in `http.allowed_hosts` / `http.allowed_origins`",
        ()),
    ErrorCode(
        "NOT_FOUND",
        "an HTTP path that does not exist (HTTP 404)",
        "POST queries to `/graphql`",
        (),
        graphql=False),
)

TABLE: Mapping[str, ErrorCode] = MappingProxyType({row.code: row for row in CODES})
ERROR_CODES: frozenset[str] = frozenset(TABLE)
# The codes a GraphQL answer can carry (the schema's description lists them).
GRAPHQL_CODES: frozenset[str] = frozenset(row.code for row in CODES if row.graphql)
README_HEADER = ("| code | when | what to do | extensions |\n"
                 "| --- | --- | --- | --- |")


def markdown_table() -> str:
    """The README's error table, header included: what a test compares it with."""
    return "\n".join([README_HEADER, *(row.markdown_row() for row in CODES)])


class WagateError(Exception):
    """The base of every error of ours.

    ``code`` is a stable upper-case token. ``public`` errors reach a client with their
    code (one of ``ERROR_CODES``), message and ``extensions``; every other one is
    masked as ``INTERNAL``, which is also the default code, as it is what a client sees
    of such an error. No ``__init__`` here: the subclasses keep their own arguments
    (and how they pickle).
    """

    code: str = "INTERNAL"
    public: ClassVar[bool] = False
    extensions: Mapping[str, Any] = MappingProxyType({})


class GatewayError(WagateError):
    """A refusal or failure a client is told about: ``code`` from ``ERROR_CODES``, a
    message that says what to do, and extra ``extensions`` keys."""

    public = True

    def __init__(self, code: str, message: str, **extensions: Any) -> None:
        super().__init__(message)
        assert code in ERROR_CODES, code
        self.code = code
        self.message = message
        self.extensions = extensions
