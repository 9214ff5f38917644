"""wagate from Python with the ``gql`` client (``pip install "gql[requests]"``).

Checks the status, starts pairing if the account is not linked, polls until the QR
code was scanned, sends a notification, and shows how a refused send looks
(``extensions.code``). Configure it with environment variables:
  WAGATE_URL    the GraphQL endpoint (default http://127.0.0.1:8080/graphql)
  WAGATE_TOKEN  an API token (not needed by ``wagate serve --demo``)
  WAGATE_TO     the recipient, with its country code (default +14155552671)
  WAGATE_TEXT   the message (default "Your code is 123456")
  WAGATE_POLL_SECONDS, WAGATE_LINK_TIMEOUT_SECONDS  status polling (2 s, 180 s)
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from gql import Client, gql
from gql.transport.exceptions import TransportQueryError
from gql.transport.requests import RequestsHTTPTransport

CHECK_STATUS = gql("query CheckStatus { whatsAppStatus { connected state qrCodeSvg phoneNumber } }")
CONNECT = gql("mutation Connect { whatsAppConnect }")
SEND_MESSAGE = gql("""
    mutation SendMessage($phoneNumber: String!, $message: String!) {
      sendWhatsAppNotification(phoneNumber: $phoneNumber, message: $message)
    }""")


def make_client() -> Client:
    token = os.environ.get("WAGATE_TOKEN")
    transport = RequestsHTTPTransport(
        url=os.environ.get("WAGATE_URL", "http://127.0.0.1:8080/graphql"),
        headers={"Authorization": f"Bearer {token}"} if token else None,
        timeout=90,  # a send waits for WhatsApp's acknowledgement (messages.send_timeout)
        retries=0,   # never resend a notification on your own: use idempotencyKey for that
    )
    return Client(transport=transport)


def status(session: Any) -> dict[str, Any]:
    return session.execute(CHECK_STATUS)["whatsAppStatus"]


def ensure_linked(session: Any, poll: float, timeout: float) -> bool:
    """Connect and wait until the QR code was scanned; False when not in time."""
    if status(session)["connected"]:
        return True
    session.execute(CONNECT)
    # Right after whatsAppConnect the state may still be NEW or CONNECTING, without a
    # QR code: keep polling until it is QR_PENDING (show the code) and then CONNECTED.
    deadline = time.monotonic() + timeout
    shown = ""
    while time.monotonic() < deadline:
        current = status(session)
        if current["connected"]:
            return True
        if current["state"] != shown:
            shown = current["state"]
            print(f"state: {shown}", flush=True)
            if current["qrCodeSvg"]:
                print("scan the QR code (qrCodeSvg goes into <img src> as it is); it renews "
                      "itself, so show the latest one", flush=True)
        time.sleep(poll)
    return False


def send_message(session: Any, phone_number: str, message: str) -> bool:
    """Send one notification; a refusal is printed with its code and returns False."""
    try:
        answer = session.execute(SEND_MESSAGE, variable_values={
            "phoneNumber": phone_number, "message": message})
    except TransportQueryError as refused:
        for error in refused.errors or []:
            # RATE_LIMITED also carries extensions.retryAfterSeconds.
            code = (error.get("extensions") or {}).get("code")
            print(f"refused: {code}: {error.get('message')}", flush=True)
        return False
    return bool(answer["sendWhatsAppNotification"])


def main() -> int:
    poll = float(os.environ.get("WAGATE_POLL_SECONDS", "2"))
    timeout = float(os.environ.get("WAGATE_LINK_TIMEOUT_SECONDS", "180"))
    recipient = os.environ.get("WAGATE_TO", "+14155552671")
    text = os.environ.get("WAGATE_TEXT", "Your code is 123456")
    with make_client() as session:
        if not ensure_linked(session, poll, timeout):
            print("not linked in time: scan the QR code, then run this again")
            return 1
        print(f"connected as {status(session)['phoneNumber']}", flush=True)
        print(f"sent: {send_message(session, recipient, text)}", flush=True)
        # A number without its country code is refused at once, nothing is stored.
        print(f"sent: {send_message(session, '555 2671', text)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
