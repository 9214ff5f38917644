"""Message text never shows in the repr of what the actors pass around.

Thespian logs ``str()`` of a message whose handler raised, and of one it could not
deliver (an expired or failed transmit): whatever a message prints ends up in the
actor log. Message bodies (one-time codes) must not.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from thespian.actors import PoisonMessage

import actors.messages as messages
from actors.messages import Accepted, Deliver, DeliverBatch, MessagePage, Offer, Ok, SendText
from actors.outbox.store import MessageStore, NewMessage

SECRET = "Your code is 918273"


def test_no_message_that_carries_a_text_shows_it() -> None:
    send = SendText("default", "14155552671", SECRET, request_id="r1", idempotency_key="k")
    deliver = Deliver("m1", "14155552671", SECRET)
    carriers = [send, Offer(send, None), deliver, DeliverBatch((deliver,)),
                NewMessage("default", "14155552671", SECRET),
                PoisonMessage(send, "Traceback ...")]
    for message in carriers:
        assert SECRET not in repr(message) and SECRET not in str(message), message
    assert "14155552671" in repr(send) and "k" in repr(send)  # the rest still helps


def test_every_text_field_of_an_actor_message_is_left_out_of_its_repr() -> None:
    """Holds for messages added later too: a field named ``text`` is never shown."""
    text_fields = [(cls.__name__, f) for cls in vars(messages).values()
                   if dataclasses.is_dataclass(cls) for f in dataclasses.fields(cls)
                   if f.name == "text"]
    assert text_fields, "SendText and Deliver carry a text"
    assert all(not f.repr for _, f in text_fields), text_fields


def test_records_leave_the_outbox_without_their_text(tmp_path: Path) -> None:
    from actors.outbox.store import public_record

    store = MessageStore(tmp_path)
    record = store.add(NewMessage("default", "14155552671", SECRET), 1.0)
    store.close()
    public = public_record(record)
    assert "text" not in public and public["text_hash"] == record["text_hash"]
    replies = [Accepted(record["id"], "QUEUED", 1.0, record=public), Ok(public),
               MessagePage((public,), ("c",), False)]
    for reply in replies:
        assert SECRET not in repr(reply), reply
