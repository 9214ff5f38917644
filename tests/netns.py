"""Several hosts on one machine, each in its own network namespace (issue 16, part 1).

The partition tests need faults that only a network can make: a link cut between two
hosts while both still reach the database, a host cut from everything, packet loss and
delay. A ``Topology`` made by the test builds them with iproute2, throwaway:

- a *bridge* namespace holding a Linux bridge (``br0``, the network's switch, which
  also carries the address PostgreSQL listens on), and one namespace per host joined
  to it by a veth pair, each host with a private address in ``10.231.N.0/24`` (N chosen
  so that the subnet is not routed anywhere on this machine yet);
- a veth from the test's own namespace into the bridge (``.254``), through which the
  test reaches every host's web port and the database, and nothing else.

Names carry ``wgt`` and the test process's pid; ``sweep_leftovers`` (called by every
new topology) removes what a killed run left behind: its namespaces, after stopping
the processes still inside them (its own, by pid, as ``ip netns pids`` names them).
``destroy`` removes everything (deleting the bridge namespace deletes every veth,
including the test's own end), and the fixtures call it however pytest ends.

Faults, all injected from outside the gateways: ``cut``/``heal`` (blackhole routes
between two hosts only), ``isolate``/``reconnect`` (the host's port on the bridge
down: it reaches nobody, not even the database), ``degrade``/``restore`` (``tc
netem`` loss and delay on a host's veth, both directions).

Needs root and a kernel with network namespaces: ``available`` says why not, for a
visible skip.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

PREFIX = "wgt"
BRIDGE = "br0"
COMMAND_TIMEOUT_SECONDS = 20.0
NETEM_DEVICE, NETEM_MARK, NETEM_TABLE = "netem0", 0x231, 231
_NAME = re.compile(rf"^{PREFIX}(\d+)-")


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(args), capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT_SECONDS, stdin=subprocess.DEVNULL)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


def available() -> str | None:
    """None when namespaces, veth pairs and bridges can be made here; else why not."""
    if os.geteuid() != 0:
        return "network namespace tests need root (ip netns, veth, bridges)"
    for tool in ("ip", "sysctl", "setpriv"):
        if _run("sh", "-c", f"command -v {tool}", check=False).returncode != 0:
            return f"{tool} is not installed; run scripts/system-deps as root"
    probe = f"{PREFIX}{os.getpid()}-probe"
    done = _run("ip", "netns", "add", probe, check=False)
    if done.returncode != 0:
        return f"the kernel has no network namespaces here: {done.stderr.strip()}"
    _run("ip", "netns", "delete", probe, check=False)
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _namespaces() -> list[str]:
    done = _run("ip", "netns", "list", check=False)
    return [line.split()[0] for line in done.stdout.splitlines() if line.strip()]


def sweep_leftovers() -> list[str]:
    """Delete the namespaces of test runs that are gone (their pid no longer runs),
    SIGKILLing what still runs inside them first; returns the namespaces removed."""
    removed = []
    for name in _namespaces():
        match = _NAME.match(name)
        if match is None or _alive(int(match.group(1))):
            continue
        _kill_inside(name)
        _run("ip", "netns", "delete", name, check=False)
        removed.append(name)
    return removed


def _kill_inside(namespace: str) -> None:
    """SIGKILL every process in ``namespace`` (ours: only our tests make these names)."""
    pids = _run("ip", "netns", "pids", namespace, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def _free_subnet() -> ipaddress.IPv4Network:
    """A 10.231.N.0/24 that no route of this namespace covers yet."""
    routes = _run("ip", "-4", "route", "show", "table", "all", check=False).stdout
    used = {ipaddress.ip_network(word, strict=False) for line in routes.splitlines()
            for word in line.split()[:2] if re.fullmatch(r"\d+\.\d+\.\d+\.\d+(/\d+)?", word)}
    start = os.getpid() % 250
    for i in range(250):
        subnet = ipaddress.ip_network(f"10.231.{(start + i) % 250 + 1}.0/24")
        if not any(subnet.overlaps(u) for u in used if u.prefixlen > 0):
            return subnet
    raise RuntimeError("no free 10.231.N.0/24 subnet on this machine")


@dataclass
class Topology:
    """A bridge namespace, one namespace per host, and the test's own way in."""

    hosts: tuple[str, ...]
    tag: str = field(
        default_factory=lambda: f"{PREFIX}{os.getpid()}-{time.monotonic_ns() % 100000}")
    subnet: ipaddress.IPv4Network = field(default_factory=_free_subnet)
    made: list[str] = field(default_factory=list)
    _degraded: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def bridge_ns(self) -> str:
        return f"{self.tag}-br"

    def namespace(self, host: str) -> str:
        return f"{self.tag}-{self.hosts.index(host)}"

    def address(self, host: str) -> str:
        """The host's address on the bridge (what it advertises and listens on)."""
        return str(self.subnet.network_address + 10 + self.hosts.index(host))

    @property
    def bridge_address(self) -> str:
        """The bridge's own address: the database listens there."""
        return str(self.subnet.network_address + 1)

    @property
    def test_address(self) -> str:
        return str(self.subnet.network_address + 254)

    @property
    def _test_link(self) -> str:
        # Interface names: at most 15 characters.
        return f"{PREFIX}{os.getpid()}{self.tag[-3:]}"

    def prefix(self, host: str) -> list[str]:
        """The command prefix that runs a program inside ``host``'s namespace."""
        return ["ip", "netns", "exec", self.namespace(host)]

    def bridge_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.bridge_ns]

    # ---- building and removing --------------------------------------------------------

    def create(self) -> Topology:
        sweep_leftovers()
        try:
            self._create()
        except BaseException:
            self.destroy()
            raise
        return self

    def _create(self) -> None:
        bits = self.subnet.prefixlen
        self._netns(self.bridge_ns)
        br = ("ip", "-n", self.bridge_ns)
        _run(*br, "link", "add", BRIDGE, "type", "bridge")
        _run(*br, "addr", "add", f"{self.bridge_address}/{bits}", "dev", BRIDGE)
        _run(*br, "link", "set", BRIDGE, "up")
        for i, host in enumerate(self.hosts):
            namespace = self.namespace(host)
            self._netns(namespace)
            port = f"h{i}"
            _run("ip", "-n", self.bridge_ns, "link", "add", port, "type", "veth",
                 "peer", "name", "eth0", "netns", namespace)
            _run(*br, "link", "set", "dev", port, "master", BRIDGE, "up")
            _run("ip", "-n", namespace, "addr", "add", f"{self.address(host)}/{bits}",
                 "dev", "eth0")
            _run("ip", "-n", namespace, "link", "set", "eth0", "up")
        # The test's own way in: one veth, its far end on the bridge.
        _run("ip", "link", "add", self._test_link, "type", "veth", "peer", "name", "to-test",
             "netns", self.bridge_ns)
        _run(*br, "link", "set", "dev", "to-test", "master", BRIDGE, "up")
        _run("ip", "addr", "add", f"{self.test_address}/{bits}", "dev", self._test_link)
        _run("ip", "link", "set", self._test_link, "up")

    def _netns(self, name: str) -> None:
        _run("ip", "netns", "add", name)
        self.made.append(name)
        _run("ip", "-n", name, "link", "set", "lo", "up")

    def destroy(self) -> None:
        """Stop whatever still runs inside, delete every namespace (their veths go with
        them, the test's own end included); idempotent."""
        for host in list(self._degraded):
            self.restore(host)
        for name in reversed(self.made):
            _kill_inside(name)
            _run("ip", "netns", "delete", name, check=False)
        self.made.clear()
        _run("ip", "link", "delete", self._test_link, check=False)

    # ---- faults -------------------------------------------------------------------------

    def cut(self, a: str, b: str) -> None:
        """Hosts ``a`` and ``b`` no longer reach each other; both still reach the rest."""
        for here, there in ((a, b), (b, a)):
            _run("ip", "-n", self.namespace(here), "route", "add", "blackhole",
                 f"{self.address(there)}/32")

    def heal(self, a: str, b: str) -> None:
        for here, there in ((a, b), (b, a)):
            _run("ip", "-n", self.namespace(here), "route", "del", "blackhole",
                 f"{self.address(there)}/32", check=False)

    def _port(self, host: str) -> str:
        return f"h{self.hosts.index(host)}"

    def isolate(self, host: str) -> None:
        """``host`` reaches nobody and nobody reaches it (its port on the bridge down)."""
        _run("ip", "-n", self.bridge_ns, "link", "set", self._port(host), "down")

    def reconnect(self, host: str) -> None:
        _run("ip", "-n", self.bridge_ns, "link", "set", self._port(host), "up")

    def degrade(self, host: str, loss_percent: float, delay_ms: int) -> None:
        """Every packet ``host`` sends to another host (not to the database, not to the
        test) is delayed ``delay_ms`` and lost with ``loss_percent`` chance. Degrade
        every host and each direction between two hosts gets it once.

        What ``tc netem`` would do, in user space (a kernel built without sch_netem,
        such as the VM these tests were written on, has no netem; and netem for some
        destinations only would need the prio qdisc and u32 filters too): the routes
        to the other hosts go through a TUN device whose reader (``tests/netem.py``,
        run in the host's namespace) drops and holds the packets, then sends them on
        through a raw socket whose mark routes them out of the veth."""
        if host in self._degraded:
            raise RuntimeError(f"{host} is degraded already")
        others = [self.address(h) for h in self.hosts if h != host]
        self._degrade_in_user_space(host, others, loss_percent, delay_ms)

    def _degrade_in_user_space(self, host: str, others: list[str], loss_percent: float,
                               delay_ms: int) -> None:
        ns = self.namespace(host)
        for knob in ("all", "default", "eth0"):  # replies come back on eth0, not the tun
            _run("ip", "netns", "exec", ns, "sysctl", "-qw",
                 f"net.ipv4.conf.{knob}.rp_filter=0")
        _run("ip", "-n", ns, "rule", "add", "fwmark", str(NETEM_MARK), "lookup",
             str(NETEM_TABLE), "pref", "100")
        _run("ip", "-n", ns, "route", "replace", str(self.subnet), "dev", "eth0",
             "table", str(NETEM_TABLE))
        reader = subprocess.Popen(
            [*self.prefix(host), sys.executable, "-m", "tests.netem", NETEM_DEVICE,
             f"{loss_percent / 100:g}", f"{delay_ms / 1000:g}", str(NETEM_MARK)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        self._degraded[host] = reader
        assert reader.stdout is not None
        if reader.stdout.readline().strip() != b"ready":
            reader.wait(10)
            raise RuntimeError(f"tests.netem failed: {reader.stderr.read().decode()[-2000:]}")
        _run("ip", "-n", ns, "link", "set", NETEM_DEVICE, "up")
        for address in others:
            _run("ip", "-n", ns, "route", "add", f"{address}/32", "dev", NETEM_DEVICE,
                 "src", self.address(host))

    def restore(self, host: str) -> None:
        """Undo ``degrade``; idempotent."""
        if host not in self._degraded:
            return
        reader = self._degraded.pop(host)
        ns = self.namespace(host)
        # The TUN device, and the routes through it, go with the reader's descriptor.
        reader.kill()
        reader.wait(10)
        for stream in (reader.stdout, reader.stderr):
            if stream is not None:
                stream.close()
        _run("ip", "-n", ns, "rule", "del", "fwmark", str(NETEM_MARK), "lookup",
             str(NETEM_TABLE), check=False)

    def reaches(self, host: str, address: str, port: int) -> bool:
        """Whether a TCP connection from ``host`` to ``address:port`` succeeds (2 s)."""
        code = ("import socket,sys\ntry:\n socket.create_connection((sys.argv[1], "
                "int(sys.argv[2])), timeout=2).close()\nexcept OSError:\n sys.exit(1)\n")
        done = subprocess.run([*self.prefix(host), sys.executable, "-c", code, address,
                               str(port)], capture_output=True, timeout=10,
                              stdin=subprocess.DEVNULL)
        return done.returncode == 0
