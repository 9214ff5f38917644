"""Whose process listens on a port (gateway/cli/listeners.py), from /proc/net/tcp texts."""

from __future__ import annotations

import os
import socket

from gateway.cli.listeners import foreign_listener, listener_uids

HEADER = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
          "timeout inode\n")
TCP = HEADER + "\n".join((
    # 127.0.0.1:1900 listening, uid 1001; 0.0.0.0:2000 listening, uid 0;
    # 127.0.0.1:1900 established (not a listener), uid 0.
    "   0: 0100007F:076C 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1001 0 1",
    "   1: 00000000:07D0 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0 0 2",
    "   2: 0100007F:076C 0100007F:A000 01 00000000:00000000 00:00000000 00000000     0 0 3",
    "   3: garbage",
))
TCP6 = HEADER + (
    # ::ffff:127.0.0.1:3000 listening, uid 1002
    "   0: 0000000000000000FFFF00000100007F:0BB8 00000000000000000000000000000000:0000 0A "
    "00000000:00000000 00:00000000 00000000  1002 0 4\n")


def test_the_listeners_uid_is_read_by_address_and_port() -> None:
    assert listener_uids(1900, "127.0.0.1", [TCP, TCP6]) == {1001}
    assert listener_uids(1900, "127.0.0.2", [TCP, TCP6]) == set()
    assert listener_uids(2000, "127.0.0.1", [TCP]) == {0}  # listens on every address
    assert listener_uids(3000, "127.0.0.1", [TCP, TCP6]) == {1002}
    assert listener_uids(4000, "127.0.0.1", [TCP, TCP6]) == set()
    assert listener_uids(1900, "not-an-address", [TCP]) == set()


def test_a_listener_of_this_user_is_not_foreign() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert foreign_listener(port, "127.0.0.1", os.geteuid()) is None
        assert foreign_listener(port, "127.0.0.1", os.geteuid() + 1) == os.geteuid()
