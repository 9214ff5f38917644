"""The operator guide's files (docs/operations.md) work: the systemd unit and the nginx
reverse proxy.

``configs/wagate.service`` must pass ``systemd-analyze verify`` and carry the
hardening docs/operations.md promises, with paths that match
``configs/production.toml``. ``configs/nginx-wagate.conf`` runs, as shipped (only its
ports, upstream and certificate are pointed at this test's), in a real nginx on
loopback in front of a real gateway: TLS ends at nginx, and the gateway sees the
client's own address through ``auth.trusted_proxies``, never one the client forged.
"""

from __future__ import annotations

import configparser
import contextlib
import datetime
import http.client
import ipaddress
import json
import os
import pwd
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.integration.harness import Gateway, free_port, group_alive, wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
UNIT = CONFIGS / "wagate.service"
NGINX_SITE = CONFIGS / "nginx-wagate.conf"
# The unit's venv path, replaced by this machine's wagate for `verify` (which checks
# that ExecStart's program exists).
UNIT_PROGRAM = "/opt/wagate/bin/wagate"
# Loopback addresses the test's clients connect from (Linux routes all of 127/8).
CLIENT = "127.0.0.7"
STRANGER = "127.0.0.9"
STATUS = {"query": "{ whatsAppStatus { connected state } }"}


# ---- systemd -------------------------------------------------------------------------------


def read_unit(path: Path) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    unit.read(path, encoding="utf-8")
    return unit


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    """``systemd-analyze verify`` accepts the unit without a single warning about it
    (an unknown or misspelt key is only a warning, so the output is checked too)."""
    analyze = shutil.which("systemd-analyze")
    if not analyze:
        pytest.fail("systemd-analyze is missing: run scripts/system-deps (as root), or "
                    "install systemd")
    program = shutil.which("wagate")
    assert program, "the wagate command is not installed (pip install -e .)"
    text = UNIT.read_text(encoding="utf-8")
    assert text.count(UNIT_PROGRAM) == 1, f"ExecStart no longer runs {UNIT_PROGRAM}"
    copy = tmp_path / "wagate.service"
    copy.write_text(text.replace(UNIT_PROGRAM, program), encoding="utf-8")
    done = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)
    about_unit = [line for line in (done.stdout + done.stderr).splitlines()
                  if "wagate.service" in line]
    assert done.returncode == 0 and not about_unit, done.stdout + done.stderr


def test_systemd_unit_is_hardened_and_matches_the_production_config() -> None:
    service = read_unit(UNIT)["Service"]
    required = {"ProtectSystem": "strict", "Restart": "on-failure",
                "KillMode": "mixed", "NoNewPrivileges": "yes",
                "PrivateTmp": "yes", "ProtectHome": "yes"}
    assert {k: service.get(k) for k in required} == required
    assert service.get("DynamicUser") == "yes" or service.get("User") not in (None, "", "root")
    # The one writable place is the production config's data_dir, and the config the
    # unit starts with names the same token and key files the guide creates.
    production = tomllib.loads((CONFIGS / "production.toml").read_text(encoding="utf-8"))
    assert service["ReadWritePaths"].split() == [production["storage"]["data_dir"]]
    config_path = re.search(r"--config\s+(\S+)", service["ExecStart"])
    assert config_path and Path(config_path.group(1)).parent == Path(
        production["auth"]["tokens_file"]).parent == Path(
        production["encryption"]["key_file"]).parent
    # A stop must get the time the launcher needs (a session's stop may take 60 s).
    assert int(service["TimeoutStopSec"].rstrip("s")) >= 60


def test_the_units_stop_lets_the_launcher_stop_the_actor_system_in_order(
        make_gateway: Callable[..., Gateway]) -> None:
    """``systemctl stop`` as the unit's KillMode does it, on a real gateway: with
    ``control-group`` systemd sends SIGTERM to every process of the cgroup at once, so
    the Admin and the actors die of it before the launcher can stop them in order
    (Thespian's orderly shutdown never runs: no session is told to stop its engine);
    with ``mixed`` only the launcher gets it (the rest only the final SIGKILL)."""
    kill_mode = read_unit(UNIT)["Service"]["KillMode"]
    gw = make_gateway().start()
    assert not gw.connect().errors
    gw.wait_state("QR_PENDING")  # a session process is running too
    assert gw.process is not None
    launcher = gw.process.pid
    targets = [launcher] if kill_mode in ("mixed", "process") else [
        launcher, *gw.actor_pids()]
    for pid in targets:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    code = gw.process.wait(60)
    gw.process = None  # stopped here; the fixture still checks nothing is left
    actors_log = (gw.data_dir / "logs" / "actors.log").read_text(encoding="utf-8")
    assert code == 0, gw.log_tail()
    assert "Actor System shutdown" in actors_log, (kill_mode, gw.log_tail())


# What the unit's ProtectSystem=strict, ReadWritePaths=data_dir and PrivateTmp=yes do
# to the gateway's view of the file system, laid out in a mount namespace of its own
# (the machines that run the tests have no systemd to start the unit). $1 is the
# gateway's test directory (config, tokens, key; under /tmp, so it is bound back over
# the fresh /tmp), $2 its data_dir, $3 the code's checkout (bound back too: a clone
# can live under /tmp, where an installed service's code never does); then the command.
# Exits 97 if the layout is not in force, so the test cannot pass without it.
CONFINE = r"""
set -euo pipefail
root=$1 data=$2 code=$3
shift 3
exec 3<"$root" 4<"$code"
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=1777 tmpfs /var/tmp
mkdir -p "$root" "$code"
mount --no-canonicalize --bind /proc/self/fd/3 "$root"
mount --no-canonicalize --bind /proc/self/fd/4 "$code"
exec 3<&- 4<&-
mount --bind "$data" "$data"
mount -o remount,bind,ro /
mount -o remount,bind,ro "$root"
mount -o remount,bind,ro "$code"
if touch "$root/probe" 2>/dev/null || touch /etc/wagate-probe 2>/dev/null; then
  echo "confine: the file system is still writable" >&2
  exit 97
fi
touch "$data/probe" && rm "$data/probe"
exec "$@"
"""


class ConfinedGateway(Gateway):
    """``wagate serve`` that sees the file system as the systemd unit lets it."""

    def launch(self) -> subprocess.Popen[bytes]:
        log = open(self.root / "serve.log", "ab")  # noqa: SIM115 (kept for the process)
        self.process = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "bash", "-c", CONFINE,
             "confine", str(self.root), str(self.data_dir), str(self.code_dir or REPO),
             sys.executable, "-m", "gateway.cli", "serve", "--config", str(self.config_path),
             "--port", str(self.port), "--admin-port", str(self.admin_port)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            cwd=self.code_dir or REPO)
        log.close()
        self.launchers.append(self.process)
        return self.process


@pytest.fixture
def confined_gateway(tmp_path: Path) -> Iterator[ConfinedGateway]:
    if os.geteuid() != 0:
        pytest.skip("a mount namespace needs root (CI and the test machines run as root)")
    root = tmp_path / "confined"
    root.mkdir()
    gateway = ConfinedGateway(root)
    gateway.data_dir.mkdir(mode=0o700)  # as the guide's install -d does
    try:
        yield gateway
        gateway.stop()
    finally:
        leaked = gateway.cleanup()
    assert not leaked, f"left behind: {leaked}"


def test_gateway_needs_no_writable_path_but_data_dir(confined_gateway: ConfinedGateway
                                                     ) -> None:
    """With everything read-only but data_dir (and a private /tmp) the gateway starts,
    links, sends and stops cleanly: ReadWritePaths=data_dir is enough."""
    gateway = confined_gateway.start()
    gateway.link()
    answer = gateway.send("+14155552671", "confined")
    assert answer.data == {"sendWhatsAppNotification": True}, answer
    assert [m["text"] for m in gateway.inbox()] == ["confined"]
    gateway.stop()
    assert "Traceback" not in (gateway.root / "serve.log").read_text(errors="replace")


# ---- nginx ----------------------------------------------------------------------------------


def nginx_binary() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if not found:
        pytest.fail("nginx is missing: run scripts/system-deps (as root), or install nginx")
    return found


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, and its key (PEM files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wagate test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"{NGINX_SITE.name} no longer has exactly one {old!r}"
    return text.replace(old, new)


@dataclass
class Proxy:
    http_port: int
    https_port: int
    cert: Path
    access_log: Path


def nginx_config(root: Path, upstream_port: int) -> tuple[Path, Proxy]:
    """The shipped site pointed at this test's ports and certificate, inside a main
    config whose pid, logs and temp paths are all under ``root``."""
    cert, key = self_signed(root)
    proxy = Proxy(free_port(), free_port(), cert, root / "access.log")
    site = NGINX_SITE.read_text(encoding="utf-8")
    site = replace_once(site, "server 127.0.0.1:8080;", f"server 127.0.0.1:{upstream_port};")
    site = replace_once(site, "listen 80;", f"listen 127.0.0.1:{proxy.http_port};")
    site = replace_once(site, "listen 443 ssl;", f"listen 127.0.0.1:{proxy.https_port} ssl;")
    site = re.sub(r"ssl_certificate\s+\S+;", f"ssl_certificate {cert};", site)
    site = re.sub(r"ssl_certificate_key\s+\S+;", f"ssl_certificate_key {key};", site)
    (root / "site.conf").write_text(site, encoding="utf-8")
    temp = "\n".join(f"    {kind}_temp_path {root / kind};"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    # As root, nginx's workers would switch to "nobody", who cannot enter the test's
    # private temp dir: keep them as the user running the test.
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""
    main = root / "nginx.conf"
    main.write_text(f"""{user}
worker_processes 1;
pid {root / 'nginx.pid'};
error_log {root / 'error.log'} info;
events {{ worker_connections 64; }}
http {{
    log_format ids '$remote_addr $request_id "$request" $status';
    access_log {proxy.access_log} ids;
{temp}
    include {root / 'site.conf'};
}}
""", encoding="utf-8")
    return main, proxy


@pytest.fixture
def nginx_in_front(make_gateway: Callable[..., Gateway], tmp_path: Path
                   ) -> Iterator[tuple[Gateway, Proxy]]:
    """A gateway that trusts loopback's 127.0.0.1 as its proxy, behind the shipped nginx
    site; nginx is stopped (and checked gone) at the end."""
    gateway = make_gateway({"auth": {"trusted_proxies": ["127.0.0.1/32"]}}).start()
    root = tmp_path / "nginx"
    root.mkdir()
    main, proxy = nginx_config(root, gateway.port)
    command = [nginx_binary(), "-p", f"{root}/", "-c", str(main), "-e", str(root / "error.log")]
    checked = subprocess.run([*command, "-t"], capture_output=True, text=True, timeout=30,
                             stdin=subprocess.DEVNULL)
    assert checked.returncode == 0, checked.stderr
    process = subprocess.Popen([*command, "-g", "daemon off;"], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        wait_for(lambda: _answers(proxy), 15, 0.1, "nginx to answer over HTTPS")
        yield gateway, proxy
    finally:
        process.send_signal(signal.SIGQUIT)  # graceful: finish requests, then exit
        try:
            process.wait(15)
        finally:
            survivors = group_alive(process.pid)
            if process.poll() is None or survivors:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        assert not survivors, "nginx left processes behind after its stop"


def _answers(proxy: Proxy) -> bool:
    try:
        return request(proxy, "GET", "/healthz", source=CLIENT)[0] == 200
    except OSError:
        return False


def request(proxy: Proxy, method: str, path: str, *, source: str,
            body: dict[str, object] | None = None, headers: dict[str, str] | None = None,
            ) -> tuple[int, dict[str, str], str]:
    """One HTTPS request to nginx from the loopback address ``source``, verifying the
    test's certificate; returns status, headers and body."""
    context = ssl.create_default_context(cafile=str(proxy.cert))
    connection = http.client.HTTPSConnection("127.0.0.1", proxy.https_port, timeout=30,
                                             context=context, source_address=(source, 0))
    try:
        payload = json.dumps(body) if body is not None else None
        sent = {"Content-Type": "application/json", **(headers or {})}
        connection.request(method, path, body=payload, headers=sent)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read().decode()
    finally:
        connection.close()


def test_nginx_site_terminates_tls_and_passes_the_client_address(
        nginx_in_front: tuple[Gateway, Proxy]) -> None:
    gateway, proxy = nginx_in_front
    # A token that works only from the client's address: through nginx (whose own
    # address is 127.0.0.1) it works only if the gateway sees the client's.
    token = gateway.make_token("viewer", networks=[f"{CLIENT}/32"])
    auth = {"Authorization": f"Bearer {token}"}

    status, headers, text = request(proxy, "POST", "/graphql", source=CLIENT, body=STATUS,
                                    headers=auth)
    assert status == 200, text
    assert json.loads(text) == {"data": {"whatsAppStatus": {"connected": False,
                                                            "state": "NEW"}}}
    # nginx's request id reached the gateway, which answered with it.
    # nginx writes the log line after the response has left, so wait for it.
    request_id = headers["X-Request-Id"]
    line = re.compile(rf"^{re.escape(CLIENT)} {request_id} ", re.MULTILINE)
    wait_for(lambda: line.search(proxy.access_log.read_text()), 10, 0.05,
             f"nginx's access log to name request {request_id}")

    # The same token straight to the gateway, from 127.0.0.1: refused, so the address
    # that let it through above was the one nginx forwarded.
    direct = gateway.http.post(gateway.url + "/graphql", json=STATUS, headers=auth, timeout=10)
    assert direct.status_code == 403, direct.text

    # Another client cannot borrow the address by sending the header itself: nginx
    # appends the address it saw, and that is the one the gateway believes.
    status, _, text = request(proxy, "POST", "/graphql", source=STRANGER, body=STATUS,
                              headers={**auth, "X-Forwarded-For": CLIENT})
    assert status == 403, text
    assert json.loads(text)["errors"][0]["extensions"]["code"] == "FORBIDDEN", text


def test_nginx_site_redirects_plain_http_to_https(
        nginx_in_front: tuple[Gateway, Proxy]) -> None:
    _, proxy = nginx_in_front
    connection = http.client.HTTPConnection("127.0.0.1", proxy.http_port, timeout=10)
    try:
        connection.request("POST", "/graphql", body=json.dumps(STATUS))
        response = connection.getresponse()
        response.read()
    finally:
        connection.close()
    assert response.status == 301
    assert response.getheader("Location") == "https://127.0.0.1/graphql"
