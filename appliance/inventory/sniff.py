"""Reading discovery traffic off the office port without ever holding a frame up.

Broadcast and multicast discovery (DHCP, ARP, mDNS, LLMNR, NetBIOS) must never go through
NFQUEUE: the bridge clones such a frame and the kernel drops a queued clone. A packet socket
(AF_PACKET) on the office port gets its own copy of each frame after the fact; the classic BPF
filter below, run in the kernel, hands over only the frames the inventory reads (ARP; UDP from or
to the DHCP, DNS-answer, NetBIOS, mDNS and LLMNR ports; TCP SYNs for the top-talkers chart), and
at most `SNAPLEN` bytes of each. A full socket buffer drops our copy, never the frame.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import socket
import struct
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

ETH_P_ALL = 0x0003
SO_ATTACH_FILTER = 26
SNAPLEN = 1500
PACKET_OUTGOING = 4
UDP_PORTS = (53, 67, 68, 137, 5353, 5355)  # source or destination (53: source only)

# Classic BPF opcodes.
LDH_ABS, LDB_ABS, LDXB_MSH, LDH_IND, LDB_IND = 0x28, 0x30, 0xB1, 0x48, 0x50
JEQ, JSET, AND, RET = 0x15, 0x45, 0x54, 0x06


def program() -> list[tuple[int, int, int, int]]:
    """The filter as (code, jt, jf, k) instructions; jumps are resolved from labels."""
    ins: list[tuple[int, str | int, str | int, int]] = []
    labels: dict[str, int] = {}

    def op(code: int, k: int = 0, jt: str | int = 0, jf: str | int = 0) -> None:
        ins.append((code, jt, jf, k))

    def label(name: str) -> None:
        labels[name] = len(ins)

    op(LDH_ABS, 12)
    op(JEQ, 0x0806, "accept", 0)
    op(JEQ, 0x0800, "ip4", 0)
    op(JEQ, 0x86DD, "ip6", "drop")
    label("ip4")
    op(LDH_ABS, 20)
    op(JSET, 0x1FFF, "drop", 0)  # a fragment that is not the first
    op(LDB_ABS, 23)
    op(JEQ, 17, "udp4", 0)
    op(JEQ, 6, "tcp4", "drop")
    label("tcp4")
    op(LDXB_MSH, 14)
    op(LDB_IND, 27)  # TCP flags: 14 + ihl + 13
    op(AND, 0x12)
    op(JEQ, 0x02, "accept", "drop")  # SYN without ACK
    label("udp4")
    op(LDXB_MSH, 14)
    op(LDH_IND, 14)  # source port
    for port in UDP_PORTS:
        op(JEQ, port, "accept", 0)
    op(LDH_IND, 16)  # destination port
    for port in UDP_PORTS[1:]:
        op(JEQ, port, "accept", 0)
    op(RET, 0)
    label("ip6")
    op(LDB_ABS, 20)
    op(JEQ, 17, 0, "drop")  # UDP right after the fixed header (mDNS/LLMNR/DHCPv6-free)
    op(LDH_ABS, 54)
    for port in UDP_PORTS:
        op(JEQ, port, "accept", 0)
    op(LDH_ABS, 56)
    for port in UDP_PORTS[1:]:
        op(JEQ, port, "accept", 0)
    label("drop")
    op(RET, 0)
    label("accept")
    op(RET, SNAPLEN)

    out = []
    for i, (code, jt, jf, k) in enumerate(ins):

        def rel(j: str | int, i: int = i) -> int:
            if isinstance(j, str):
                off = labels[j] - i - 1
                if not 0 <= off < 256:
                    raise ValueError(f"BPF jump to {j} out of range")
                return off
            return j

        out.append((code, rel(jt), rel(jf), k))
    return out


def attach(sock: socket.socket) -> None:
    prog = program()
    raw = b"".join(struct.pack("HBBI", *i) for i in prog)
    buf = ctypes.create_string_buffer(raw, len(raw))
    fprog = struct.pack("HL", len(prog), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def open_socket(interface: str) -> socket.socket:
    """A packet socket on `interface` with the filter attached (OSError when it cannot)."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    try:
        attach(sock)  # before bind: no unfiltered frame gets queued in between
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((interface, ETH_P_ALL))
        sock.settimeout(0.5)
    except BaseException:
        sock.close()
        raise
    return sock


class Sniffer(threading.Thread):
    """Reads the office port in its own thread and hands each frame to `on_frame`
    (`outgoing` says the frame left through the port)."""

    def __init__(self, interface: str, on_frame: Callable[[bytes, bool], None]) -> None:
        super().__init__(daemon=True, name=f"inventory-{interface}")
        self.interface = interface
        self.on_frame = on_frame
        self.sock = open_socket(interface)
        self._halt = threading.Event()
        self.frames = 0
        self.errors = 0

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                frame, addr = self.sock.recvfrom(SNAPLEN)
            except TimeoutError:
                continue
            except OSError as e:
                if self._halt.is_set():
                    return
                log.warning("inventory: reading %s failed: %s", self.interface, e)
                self._halt.wait(1.0)
                continue
            self.frames += 1
            try:
                self.on_frame(frame, addr[2] == PACKET_OUTGOING)
            except Exception:
                self.errors += 1
                log.exception("inventory: a frame could not be read")

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(2.0)
        with contextlib.suppress(OSError):
            self.sock.close()
