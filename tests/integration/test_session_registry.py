"""The sessions a gateway remembers stay bounded: unknown names are refused, at most
``sessions.max_sessions`` are known (across restarts too), and an operator can forget
one for good, over real HTTP against real processes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import diskcache

from gateway.core.disk_caches import PAGE_CACHE_PAGES
from tests.integration.harness import Gateway, expect_error, wait_for

SESSIONS = "{ whatsAppSessions { session state } }"
FORGET = "mutation($s: String!) { whatsAppForgetSession(session: $s) }"
MESSAGE = ("mutation($input: SendWhatsAppMessageInput!) { sendWhatsAppMessage(input: $input) "
           "{ id state } }")
GET_MESSAGE = "query($id: ID!) { whatsAppMessage(id: $id) { state reason error } }"


def known(gw: Gateway) -> list[str]:
    result = gw.gql(SESSIONS)
    assert not result.errors, result
    return [s["session"] for s in result.data["whatsAppSessions"]]


def forget(gw: Gateway, session: str) -> Any:
    return gw.gql(FORGET, {"s": session})


def registry(gw: Gateway) -> dict[str, Any]:
    """The supervisor's registry on disk (read with the gateway stopped)."""
    with diskcache.Cache(str(gw.data_dir / "state")) as cache:
        return dict(cache.get("sessions", {}))


def test_unknown_session_names_are_refused_and_never_remembered(
        make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway().start()
    gw.link()
    for i in range(8):
        for keep in (True, False):
            error = expect_error(gw.disconnect(f"junk{i}", keep_session=keep),
                                 "UNKNOWN_SESSION", f"junk{i}", "whatsAppSessions")
            assert error["extensions"]["session"] == f"junk{i}"
    expect_error(forget(gw, "junk0"), "UNKNOWN_SESSION", "junk0")
    assert known(gw) == ["default"]
    gw.stop()
    assert set(registry(gw)) == {"default"}
    # The supervisor opened its store like every store of ours (gateway.core.disk_caches):
    # diskcache keeps the settings in the store, so a plain open reads them back.
    with diskcache.Cache(str(gw.data_dir / "state")) as cache:
        assert (cache.sqlite_cache_size, cache.sqlite_mmap_size) == (PAGE_CACHE_PAGES, 0)
    gw.start()
    assert known(gw) == ["default"]


def test_connecting_and_logging_out_new_names_never_grows_the_registry(
        make_gateway: Callable[..., Gateway]) -> None:
    """Each new name takes the place of one that holds nothing (logged out, never
    linked): with max_sessions = 2 the gateway never knows more than two."""
    gw = make_gateway({"sessions": {"max_sessions": 2}}).start()
    gw.link("keep")
    for i in range(4):
        name = f"passing{i}"
        wait_for(lambda name=name: not gw.connect(name).errors, 20,
                 message=f"{name} to get a slot")
        gw.wait_state("QR_PENDING", name)
        assert gw.disconnect(name).data == {"whatsAppDisconnect": True}
        gw.wait_state("LOGGED_OUT", name)
        assert len(known(gw)) <= 2
    assert known(gw) == ["keep", "passing3"]
    # Both places hold something now (a linked device that is stopped, a session that
    # is pairing): a third name is refused, though a connection slot is free.
    wait_for(lambda: not gw.connect("passing4").errors, 20, message="a slot for passing4")
    gw.wait_state("QR_PENDING", "passing4")
    gw.disconnect("keep", keep_session=True)
    gw.wait_state("DISCONNECTED", "keep")

    def refused_for_the_registry() -> bool:
        result = gw.connect("another")
        return "whatsAppForgetSession" in (result.errors[0]["message"] if result.errors else "")

    wait_for(refused_for_the_registry, 20, message="a refusal naming whatsAppForgetSession")
    expect_error(gw.connect("another"), "SESSION_LIMIT", "whatsAppForgetSession")
    assert known(gw) == ["keep", "passing4"]
    gw.stop()
    assert set(registry(gw)) == {"keep", "passing4"}


def test_a_registry_that_grew_too_large_is_trimmed_at_start(
        make_gateway: Callable[..., Gateway]) -> None:
    """An older wagate let any name into the registry: at start the sessions that
    hold nothing go until at most max_sessions remain; linked ones stay."""
    gw = make_gateway({"sessions": {"max_sessions": 3}}).start()
    gw.link()
    gw.stop()
    with diskcache.Cache(str(gw.data_dir / "state")) as cache:
        sessions = dict(cache.get("sessions", {}))
        for i in range(20):
            sessions[f"junk{i}"] = {"want": "disconnected", "paired": False, "phone": None,
                                    "state": "NEW"}
        cache.set("sessions", sessions)
    gw.start()
    names = known(gw)
    assert len(names) == 3 and "default" in names, names
    gw.wait_state("CONNECTED")
    gw.stop()
    assert len(registry(gw)) == 3


def test_a_session_can_be_forgotten_for_good_once_it_holds_nothing(
        make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway().start()
    gw.link("s1")
    expect_error(forget(gw, "s1"), "SESSION_IN_USE", "running", "whatsAppDisconnect")
    gw.disconnect("s1", keep_session=True)
    gw.wait_state("DISCONNECTED", "s1")
    # The state shows DISCONNECTED while the session's process may still be exiting
    # (refused as running); once it has exited, the refusal is the linked device.
    refused = wait_for(lambda: "linked device" in (r := forget(gw, "s1")).error["message"]
                       and r, 20, message="s1's process to exit")
    error = expect_error(refused, "SESSION_IN_USE", "linked device", "whatsAppDisconnect")
    assert error["extensions"]["session"] == "s1"
    assert gw.credentials_path("s1").is_file()

    assert gw.disconnect("s1").data == {"whatsAppDisconnect": True}  # log out
    gw.wait_state("LOGGED_OUT", "s1")
    wait_for(lambda: forget(gw, "s1").data == {"whatsAppForgetSession": True}, 20,
             message="s1 to be forgettable once its process exited")
    assert "s1" not in known(gw)
    assert gw.status("s1")["state"] == "NEW"
    assert not (gw.data_dir / "sessions" / "s1").exists()
    expect_error(forget(gw, "s1"), "UNKNOWN_SESSION", "s1")
    gw.stop()
    assert "s1" not in registry(gw)
    gw.start()
    assert "s1" not in known(gw)


def test_messages_of_a_session_nobody_knows_any_more_fail_at_start(
        make_gateway: Callable[..., Gateway]) -> None:
    """A queue outlives nothing: messages waiting for a session whose registry entry is
    gone (forgotten while the outbox was down) fail, SESSION_FORGOTTEN, at start."""
    gw = make_gateway({"reconnect": {"attempts": 5, "delay_seconds": 30.0,
                                     "first_delay_seconds": 30.0}}).start()
    gw.link()
    gw.sim("drop", "--down-for", "120")
    gw.wait_state("RECONNECTING", timeout=10)
    result = gw.gql(MESSAGE, {"input": {"phoneNumber": "+14155552671", "message": "orphan"}})
    assert not result.errors, result
    message_id = result.data["sendWhatsAppMessage"]["id"]
    gw.stop()
    with diskcache.Cache(str(gw.data_dir / "state")) as cache:
        cache.set("sessions", {})
    gw.start()
    record = wait_for(lambda: (r := gw.gql(GET_MESSAGE, {"id": message_id})
                               .data["whatsAppMessage"])["state"] == "FAILED" and r, 20,
                      message="the orphaned message to fail")
    assert record["reason"] == "SESSION_FORGOTTEN" and "whatsAppForgetSession" in record["error"]
    assert gw.health()["queue"]["depth"] == 0
