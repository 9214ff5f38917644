"""What a host tells the others about itself: which wagate it runs, never a credential."""

from __future__ import annotations

import pickle
from dataclasses import dataclass

from actors import protocol
from actors.system import HOST_CAPABILITY, gateway_capabilities, on_required_host
from gateway.core.config import KEPT_AT_HOME, load_config, without_credentials

SECRET = "planted-secret-value"
CREDENTIALS = {"transport.proxy": f"socks5://user:{SECRET}@10.0.0.9:1080",
               "transport.session_store": f"postgresql://user:{SECRET}@10.0.0.9/w_{{session}}"}
LEASE_DB = {"cluster.database_url": f"postgresql://wagate:{SECRET}@10.0.0.5/wagate"}
CLUSTER = {"cluster.role": "member", "cluster.advertise_address": "10.0.0.2",
           "cluster.leaders": ["10.0.0.1:19500"], "cluster.allow_networks": ["10.0.0.1/32"],
           "cluster.host_name": "beta"}


def test_the_protocol_number_moves_with_the_layout_of_the_pickled_classes() -> None:
    assert protocol.layout_of() == protocol.LAYOUT, (
        "a class that crosses hosts changed shape (actors.protocol.PICKLED_MODULES): raise "
        "PROTOCOL and set LAYOUT to the new value, so hosts of both versions refuse each "
        f"other by number: LAYOUT = \"{protocol.layout_of()}\"")


def test_a_field_inserted_in_a_message_changes_its_layout() -> None:
    @dataclass(frozen=True, slots=True)
    class Before:
        limit: int
        used: int

    @dataclass(frozen=True, slots=True)
    class After:
        limit: int
        extra: int
        used: int

    before, after = protocol.describe_class(Before), protocol.describe_class(After)
    assert before is not None and after is not None
    assert before.replace("Before", "X") != after.replace("After", "X")


def test_hosts_differing_in_any_identity_key_do_not_match() -> None:
    ours = protocol.identity()
    assert protocol.incompatibility(dict(ours)) is None
    for key, other in ((protocol.VERSION_CAPABILITY, "9.9.9"),
                       (protocol.PROTOCOL_CAPABILITY, ours[protocol.PROTOCOL_CAPABILITY] + 1),
                       (protocol.LAYOUT_CAPABILITY, "0" * 16),
                       (protocol.PYTHON_CAPABILITY, "3.99")):
        problem = protocol.incompatibility({**ours, key: other})
        assert problem is not None and str(other) in problem, (key, problem)
    assert "advertises no version" in (protocol.incompatibility({"wagate_host": "x"}) or "")
    huge = protocol.incompatibility({**ours, protocol.VERSION_CAPABILITY: "9" * 100_000})
    assert huge is not None and len(huge) < 400  # another host's value, cut short
    partial = {k: v for k, v in ours.items() if k != protocol.LAYOUT_CAPABILITY}
    assert protocol.incompatibility(partial) is not None


def test_placement_never_chooses_a_host_of_another_wagate() -> None:
    caps = {**protocol.identity(), HOST_CAPABILITY: "beta"}
    assert on_required_host(caps, {HOST_CAPABILITY: "beta"})
    assert on_required_host(caps, None)
    other = {**caps, protocol.PROTOCOL_CAPABILITY: protocol.PROTOCOL + 1}
    assert not on_required_host(other, {HOST_CAPABILITY: "beta"})
    assert not on_required_host(other, None)
    assert not on_required_host({HOST_CAPABILITY: "beta"}, {HOST_CAPABILITY: "beta"})


def test_capabilities_carry_what_placement_needs_and_no_credential() -> None:
    caps = gateway_capabilities(load_config(None, {**CLUSTER, **CREDENTIALS}))
    assert SECRET not in repr(caps)
    assert caps[HOST_CAPABILITY] == "beta"
    assert all(caps[key] == value for key, value in protocol.identity().items())
    plain = (str, int, float, bool)
    assert all(isinstance(v, plain) or (isinstance(v, list) and all(isinstance(i, str)
                                                                    for i in v))
               for v in caps.values()), caps


def test_credentials_never_appear_in_a_repr_nor_leave_their_host() -> None:
    config = load_config(None, CREDENTIALS)
    assert SECRET not in repr(config)
    elsewhere = without_credentials(config)
    assert SECRET.encode() not in pickle.dumps(elsewhere)  # what StartSession carries
    assert (elsewhere.transport.proxy, elsewhere.transport.session_store) == (
        KEPT_AT_HOME, KEPT_AT_HOME)
    assert without_credentials(load_config()) == load_config()  # unset stays unset


def test_the_lease_database_url_never_shows_nor_leaves_its_host() -> None:
    config = load_config(None, {**CLUSTER, **LEASE_DB})
    assert SECRET not in repr(config)
    assert SECRET not in repr(gateway_capabilities(config))
    elsewhere = without_credentials(config)
    assert SECRET.encode() not in pickle.dumps(elsewhere)
    assert elsewhere.cluster.database_url == KEPT_AT_HOME


def test_with_leases_a_member_is_in_one_convention_and_a_leader_leads_its_own() -> None:
    """Issue 22 item 2: one convention per leader; a member joins one address, the lock
    holder's when it is listed (gateway/cli/leader_follow.py), else the first."""
    two = {**CLUSTER, **LEASE_DB, "cluster.leaders": ["10.0.0.1:19500", "10.0.0.3:19500"]}
    member = load_config(None, two)
    assert gateway_capabilities(member)["Convention Address.IPv4"] == "10.0.0.1:19500"
    assert gateway_capabilities(member, "10.0.0.3:19500")["Convention Address.IPv4"] == (
        "10.0.0.3:19500")
    assert gateway_capabilities(member, "10.9.9.9:19500")["Convention Address.IPv4"] == (
        "10.0.0.1:19500")  # never an address the operator did not list
    leader = load_config(None, {**two, "cluster.role": "leader"})
    own = f"10.0.0.2:{leader.actors.admin_port}"
    assert gateway_capabilities(leader)["Convention Address.IPv4"] == own
    without = load_config(None, {**CLUSTER, "cluster.leaders": ["10.0.0.1:19500",
                                                                "10.0.0.3:19500"]})
    assert gateway_capabilities(without)["Convention Address.IPv4"] == [
        "10.0.0.1:19500", "10.0.0.3:19500"]  # unchanged without leases
