"""A capture reader written for replay: pcap and pcapng over mmap, `struct` on the block
headers, one `bytes` per frame and nothing else per packet.

Iterating a `Reader` yields ``(timestamp, linktype, data)``; `Reader.spans()` yields
``(timestamp, linktype, start, end)`` instead, the frame's place in the mapped file (`Reader.mm`),
for a loop that looks at a frame's headers in place and copies only the frames it decodes.
pcap: both byte orders, microsecond and nanosecond magics, the link type of the file header
(FCS bits masked). pcapng: every section (each with its own byte order), interface blocks with
their link type and ``if_tsresol``, enhanced, simple and obsolete packet blocks; other blocks
are skipped. A file that is not a
capture, or whose structure breaks in the middle, raises `CaptureError` naming the file and the
byte offset; a last record cut short (a capture still being written, a copy cut off) ends the
iteration and is reported in `Reader.truncated_at`, as tcpdump and tshark treat it.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterator
from pathlib import Path

PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
    b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
    b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}
PCAPNG_SHB = 0x0A0D0D0A
BYTE_ORDER_MAGIC = 0x1A2B3C4D
MAX_FRAME = 262_144 * 4  # larger than any snaplen in use: a bigger length is corruption


class CaptureError(Exception):
    """A file that is not a capture or is corrupt; the message names the file and offset."""


class Reader:
    """Frames of one pcap/pcapng file. `size` and `offset` (bytes) give progress."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.offset = 0
        self.truncated_at: int | None = None
        self.frames = 0
        try:
            self._f = open(self.path, "rb")  # noqa: SIM115 (closed in close())
        except FileNotFoundError:
            raise CaptureError(f"{self.path}: no such file") from None
        except OSError as e:
            raise CaptureError(f"{self.path}: cannot read: {e.strerror or e}") from None
        self.size = os.fstat(self._f.fileno()).st_size
        if self.size < 4:
            self._f.close()
            raise CaptureError(f"{self.path}: not a pcap or pcapng file (only {self.size} bytes)")
        self._mm: mmap.mmap | None = mmap.mmap(self._f.fileno(), 0, access=mmap.ACCESS_READ)
        head = self._mm[:4]
        if head in PCAP_MAGICS:
            self.kind = "pcap"
        elif struct.unpack("<I", head)[0] == PCAPNG_SHB:
            self.kind = "pcapng"
        else:
            self.close()
            raise CaptureError(f"{self.path}: not a pcap or pcapng file (starts {head.hex()})")
        self.linktype: int | None = None  # pcap: the file's; pcapng: the first interface's

    def close(self) -> None:
        mm, self._mm = getattr(self, "_mm", None), None
        if mm is not None:
            mm.close()
        self._f.close()

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _bad(self, offset: int, why: str) -> CaptureError:
        return CaptureError(f"{self.path}: corrupt {self.kind} at byte offset {offset}: {why}")

    @property
    def mm(self) -> mmap.mmap:
        """The mapped file (the buffer `spans` point into); valid until `close`."""
        assert self._mm is not None
        return self._mm

    def __iter__(self) -> Iterator[tuple[float, int, bytes]]:
        mm = self.mm
        for ts, link, start, end in self.spans():
            yield ts, link, mm[start:end]

    def spans(self) -> Iterator[tuple[float, int, int, int]]:
        """``(timestamp, linktype, start, end)`` of every frame: its bytes are
        ``mm[start:end]``. The file header is read before the first span (`linktype`)."""
        return self._pcap() if self.kind == "pcap" else self._pcapng()

    # -- pcap ----------------------------------------------------------------------------------

    def pcap_header(self) -> tuple[str, float, int, int]:
        """A pcap's file header: byte order, seconds per timestamp unit, link type and the
        largest record length accepted; records start at byte 24. Raises CaptureError."""
        mm, size = self.mm, self.size
        if size < 24:
            raise self._bad(0, f"file header cut short ({size} of 24 bytes)")
        order, unit = PCAP_MAGICS[mm[:4]]
        major, _minor, _zone, _sigfigs, snaplen, link = struct.unpack_from(order + "HHiIII", mm, 4)
        if major != 2:
            raise self._bad(4, f"unknown pcap version {major}")
        linktype = link & 0x0FFFFFFF
        self.linktype = linktype
        limit = max(snaplen, 65535) if 0 < snaplen <= MAX_FRAME else MAX_FRAME
        return order, unit, linktype, limit

    def bad_record(self, offset: int, length: int, limit: int) -> CaptureError:
        return self._bad(offset, f"record length {length} exceeds the snap length {limit}")

    def _pcap(self) -> Iterator[tuple[float, int, int, int]]:
        mm, size = self.mm, self.size
        order, unit, linktype, limit = self.pcap_header()
        rec = struct.Struct(order + "IIII")
        unpack = rec.unpack_from
        off = 24
        n = 0
        try:
            while off + 16 <= size:
                sec, frac, incl, _orig = unpack(mm, off)
                if incl > limit:
                    raise self.bad_record(off, incl, limit)
                end = off + 16 + incl
                if end > size:
                    break
                n += 1
                yield sec + frac * unit, linktype, off + 16, end
                off = end
            if off < size:
                self.truncated_at = off
        finally:
            self.offset = off
            self.frames = n

    # -- pcapng --------------------------------------------------------------------------------

    def _pcapng(self) -> Iterator[tuple[float, int, int, int]]:
        mm, size = self._mm, self.size
        assert mm is not None
        off = 0
        n = 0
        order = "<"
        ifaces: list[tuple[int, float]] = []  # (linktype, seconds per timestamp unit)
        hdr = struct.Struct("<II")
        epb = {"<": struct.Struct("<IIIII"), ">": struct.Struct(">IIIII")}
        try:
            while off + 12 <= size:
                btype, blen = (
                    hdr.unpack_from(mm, off) if order == "<" else struct.unpack_from(">II", mm, off)
                )
                if btype == PCAPNG_SHB:
                    bom = mm[off + 8 : off + 12]
                    if bom == b"\x4d\x3c\x2b\x1a":
                        order = "<"
                    elif bom == b"\x1a\x2b\x3c\x4d":
                        order = ">"
                    else:
                        raise self._bad(off + 8, "bad byte-order magic in a section header")
                    blen = struct.unpack_from(order + "I", mm, off + 4)[0]
                    ifaces = []
                if blen < 12 or blen % 4:
                    raise self._bad(off, f"block length {blen} (block type {btype:#x})")
                end = off + blen
                if end > size:
                    break
                body = off + 8
                if btype == 6:  # enhanced packet block
                    iface, high, low, cap, _orig = epb[order].unpack_from(mm, body)
                    if iface >= len(ifaces):
                        raise self._bad(off, f"packet for undeclared interface {iface}")
                    if body + 20 + cap > end - 4:
                        raise self._bad(off, f"captured length {cap} exceeds its block")
                    link, unit = ifaces[iface]
                    n += 1
                    yield ((high << 32) | low) * unit, link, body + 20, body + 20 + cap
                elif btype == 3:  # simple packet block: no timestamp, interface 0
                    if not ifaces:
                        raise self._bad(off, "simple packet block before any interface")
                    (orig,) = struct.unpack_from(order + "I", mm, body)
                    cap = min(orig, blen - 16)
                    n += 1
                    yield 0.0, ifaces[0][0], body + 4, body + 4 + cap
                elif btype == 2:  # obsolete packet block
                    iface, _drops, high, low, cap, _orig = struct.unpack_from(
                        order + "HHIIII", mm, body
                    )
                    if iface >= len(ifaces) or body + 20 + cap > end - 4:
                        raise self._bad(off, "bad obsolete packet block")
                    link, unit = ifaces[iface]
                    n += 1
                    yield ((high << 32) | low) * unit, link, body + 20, body + 20 + cap
                elif btype == 1:  # interface description block
                    link = struct.unpack_from(order + "H", mm, body)[0]
                    ifaces.append((link, self._tsresol(body + 8, end - 4, order)))
                    if self.linktype is None:
                        self.linktype = link
                off = end
            if off < size:
                self.truncated_at = off
        finally:
            self.offset = off
            self.frames = n

    def _tsresol(self, off: int, end: int, order: str) -> float:
        """Seconds per timestamp unit from an interface block's options (default µs)."""
        mm = self._mm
        assert mm is not None
        while off + 4 <= end:
            code, length = struct.unpack_from(order + "HH", mm, off)
            if code == 0:
                break
            if code == 9 and length >= 1:
                v = mm[off + 4]
                return 2.0 ** -(v & 0x7F) if v & 0x80 else 10.0**-v
            off += 4 + ((length + 3) & ~3)
        return 1e-6
