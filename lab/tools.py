"""Tiny servers that the lab runs inside its hosts: a resolver, a web page, an FTP login, a sink.

They exist so the lab needs nothing beyond Debian's networking tools and this package, and so
their behaviour is fixed (a resolver that answers only lab names, NXDOMAIN otherwise; an FTP
server that only knows USER/PASS). Each runs in the foreground until killed:

    python -m lab.tools dns --listen 203.0.113.53 --record www.example.com=203.0.113.10
    python -m lab.tools http --listen 203.0.113.10 --port 80
    python -m lab.tools ftp --listen 198.18.0.12 --user alice --password secret
    python -m lab.tools sink --listen 203.0.113.10 --port 9000

None of this is on the appliance's packet path; it only makes lab traffic.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import socketserver
import struct
import sys
import threading
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

QTYPE_A = 1
QTYPE_TXT = 16
RCODE_FORMERR = 1
RCODE_NXDOMAIN = 3
RCODE_NOTIMP = 4


class DnsFormatError(ValueError):
    pass


def parse_query(data: bytes) -> tuple[int, int, str, int, int, bytes]:
    """(id, flags, qname, qtype, qclass, raw question) of a one-question DNS query."""
    if len(data) < 12:
        raise DnsFormatError("short header")
    qid, flags, qdcount = struct.unpack_from("!HHH", data)
    if qdcount != 1:
        raise DnsFormatError("expected one question")
    pos, labels = 12, []
    while True:
        if pos >= len(data):
            raise DnsFormatError("truncated name")
        n = data[pos]
        if n == 0:
            pos += 1
            break
        if n & 0xC0 or pos + 1 + n > len(data):
            raise DnsFormatError("bad label")
        labels.append(data[pos + 1 : pos + 1 + n].decode("ascii", "replace"))
        pos += 1 + n
    if pos + 4 > len(data):
        raise DnsFormatError("truncated question")
    qtype, qclass = struct.unpack_from("!HH", data, pos)
    return qid, flags, ".".join(labels).lower(), qtype, qclass, data[12 : pos + 4]


def lookup(records: Mapping[str, Sequence[str]], name: str) -> Sequence[str] | None:
    """Addresses for `name`: an exact record, else the nearest `*.parent` wildcard, else None."""
    if name in records:
        return records[name]
    parts = name.split(".")
    for i in range(1, len(parts)):
        wild = "*." + ".".join(parts[i:])
        if wild in records:
            return records[wild]
    return None


def answer(query: bytes, records: Mapping[str, Sequence[str]], ttl: int = 60) -> bytes | None:
    """The response to one query: A records for known names, NXDOMAIN for unknown names."""
    try:
        qid, flags, name, qtype, qclass, question = parse_query(query)
    except DnsFormatError:
        if len(query) < 2:
            return None
        return struct.pack("!HHHHHH", struct.unpack_from("!H", query)[0], 0x8000 | 1, 0, 0, 0, 0)
    if flags & 0x8000:  # a response, not a query: never answer those
        return None
    rd = flags & 0x0100
    opcode = (flags >> 11) & 0xF
    rcode, answers = 0, b""
    count = 0
    if opcode != 0:
        rcode = RCODE_NOTIMP
    else:
        addrs = lookup(records, name)
        if addrs is None:
            rcode = RCODE_NXDOMAIN
        elif qtype == QTYPE_A and qclass == 1:
            for a in addrs:
                answers += struct.pack("!HHHIH", 0xC00C, QTYPE_A, 1, ttl, 4) + socket.inet_aton(a)
                count += 1
    head = struct.pack("!HHHHHH", qid, 0x8400 | rd | (opcode << 11) | rcode, 1, count, 0, 0)
    return head + question + answers


def parse_records(items: Sequence[str]) -> dict[str, list[str]]:
    """`name=addr[,addr]` arguments into a name → addresses map (names lower-cased)."""
    out: dict[str, list[str]] = {}
    for item in items:
        name, sep, addrs = item.partition("=")
        if not sep or not name:
            raise ValueError(f"record {item!r}: expected NAME=ADDRESS[,ADDRESS]")
        for a in addrs.split(","):
            socket.inet_aton(a)  # raises OSError on a bad address
            out.setdefault(name.strip(".").lower(), []).append(a)
    return out


def serve_dns(listen: str, port: int, records: Mapping[str, Sequence[str]]) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((listen, port))
    while True:
        data, peer = sock.recvfrom(4096)
        reply = answer(data, records)
        if reply is not None:
            sock.sendto(reply, peer)


class _Page(BaseHTTPRequestHandler):
    server_version = "lab-web/1"

    def do_GET(self) -> None:
        body = f"<html><body>lab page {self.path}</body></html>\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


def serve_http(listen: str, port: int) -> None:
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer((listen, port), _Page).serve_forever()


def ftp_session(rfile, wfile, user: str, password: str) -> None:
    """The control-channel dialogue of a login-only FTP server."""

    def say(line: str) -> None:
        wfile.write(line.encode() + b"\r\n")
        wfile.flush()

    say("220 lab FTP ready")
    given_user = None
    for _ in range(100):  # bounded: a session is a few commands
        raw = rfile.readline(512)
        if not raw:
            return
        cmd, _sep, arg = raw.decode("latin-1").strip().partition(" ")
        cmd = cmd.upper()
        if cmd == "USER":
            given_user = arg
            say("331 Password required")
        elif cmd == "PASS":
            if given_user == user and arg == password:
                say("230 Logged in")
            else:
                say("530 Login incorrect")
            given_user = None
        elif cmd == "QUIT":
            say("221 Bye")
            return
        elif cmd == "SYST":
            say("215 UNIX Type: L8")
        elif cmd in ("NOOP", "TYPE"):
            say("200 OK")
        else:
            say("502 Not implemented")


def serve_ftp(listen: str, port: int, user: str, password: str) -> None:
    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            with contextlib.suppress(OSError):
                ftp_session(self.rfile, self.wfile, user, password)

    socketserver.ThreadingTCPServer.allow_reuse_address = True
    socketserver.ThreadingTCPServer.daemon_threads = True
    socketserver.ThreadingTCPServer((listen, port), Handler).serve_forever()


def serve_sink(listen: str, port: int, threads: int = 2) -> None:
    """Accept and close at once: the far end of a new-connections-per-second test."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((listen, port))
    sock.listen(4096)

    def loop() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    workers = [threading.Thread(target=loop, daemon=True) for _ in range(max(1, threads))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lab.tools", description=__doc__)
    sub = p.add_subparsers(dest="kind", required=True)
    dns = sub.add_parser("dns", help="resolver for lab names (NXDOMAIN for the rest)")
    dns.add_argument("--record", action="append", default=[], help="NAME=ADDRESS[,ADDRESS]")
    for name, port in (("dns", 53), ("http", 80), ("ftp", 21), ("sink", 9000)):
        sp = dns if name == "dns" else sub.add_parser(name)
        sp.add_argument("--listen", default="0.0.0.0")
        sp.add_argument("--port", type=int, default=port)
    ftp = sub.choices["ftp"]
    ftp.add_argument("--user", default="alice")
    ftp.add_argument("--password", default="wonderland")
    sub.choices["sink"].add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        if args.kind == "dns":
            serve_dns(args.listen, args.port, parse_records(args.record))
        elif args.kind == "http":
            serve_http(args.listen, args.port)
        elif args.kind == "ftp":
            serve_ftp(args.listen, args.port, args.user, args.password)
        else:
            serve_sink(args.listen, args.port, args.threads)
    except (OSError, ValueError) as e:
        print(f"labtools {args.kind}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
