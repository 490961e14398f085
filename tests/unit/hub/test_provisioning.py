"""Provisioning: the CA, certificates (roles, names, key file modes), registry rules, broker
config and ACL, and the `watchpost provision` commands."""

from __future__ import annotations

import ssl
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hub import provisioning as prov

REPO = Path(__file__).resolve().parents[3]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    prov.create_ca(tmp_path / "ca")
    return tmp_path / "ca"


def test_ca_is_a_ca_with_a_private_key_only_root_can_read(ca_dir: Path) -> None:
    c = cert(ca_dir / "ca.pem")
    assert c.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert mode(ca_dir / "ca.key") == 0o600
    assert mode(ca_dir) == 0o700
    with pytest.raises(prov.ProvisionError, match="already exists"):
        prov.create_ca(ca_dir)


def test_device_certificate_has_the_device_id_as_cn_and_client_role(ca_dir: Path) -> None:
    issued = prov.issue_device(ca_dir, "office-17", "leeds")
    c = cert(issued.cert)
    assert c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "office-17"
    eku = c.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert mode(issued.key) == 0o600
    assert issued.ca.read_bytes() == (ca_dir / "ca.pem").read_bytes()
    c.verify_directly_issued_by(cert(ca_dir / "ca.pem"))
    ssl.create_default_context().load_cert_chain(issued.cert, issued.key)  # key matches
    assert prov.registry(ca_dir)["devices"]["office-17"]["site"] == "leeds"


def test_device_ids_are_unique_across_sites_and_renewal_is_explicit(ca_dir: Path) -> None:
    prov.issue_device(ca_dir, "dev1", "siteA")
    with pytest.raises(prov.ProvisionError, match="already enrolled at site 'siteA'"):
        prov.issue_device(ca_dir, "dev1", "siteB")
    with pytest.raises(prov.ProvisionError, match="--renew"):
        prov.issue_device(ca_dir, "dev1", "siteA")
    old = cert(ca_dir / "devices/dev1/device.pem").serial_number
    prov.issue_device(ca_dir, "dev1", "siteA", renew=True)
    assert cert(ca_dir / "devices/dev1/device.pem").serial_number != old
    prov.issue_hub(ca_dir, "hub")
    with pytest.raises(prov.ProvisionError, match="hub identity"):
        prov.issue_device(ca_dir, "hub", "siteA")
    with pytest.raises(prov.ProvisionError, match="already a device id"):
        prov.issue_hub(ca_dir, "dev1")


@pytest.mark.parametrize("bad", ["", "a/b", "dev+", "dev#", "has space", "x" * 65, "%u"])
def test_names_that_would_break_topics_or_acl_lines_are_refused(ca_dir: Path, bad: str) -> None:
    with pytest.raises(prov.ProvisionError, match="letters, digits"):
        prov.issue_device(ca_dir, bad, "siteA")
    with pytest.raises(prov.ProvisionError, match="letters, digits"):
        prov.issue_device(ca_dir, "ok", bad)


def test_broker_certificate_names_the_hosts_devices_dial_and_is_a_server(
    ca_dir: Path, tmp_path: Path
) -> None:
    issued = prov.issue_broker(ca_dir, ["hub.example.net", "192.0.2.10"], tmp_path / "b")
    c = cert(issued.cert)
    eku = c.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert sorted(prov.broker_cert_hosts(issued.cert)) == ["192.0.2.10", "hub.example.net"]
    assert mode(issued.key) == 0o600
    with pytest.raises(prov.ProvisionError, match="DNS name or an IP"):
        prov.issue_broker(ca_dir, ["bad host"], tmp_path / "b")


def test_acl_sites_mode_binds_each_device_to_its_own_site(ca_dir: Path) -> None:
    prov.issue_device(ca_dir, "dev1", "siteA")
    prov.issue_device(ca_dir, "dev2", "siteB")
    prov.issue_hub(ca_dir, "hub")
    acl = prov.acl_text(prov.registry(ca_dir), "sites")
    blocks = {b.split("\n")[0]: b for b in acl.split("\n\n") if b.startswith("user ")}
    assert blocks["user hub"] == "user hub\ntopic readwrite watchpost/v1/#"
    dev1 = blocks["user dev1"].splitlines()
    assert "topic write watchpost/v1/siteA/dev1/alerts" in dev1
    assert "topic read watchpost/v1/siteA/dev1/cmd" in dev1
    assert "topic write watchpost/v1/siteA/dev1/cmd/res/#" in dev1
    assert all("siteA/dev1/" in line for line in dev1[1:])
    assert not any(
        line.startswith(("topic", "pattern")) for line in acl.split("user ")[0].splitlines()
    )


def test_acl_pattern_mode_uses_the_username(ca_dir: Path) -> None:
    prov.issue_hub(ca_dir, "hub")
    acl = prov.acl_text(prov.registry(ca_dir), "pattern")
    assert "pattern write watchpost/v1/+/%u/alerts" in acl
    assert "pattern read watchpost/v1/+/%u/cmd" in acl
    assert "pattern write watchpost/v1/+/%u/cmd" not in acl.splitlines()
    with pytest.raises(prov.ProvisionError, match="ACL mode"):
        prov.acl_text({}, "open")


def test_broker_conf_requires_client_certificates_and_forbids_anonymous(
    ca_dir: Path, tmp_path: Path
) -> None:
    d = tmp_path / "broker"
    settings = prov.BrokerSettings(conf_dir=d, port=8883, user="mosquitto")
    conf = prov.write_broker_conf(ca_dir, settings, ["192.0.2.10"]).read_text().splitlines()
    for line in (
        "allow_anonymous false",
        "require_certificate true",
        "use_identity_as_username true",
        "persistence true",
        "tls_version tlsv1.2",
        "listener 8883",
        f"acl_file {d / 'acl'}",
        f"keyfile {d / 'server.key'}",
    ):
        assert line in conf
    assert mode(d / "server.key") == 0o600
    serial = cert(d / "server.pem").serial_number
    prov.write_broker_conf(ca_dir, settings, ["192.0.2.10"])  # idempotent: same hosts, same cert
    assert cert(d / "server.pem").serial_number == serial
    prov.write_broker_conf(ca_dir, settings, ["192.0.2.10", "hub.example.net"])
    assert cert(d / "server.pem").serial_number != serial


def test_cli_commands_and_their_errors(tmp_path: Path) -> None:
    run = CliRunner().invoke
    ca = str(tmp_path / "ca")
    assert run(prov.provision, ["ca", "--dir", ca]).exit_code == 0
    r = run(prov.provision, ["device", "dev1", "--dir", ca, "--site", "s1", "--hub-host", "h"])
    assert r.exit_code == 0, r.output
    toml = (tmp_path / "ca/devices/dev1/hub.toml").read_text()
    assert 'id = "dev1"' in toml and 'host = "h"' in toml
    r = run(prov.provision, ["device", "dev1", "--dir", ca, "--site", "s2"])
    assert r.exit_code == 2 and "error: device id 'dev1' is already enrolled" in r.output
    assert run(prov.provision, ["hub", "--dir", ca]).exit_code == 0
    out = str(tmp_path / "broker")
    r = run(prov.provision, ["broker-conf", "--dir", ca, "--out", out, "--host", "192.0.2.10"])
    assert r.exit_code == 0, r.output
    assert "user dev1" in (tmp_path / "broker/acl").read_text()
    r = run(prov.provision, ["device", "x", "--dir", str(tmp_path / "none"), "--site", "s"])
    assert r.exit_code == 2 and "no CA here" in r.output


def test_the_committed_example_broker_files_are_what_the_generator_writes() -> None:
    """provisioning/mosquitto/ shows an installer the result; it must not drift."""
    example = REPO / "provisioning/mosquitto"
    reg = {
        "devices": {"office-17": {"site": "leeds"}},
        "hubs": {"ops": {"role": "operator"}, "collector-1": {"role": "consumer"}},
    }
    assert (example / "acl.example").read_text() == prov.acl_text(reg, "sites")
    settings = prov.BrokerSettings(conf_dir=Path("/etc/mosquitto/watchpost"), bind_client_id=True)
    assert (example / "mosquitto.conf.example").read_text() == prov.mosquitto_conf(settings)
