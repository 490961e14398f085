"""The inventory learns names from real discovery frames (built with scapy), and the kernel
takes its BPF filter: only the frames it reads reach the socket."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.layers.netbios import NBNSHeader, NBNSRegistrationRequest

from appliance.inventory import Inventory
from appliance.inventory.learn import Seen, Syn, parse_frame, reverse_address
from appliance.inventory.store import vendor

OUI = Path(__file__).parents[1] / "status" / "oui-sample.txt"
MAC = "00:1b:63:12:34:56"


def dhcp_request(name: str, fqdn: bytes | None = None) -> bytes:
    opts: list = [
        ("message-type", "request"),
        ("requested_addr", "198.18.0.11"),
        ("hostname", name.encode()),
    ]
    if fqdn is not None:
        opts.append(("client_FQDN", fqdn))
    opts.append("end")
    return bytes(
        Ether(src=MAC, dst="ff:ff:ff:ff:ff:ff")
        / IP(src="0.0.0.0", dst="255.255.255.255")
        / UDP(sport=68, dport=67)
        / BOOTP(chaddr=bytes.fromhex(MAC.replace(":", "")), xid=1)
        / DHCP(options=opts)
    )


def test_dhcp_host_name_and_fqdn() -> None:
    assert parse_frame(dhcp_request("reception-pc")) == [
        Seen("198.18.0.11", MAC, "reception-pc", "dhcp")
    ]
    fqdn = b"\x00\x00\x00anna-laptop.office.lan"  # option 81, ASCII name
    assert parse_frame(dhcp_request("x", fqdn))[0].name == "anna-laptop"
    wire = b"\x04\x00\x00\x0banna-laptop\x06office\x00"  # option 81, wire format
    assert parse_frame(dhcp_request("x", wire))[0].name == "anna-laptop"


def test_dhcp_ack_gives_the_address_to_the_mac() -> None:
    frame = bytes(
        Ether(src="02:00:00:00:00:01", dst=MAC)
        / IP(src="198.18.0.1", dst="198.18.0.11")
        / UDP(sport=67, dport=68)
        / BOOTP(op=2, yiaddr="198.18.0.11", chaddr=bytes.fromhex(MAC.replace(":", "")))
        / DHCP(options=[("message-type", "ack"), "end"])
    )
    assert parse_frame(frame) == [Seen("198.18.0.11", MAC, "", "dhcp")]


def test_mdns_llmnr_netbios_ptr_arp() -> None:
    mdns = bytes(
        Ether(src=MAC, dst="01:00:5e:00:00:fb")
        / IP(src="198.18.0.12", dst="224.0.0.251")
        / UDP(sport=5353, dport=5353)
        / DNS(
            qr=1,
            aa=1,
            qd=None,
            an=DNSRR(rrname="printer-2.local", type="A", rdata="198.18.0.12", ttl=120),
        )
    )
    assert parse_frame(mdns) == [Seen("198.18.0.12", MAC, "printer-2", "mdns")]
    mdns6 = bytes(
        Ether(src=MAC)
        / IPv6(src="fe80::1", dst="ff02::fb")
        / UDP(sport=5353, dport=5353)
        / DNS(qr=1, an=DNSRR(rrname="nas.local", type="A", rdata="198.18.0.20"))
    )
    assert parse_frame(mdns6) == [Seen("198.18.0.20", "", "nas", "mdns")]
    llmnr = bytes(
        Ether(src=MAC)
        / IP(src="198.18.0.13", dst="198.18.0.11")
        / UDP(sport=5355, dport=50000)
        / DNS(qr=1, qd=DNSQR(qname="ACCOUNTS"), an=DNSRR(rrname="ACCOUNTS", rdata="198.18.0.13"))
    )
    assert parse_frame(llmnr) == [Seen("198.18.0.13", MAC, "accounts", "llmnr")]
    nb = bytes(
        Ether(src=MAC)
        / IP(src="198.18.0.14", dst="198.18.0.255")
        / UDP(sport=137, dport=137)
        / NBNSHeader(OPCODE=5)
        / NBNSRegistrationRequest(QUESTION_NAME="FRONTDESK", NB_ADDRESS="198.18.0.14")
    )
    assert parse_frame(nb) == [Seen("198.18.0.14", MAC, "FRONTDESK", "netbios")]
    ptr = bytes(
        Ether()
        / IP(src="203.0.113.53", dst="198.18.0.11")
        / UDP(sport=53, dport=40000)
        / DNS(
            qr=1,
            qd=DNSQR(qname="15.0.18.198.in-addr.arpa", qtype="PTR"),
            an=DNSRR(rrname="15.0.18.198.in-addr.arpa", type="PTR", rdata="till.office.lan"),
        )
    )
    assert parse_frame(ptr) == [Seen("198.18.0.15", "", "till", "ptr")]
    arp = bytes(Ether(src=MAC) / ARP(hwsrc=MAC, psrc="198.18.0.11", pdst="198.18.0.1"))
    assert parse_frame(arp) == [Seen("198.18.0.11", MAC, "", "arp")]
    syn = bytes(Ether() / IP(src="198.18.0.11", dst="203.0.113.10") / TCP(flags="S"))
    assert parse_frame(syn) == [Syn("198.18.0.11", "203.0.113.10")]
    synack = bytes(Ether() / IP(src="203.0.113.10", dst="198.18.0.11") / TCP(flags="SA"))
    assert parse_frame(synack) == []


@pytest.mark.parametrize("n", [0, 13, 20, 41, 60, 250, 300])
def test_truncated_frames_yield_nothing_not_errors(n: int) -> None:
    for frame in (dhcp_request("reception-pc"),):
        parse_frame(frame[:n])  # never raises
    assert parse_frame(b"\xff" * 100) == []


def test_reverse_names_and_vendors() -> None:
    assert reverse_address("11.0.18.198.in-addr.arpa") == "198.18.0.11"
    assert (
        reverse_address("1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa")
        == "2001:db8::1"
    )
    assert reverse_address("example.com") == ""
    assert vendor(MAC, str(OUI)) == "Apple, Inc."
    assert vendor("3C:D9:2B:00:00:01", str(OUI)) == "Hewlett Packard"
    assert "randomised" in vendor("da:00:00:00:00:01", str(OUI))
    assert vendor("00:00:00:00:00:01", str(OUI)) == ""


def test_inventory_learns_only_office_addresses(tmp_path: Path) -> None:
    inv = Inventory(tmp_path, ["198.18.0.0/24"], oui_path=str(OUI))
    inv.frame(dhcp_request("reception-pc"))
    outside = bytes(
        Ether(src=MAC)
        / IP(src="203.0.113.5", dst="224.0.0.251")
        / UDP(sport=5353, dport=5353)
        / DNS(qr=1, an=DNSRR(rrname="far.local", rdata="203.0.113.5"))
    )
    inv.frame(outside)
    inv.frame(bytes(Ether() / IP(src="198.18.0.11", dst="203.0.113.10") / TCP(flags="S")))
    inv.frame(bytes(Ether() / IP(src="198.18.0.11", dst="198.18.0.12") / TCP(flags="S")))
    assert inv.store.name("198.18.0.11") == "reception-pc"
    assert inv.store.get("198.18.0.11")["vendor"] == "Apple, Inc."
    assert inv.store.get("203.0.113.5") is None
    assert inv.take_talkers() == {"198.18.0.11": 1}  # only connections to the internet
    assert inv.take_talkers() == {}
    inv.close()


def test_the_kernel_runs_the_filter_on_a_packet_socket(tmp_path: Path) -> None:
    """On loopback: mDNS and a TCP SYN reach the socket, ordinary UDP does not."""
    from appliance.inventory.sniff import Sniffer

    got: list[bytes] = []
    try:
        sniffer = Sniffer("lo", lambda frame, out: got.append(frame))
    except PermissionError:
        pytest.skip("needs root (a packet socket)")
    sniffer.start()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"ordinary datagram", ("127.0.0.1", 9))
            s.sendto(b"\x00" * 12, ("127.0.0.1", 5353))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(b"\x14\xe9" in f[34:38] for f in got):
            time.sleep(0.05)
    finally:
        sniffer.stop()
    assert any(f[36:38] == b"\x14\xe9" for f in got)  # destination port 5353
    assert not any(b"ordinary datagram" in f for f in got)
    assert threading.active_count() >= 1
