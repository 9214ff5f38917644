"""The request goes to the address that was checked, under the url's name.

The resolver is the test's (``hooks.invalid`` exists in no DNS), so a request that
arrives proves no second lookup happened; the receiver records the Host header and,
under TLS, the SNI name, and the client verifies the certificate against the name
while connecting to 127.0.0.1."""

from __future__ import annotations

import datetime as dt
import ssl
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from actors.webhooks import signing
from actors.webhooks.store import EndpointStore
from tests.webhooks.conftest import EventLog, MakeDeliverer
from tests.webhooks.receiver import Receiver

NAME = "hooks.invalid"


class Lookups:
    def __init__(self, address: str) -> None:
        self.address, self.calls = address, 0

    def __call__(self, host: str, port: int) -> list[str]:
        assert host == NAME
        self.calls += 1
        return [self.address]


def certificate(tmp_path: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def contexts(tmp_path: Path, served_name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    cert_path, key_path = certificate(tmp_path, served_name)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_path, key_path)
    client = ssl.create_default_context(cafile=str(cert_path))
    return server, client


def test_plain_http_goes_to_the_checked_address_with_the_name_as_host(
        log: EventLog, store: EndpointStore, deliverer: MakeDeliverer) -> None:
    log.add()
    lookups = Lookups("127.0.0.1")
    with Receiver() as receiver:
        hook = store.create(receiver.url(host=NAME), (), (), "", signing.new_secret(),
                            time.time()).id
        loop = deliverer(resolver=lookups, allow_insecure=(NAME,))
        assert loop.run_endpoint(hook) == 1
        (got,) = receiver.wait_for(1)
    assert got.headers["host"] == f"{NAME}:{receiver.port}"
    assert lookups.calls == 1 and store.get(hook).cursor == 1


def test_a_name_resolving_to_loopback_is_refused_unless_allowlisted(
        log: EventLog, store: EndpointStore, deliverer: MakeDeliverer) -> None:
    log.add()
    with Receiver() as receiver:
        hook = store.create(receiver.url(host=NAME).replace("http:", "https:"), (), (), "",
                            signing.new_secret(), time.time()).id
        loop = deliverer(resolver=Lookups("127.0.0.1"), allow_insecure=("127.0.0.2/32",))
        loop.run_endpoint(hook)
        assert receiver.requests == []
    state = store.get(hook)
    assert "127.0.0.1" in state.last_error and state.failures == 1 and state.cursor == 0


def test_tls_sends_the_name_as_sni_and_checks_the_certificate_against_it(
        tmp_path: Path, log: EventLog, store: EndpointStore,
        deliverer: MakeDeliverer) -> None:
    log.add()
    server, client = contexts(tmp_path, NAME)
    with Receiver(tls=server) as receiver:
        hook = store.create(receiver.url(host=NAME), (), (), "", signing.new_secret(),
                            time.time()).id
        loop = deliverer(resolver=Lookups("127.0.0.1"), verify=client)
        assert loop.run_endpoint(hook) == 1
        (got,) = receiver.wait_for(1)
    assert got.sni == NAME and store.get(hook).last_status == 200


def test_tls_to_the_address_of_a_name_whose_certificate_is_another_fails(
        tmp_path: Path, log: EventLog, store: EndpointStore,
        deliverer: MakeDeliverer) -> None:
    log.add()
    server, client = contexts(tmp_path, "other.invalid")
    with Receiver(tls=server) as receiver:
        hook = store.create(receiver.url(host=NAME), (), (), "", signing.new_secret(),
                            time.time()).id
        deliverer(resolver=Lookups("127.0.0.1"), verify=client).run_endpoint(hook)
    state = store.get(hook)
    assert state.last_status is None and state.cursor == 0 and state.failures == 1
