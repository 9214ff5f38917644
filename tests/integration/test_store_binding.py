"""Whoever can write data_dir cannot swap one session's sealed credentials for
another's, nor (with encryption.generations_file) put back an older copy: real
gateways (``wagate serve``) with the harness's storage key."""

from __future__ import annotations

from collections.abc import Callable

from tests.integration.harness import Gateway
from tests.integration.test_encryption import refused_start, set_config
from tests.integration.test_resilience import wait_connected_without_qr


def test_credentials_swapped_between_sessions_stop_the_start(
        make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway().start()
    gw.link("alpha")
    assert not gw.connect("beta").errors
    gw.wait_state("QR_PENDING", "beta")
    gw.sim("scan", "--session", "beta", "--phone", "+19995550123")
    gw.wait_state("CONNECTED", "beta")
    gw.stop()
    alpha, beta = gw.credentials_path("alpha"), gw.credentials_path("beta")
    alpha_blob, beta_blob = alpha.read_bytes(), beta.read_bytes()
    beta.write_bytes(alpha_blob)  # beta would send from alpha's account

    output = refused_start(gw)
    assert "session 'beta'" in output and "another" in output, output
    assert beta.read_bytes() == alpha_blob  # left as it was, for the operator to look at

    beta.write_bytes(beta_blob)
    gw.start()
    assert wait_connected_without_qr(gw, "beta")["phoneNumber"] == "+19995550123"


def test_a_logged_out_device_put_back_in_data_dir_stops_the_start(
        make_gateway: Callable[..., Gateway]) -> None:
    """A backup of data_dir from before a logout still holds the device's keys: with a
    generation ledger outside data_dir, putting it back is refused."""
    gw = make_gateway()
    ledger = gw.root / "ledger" / "generations.json"  # outside data_dir, like the key
    set_config(gw, encryption={"generations_file": str(ledger)})
    gw.start()
    gw.link()
    gw.stop()
    backup = gw.credentials_path().read_bytes()
    gw.start()
    assert gw.disconnect().data == {"whatsAppDisconnect": True}
    gw.wait_state("LOGGED_OUT")
    gw.stop()
    assert not gw.credentials_path().exists()
    gw.credentials_path().write_bytes(backup)

    output = refused_start(gw)
    assert "rolled back" in output and str(ledger) in output, output
    gw.credentials_path().unlink()
    gw.start()
    assert gw.status()["state"] == "LOGGED_OUT"
