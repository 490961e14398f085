"""The collector's MQTT 5 receive path: one TLS connection that only subscribes and consumes.

Why not paho here (the operator tools and the devices use paho): paho's receive path costs the
collector ~100-150 µs of CPU per message (one select() and three SSL reads per packet, a
Properties object built per PUBLISH, a callback and a queue hand-off per message, and with
``manual_ack`` one queued packet, wake-up byte and TLS write per PUBACK). This reads what the
socket holds in one go (up to 256 KiB per SSL read), cuts the PUBLISH packets out of the buffer
(properties skipped by their length, never decoded) and writes the PUBACKs of a committed batch
in ONE TLS write. What it speaks, and no more:

- CONNECT (MQTT 5, clean start off, Session Expiry Interval, Receive Maximum, no will, no user
  name: the certificate is the identity), CONNACK (reason code, session present, a Server Keep
  Alive if the broker sets one);
- SUBSCRIBE / SUBACK (QoS 1 maximum: the broker never sends us QoS 2);
- PUBLISH in (QoS 0 and 1; no Topic Alias Maximum is sent, so the broker uses no aliases),
  PUBACK out (the two-byte form: reason Success);
- PINGREQ / PINGRESP (keep-alive), DISCONNECT both ways (a broker's reason code and reason
  string are kept);
- for the bench's simulated devices only: PUBLISH out (`publish_packet`, encoded once) and
  PUBACK in (counted, refusals apart).

Anything else from the broker is a protocol error: the connection is dropped and the collector
reconnects; its unacknowledged messages come again (at-least-once, the store dedupes).
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import struct
import time
from dataclasses import dataclass

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

READ_CHUNK = 256 * 1024
MAX_PACKET = 16 * 1024 * 1024  # a broker packet beyond this is a protocol error

PUBLISH, PUBACK, PINGREQ, PINGRESP = 0x30, 0x40, 0xC0, 0xD0
CONNECT, CONNACK, SUBSCRIBE, SUBACK, DISCONNECT = 0x10, 0x20, 0x82, 0x90, 0xE0


class ProtocolError(ConnectionError):
    """The broker sent something this client does not speak (or closed the connection)."""


class Refused(ConnectionError):
    """The broker refused the connection or a subscription (reason code in the message)."""


@dataclass(slots=True)
class Message:
    topic: str
    payload: bytes
    qos: int
    mid: int
    retain: bool
    dup: bool


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _varint(len(body)) + body


def _str(s: str) -> bytes:
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def _read_varint(buf: bytes | bytearray, pos: int) -> tuple[int, int]:
    """(value, position after it); raises IndexError when the buffer ends inside it."""
    value = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7
        if shift > 21:
            raise ProtocolError("malformed variable byte integer")


# Property identifier -> how its value is laid out (MQTT 5, 2.2.2.2), for the rare packets
# whose properties we read (CONNACK, SUBACK, DISCONNECT); a PUBLISH's are skipped whole.
_BYTE, _TWO, _FOUR, _VAR, _BIN, _PAIR = range(6)
_PROP_KIND = {
    0x01: _BYTE, 0x02: _FOUR, 0x03: _BIN, 0x08: _BIN, 0x09: _BIN, 0x0B: _VAR, 0x11: _FOUR,
    0x12: _BIN, 0x13: _TWO, 0x15: _BIN, 0x16: _BIN, 0x17: _BYTE, 0x18: _FOUR, 0x19: _BYTE,
    0x1A: _BIN, 0x1C: _BIN, 0x1F: _BIN, 0x21: _TWO, 0x22: _TWO, 0x23: _TWO, 0x24: _BYTE,
    0x25: _BYTE, 0x26: _PAIR, 0x27: _FOUR, 0x28: _BYTE, 0x29: _BYTE, 0x2A: _BYTE,
}  # fmt: skip


def parse_properties(body: bytes, pos: int) -> tuple[dict[int, int | bytes], int]:
    """The properties at `pos` ({identifier: int or bytes}; user properties dropped) and the
    position after them."""
    length, pos = _read_varint(body, pos)
    end = pos + length
    if end > len(body):
        raise ProtocolError("properties beyond the packet")
    props: dict[int, int | bytes] = {}
    while pos < end:
        ident = body[pos]
        pos += 1
        kind = _PROP_KIND.get(ident)
        if kind is None:
            raise ProtocolError(f"unknown property 0x{ident:02x}")
        if kind == _BYTE:
            props[ident], pos = body[pos], pos + 1
        elif kind == _TWO:
            props[ident], pos = int.from_bytes(body[pos : pos + 2]), pos + 2
        elif kind == _FOUR:
            props[ident], pos = int.from_bytes(body[pos : pos + 4]), pos + 4
        elif kind == _VAR:
            props[ident], pos = _read_varint(body, pos)
        else:
            for _ in range(2 if kind == _PAIR else 1):
                n = int.from_bytes(body[pos : pos + 2])
                if kind == _BIN:
                    props[ident] = bytes(body[pos + 2 : pos + 2 + n])
                pos += 2 + n
    if pos != end:
        raise ProtocolError("malformed properties")
    return props, end


def reason_text(packet_type: int, code: int, props: dict[int, int | bytes] | None = None) -> str:
    """The reason code's name (paho's table), with the broker's reason string if it sent one."""
    try:
        name = str(ReasonCode(packet_type, identifier=code))
    except Exception:  # a code the table does not know
        name = f"reason 0x{code:02x}"
    why = (props or {}).get(0x1F)
    return f"{name} ({why.decode(errors='replace')})" if isinstance(why, bytes) else name


def split_packets(buf: bytearray) -> tuple[list[tuple[int, bytes]], int]:
    """The complete packets at the start of `buf` as (first byte, body), and how many bytes
    they took (the caller deletes them; the rest is a packet still arriving)."""
    out = []
    pos, n = 0, len(buf)
    while pos + 2 <= n:
        try:
            length, start = _read_varint(buf, pos + 1)
        except IndexError:
            break
        if length > MAX_PACKET:
            raise ProtocolError(f"packet of {length} bytes")
        end = start + length
        if end > n:
            break
        out.append((buf[pos], bytes(buf[start:end])))
        pos = end
    return out, pos


def publish_packet(topic: str, payload: bytes, mid: int, qos: int = 1) -> bytes:
    """A PUBLISH without properties (QoS 0: `mid` unused)."""
    body = _str(topic) + (struct.pack("!H", mid) if qos else b"") + b"\x00" + payload
    return _packet(PUBLISH | qos << 1, body)


def decode_publish(first: int, body: bytes) -> Message:
    qos = (first >> 1) & 3
    if qos > 1:
        raise ProtocolError("QoS 2 PUBLISH on a QoS 1 subscription")
    tlen = int.from_bytes(body[:2])
    pos = 2 + tlen
    if tlen == 0 or pos > len(body):
        raise ProtocolError("PUBLISH without a topic (aliases are not enabled)")
    topic = body[2:pos].decode(errors="replace")  # the broker checks UTF-8; never loop on one
    mid = 0
    if qos:
        mid = int.from_bytes(body[pos : pos + 2])
        pos += 2
    b = body[pos]
    if b < 0x80:  # properties length: one byte up to 127 (the common case)
        pos += 1 + b
    else:
        length, pos = _read_varint(body, pos)
        pos += length
    return Message(topic, body[pos:], qos, mid, bool(first & 1), bool(first & 8))


def _poll(sock: socket.socket, mask: int, timeout: float) -> int:
    """The events of `mask` on `sock` within `timeout` s (poll: no FD_SETSIZE limit, the bench
    has 1 000 sockets in one process)."""
    p = select.poll()
    p.register(sock, mask)
    got = p.poll(max(0, int(timeout * 1000)))
    return got[0][1] if got else 0


class Session:
    """One connection. Not thread-safe: one thread reads and writes (the collector's IO
    thread); others hand it PUBACKs to write."""

    def __init__(
        self,
        host: str,
        port: int,
        context: ssl.SSLContext | None,
        client_id: str,
        *,
        keepalive: int = 30,
        session_expiry: int = 0,
        receive_maximum: int = 0,
        timeout: float = 10.0,
    ) -> None:
        self.host, self.port, self.client_id = host, port, client_id
        self.keepalive = keepalive
        self.session_present = False
        self._buf = bytearray()
        self._out = bytearray()
        self._pending: list[Message] = []  # publishes that arrived while we waited for a SUBACK
        self._mid = 0
        self.pubacks = self.refused = 0  # answers to our own PUBLISHes (bench devices)
        raw = socket.create_connection((host, port), timeout)
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock: socket.socket = (
                context.wrap_socket(raw, server_hostname=host) if context is not None else raw
            )
        except BaseException:
            raw.close()
            raise
        try:
            props = b""
            if session_expiry:
                props += b"\x11" + struct.pack("!I", session_expiry)
            if receive_maximum:
                props += b"\x21" + struct.pack("!H", receive_maximum)
            body = (_str("MQTT") + b"\x05\x00" + struct.pack("!H", keepalive)
                    + _varint(len(props)) + props + _str(client_id))  # fmt: skip
            self.sock.sendall(_packet(CONNECT, body))
            _first, ack = self._wait_for(CONNACK, timeout)
            if len(ack) < 2:
                raise ProtocolError("short CONNACK")
            aprops = parse_properties(ack, 2)[0] if len(ack) > 2 else {}
            if ack[1] >= 0x80:
                raise Refused(reason_text(PacketTypes.CONNACK, ack[1], aprops))
            self.session_present = bool(ack[0] & 1)
            server_ka = aprops.get(0x13)
            if isinstance(server_ka, int):
                self.keepalive = server_ka
            self.sock.setblocking(False)
        except BaseException:
            self.sock.close()
            raise
        self.last_in = self.last_out = time.monotonic()
        self._ping_sent = 0.0

    # -- blocking set-up steps ------------------------------------------------------------------

    def _wait_for(self, want: int, timeout: float) -> tuple[int, bytes]:
        """Read until a packet of type `want` arrives (PUBLISH packets on the way are kept)."""
        deadline = time.monotonic() + timeout
        while True:
            packets, used = split_packets(self._buf)
            for i, (first, body) in enumerate(packets):
                if first & 0xF0 == want & 0xF0:
                    rest = packets[i + 1 :]
                    self._keep(packets[:i])
                    # Put the rest back in front of the buffer's unread bytes.
                    tail = bytes(self._buf[used:])
                    self._buf = bytearray(b"".join(_packet(f, b) for f, b in rest) + tail)
                    return first, body
            self._keep(packets)
            del self._buf[:used]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no answer from {self.host}:{self.port} in {timeout:g} s")
            if self.sock.gettimeout() == 0.0:
                if not self._ready(remaining):
                    continue
                if self._recv_all():
                    packets, _ = split_packets(self._buf)
                    self._keep(packets)  # a DISCONNECT raises with its reason
                    raise ProtocolError("the broker closed the connection")
            else:
                self.sock.settimeout(remaining)
                data = self.sock.recv(READ_CHUNK)
                if not data:
                    raise ProtocolError("the broker closed the connection")
                self._buf += data

    def _keep(self, packets: list[tuple[int, bytes]]) -> None:
        for first, body in packets:
            m = self._handle(first, body)
            if m is not None:
                self._pending.append(m)

    def subscribe(self, filters: list[tuple[str, int]], timeout: float = 10.0) -> list[int]:
        """Subscribe and wait for the SUBACK; its reason codes (>= 0x80: refused)."""
        self._mid = self._mid % 65535 + 1
        body = struct.pack("!H", self._mid) + b"\x00"
        body += b"".join(_str(f) + bytes([qos]) for f, qos in filters)
        self.send(_packet(SUBSCRIBE, body))
        while True:
            _first, ack = self._wait_for(SUBACK, timeout)
            if int.from_bytes(ack[:2]) == self._mid:
                break
        _props, pos = parse_properties(ack, 2)
        return list(ack[pos:])

    # -- the receive loop -----------------------------------------------------------------------

    def fileno(self) -> int:
        return self.sock.fileno()

    def _ready(self, timeout: float) -> bool:
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            return True
        events = _poll(self.sock, select.POLLIN | (select.POLLOUT if self._out else 0), timeout)
        if events & select.POLLOUT:
            self.flush()
        return bool(events & (select.POLLIN | select.POLLERR | select.POLLHUP))

    def _recv_all(self, limit: int = 4 * READ_CHUNK) -> bool:
        """What the socket holds now (at most `limit` bytes) into the buffer; True when the
        broker closed the connection (after what it sent before)."""
        got = 0
        while got < limit:
            try:
                data = self.sock.recv(READ_CHUNK)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                return False
            if not data:
                return True
            self._buf += data
            got += len(data)
            self.last_in = time.monotonic()
        return False

    def read(self) -> list[Message]:
        """The messages the socket holds now (call when it is readable; [] if none yet)."""
        out, self._pending = self._pending, []
        closed = self._recv_all()
        packets, used = split_packets(self._buf)
        del self._buf[:used]
        for first, body in packets:
            if first & 0xF0 == PUBLISH:
                out.append(decode_publish(first, body))
            else:
                m = self._handle(first, body)  # a DISCONNECT raises with the broker's reason
                if m is not None:
                    out.append(m)
        if closed:
            raise ProtocolError("the broker closed the connection")
        return out

    def has_buffered(self) -> bool:
        return bool(self._pending) or (
            isinstance(self.sock, ssl.SSLSocket) and self.sock.pending() > 0
        )

    def _handle(self, first: int, body: bytes) -> Message | None:
        kind = first & 0xF0
        if kind == PUBLISH:
            return decode_publish(first, body)
        if kind == PUBACK:
            self.pubacks += 1
            if len(body) > 2 and body[2] >= 0x80:
                self.refused += 1
            return None
        if kind == PINGRESP:
            self._ping_sent = 0.0
            return None
        if kind == DISCONNECT:
            code = body[0] if body else 0
            props = parse_properties(body, 1)[0] if len(body) > 1 else {}
            raise ProtocolError(
                f"the broker disconnected us: {reason_text(PacketTypes.DISCONNECT, code, props)}"
            )
        if kind in (CONNACK, SUBACK):
            raise ProtocolError(f"unexpected packet 0x{first:02x}")
        raise ProtocolError(f"packet 0x{first:02x} is not spoken here")

    # -- writing --------------------------------------------------------------------------------

    def ack(self, mids: list[int]) -> None:
        """Queue PUBACKs (Success) for these message ids; `flush` writes them in one go."""
        self._out += b"".join(struct.pack("!BBH", PUBACK, 2, m) for m in mids)

    def want_write(self) -> bool:
        return bool(self._out)

    def send(self, data: bytes) -> None:
        self._out += data
        self.flush()

    def flush(self, timeout: float = 10.0) -> None:
        """Write what is queued (one TLS write when the socket takes it)."""
        deadline = time.monotonic() + timeout
        while self._out:
            try:
                n = self.sock.send(self._out)
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("the broker takes no data") from None
                _poll(self.sock, select.POLLOUT, min(remaining, 1.0))
                continue
            del self._out[:n]
            self.last_out = time.monotonic()

    def keepalive_due(self) -> float:
        """Send a PINGREQ when we were quiet for the keep-alive; raise when the broker did not
        answer one within half a keep-alive. Seconds until the next check."""
        if not self.keepalive:
            return 60.0
        now = time.monotonic()
        if self._ping_sent and now - self._ping_sent > self.keepalive / 2 + 1:
            raise ProtocolError(f"no PINGRESP in {self.keepalive / 2 + 1:g} s")
        if not self._ping_sent and now - self.last_out >= self.keepalive * 0.75:
            self.send(bytes([PINGREQ, 0]))
            self._ping_sent = now
        return max(0.5, self.keepalive * 0.25)

    def close(self, graceful: bool = True) -> None:
        """DISCONNECT (reason Success: the session stays, no will) and close."""
        if graceful:
            with contextlib.suppress(OSError, TimeoutError, ValueError):
                self.send(bytes([DISCONNECT, 0]))
        with contextlib.suppress(OSError):
            self.sock.close()
