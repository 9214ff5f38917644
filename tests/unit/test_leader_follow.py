"""Which leader a member joins (actors/leases/follow.py, issue 22): pure decisions."""

from __future__ import annotations

from actors.leases.follow import STAY, Move, decide, first_leader
from actors.leases.leader import Published

LEADERS = ("10.0.0.1:19500", "10.0.0.2:19500")
A, B = LEADERS


RUN = ("host", 1)


def published(address: str, held: bool = True, pid: int = 1) -> Published:
    return Published(address, "host", pid, held)


def test_a_member_starts_with_the_first_leader() -> None:
    assert first_leader(LEADERS) == A


def test_it_moves_to_the_listed_leader_that_holds_the_lock() -> None:
    assert decide(LEADERS, A, published(B), RUN) == Move(to=B)
    assert decide(LEADERS, B, published(A), RUN) == Move(to=A)


def test_it_stays_with_the_leader_it_joined() -> None:
    assert decide(LEADERS, A, published(A), RUN) is STAY


def test_it_registers_again_with_a_leader_restarted_at_the_same_address() -> None:
    assert decide(LEADERS, A, published(A, pid=2), RUN) == Move(to=A)
    assert decide(LEADERS, A, published(A), None) == Move(to=A)  # run not known yet


def test_it_stays_without_an_answer_or_a_live_holder() -> None:
    assert decide(LEADERS, A, None, RUN) is STAY  # nobody published yet (or unknown)
    # B died: wait for a holder, whatever run was joined.
    assert decide(LEADERS, A, published(B, held=False), RUN) is STAY
    assert decide(LEADERS, A, published(A, held=False, pid=2), RUN) is STAY


def test_it_never_moves_to_an_address_its_operator_did_not_list() -> None:
    move = decide(LEADERS, A, published("10.9.9.9:19500"), RUN)
    assert move.to is None
    assert move.problem is not None and "10.9.9.9:19500" in move.problem
    assert "cluster.leaders" in move.problem
