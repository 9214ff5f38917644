"""Packet loss and delay in user space, for kernels built without ``sch_netem``.

Run inside a host's network namespace by ``tests/netns.py`` (``Topology.degrade``):
``python -m tests.netem DEVICE LOSS DELAY MARK``. It creates the TUN device DEVICE
(the routes to the other hosts then point at it), prints ``ready``, and for every
packet the kernel routes there: drops it with probability LOSS, else sends it on
DELAY seconds later through a raw IP socket carrying MARK, which a policy rule routes
out of the host's veth. Nothing is changed in the packets; TCP sees a lossy, slow
link exactly as with netem. The device disappears when this process ends (it is not
persistent), and the routes through it with it.
"""

from __future__ import annotations

import contextlib
import fcntl
import heapq
import os
import random
import select
import socket
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
SO_MARK = 36


def main(device: str, loss: float, delay: float, mark: int) -> None:
    tun = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(tun, TUNSETIFF, struct.pack("16sH", device.encode(), IFF_TUN | IFF_NO_PI))
    out = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    out.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
    print("ready", flush=True)
    held: list[tuple[float, int, bytes]] = []  # (due, arrival order, packet)
    count = 0
    chance = random.Random()
    while True:
        wait = max(0.0, held[0][0] - time.monotonic()) if held else None
        readable, _, _ = select.select([tun], [], [], wait)
        if readable:
            packet = os.read(tun, 65536)
            if len(packet) >= 20 and packet[0] >> 4 == 4 and chance.random() >= loss:
                count += 1
                heapq.heappush(held, (time.monotonic() + delay, count, packet))
        now = time.monotonic()
        while held and held[0][0] <= now:
            _, _, packet = heapq.heappop(held)
            # A full buffer or an unreachable host: lost, as on a real link.
            with contextlib.suppress(OSError):
                out.sendto(packet, (socket.inet_ntoa(packet[16:20]), 0))


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]))
