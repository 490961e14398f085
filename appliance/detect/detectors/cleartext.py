"""`cleartext`: a username and password crossing the network unencrypted.

FTP, Telnet, POP3 and IMAP logins and HTTP Basic authentication can be read by anyone on the
path. The alert says that it happened, with which protocol and between which hosts; it never
carries the username or the password (nor anything else from the payload).

- FTP (port 21): ``USER`` then ``PASS`` with a password; anonymous logins are not secrets.
- Telnet (23): the server prompts for a password and the client answers.
- POP3 (110): ``USER``/``PASS``, or ``AUTH PLAIN``/``AUTH LOGIN`` (base64 is not encryption).
- IMAP (143): ``LOGIN``, or ``AUTHENTICATE PLAIN``/``LOGIN``.
- SMTP (25, 587): ``AUTH PLAIN`` or ``AUTH LOGIN`` with the credentials that follow (an
  initial response on the command line, or the client's next line); CRAM-MD5 and the like are
  not secrets on the wire.
- HTTP: an ``Authorization: Basic`` header (the dissector only says it was there) on any
  request of the connection within its head: the usual case is the request a client repeats
  with credentials after the server's ``401`` (the alert then says so). Once per connection.

The same protocols are found by content on any port (an FTP server on 8021, a web server on
8080): the engine knows them from the server's greeting or the request line (`flow.app`).

A login comes a few packets into a connection, past the flow head the kernel normally queues:
`<protocol>_head_packets` says how many packets (both directions) of each protocol's flows are
looked at; `deep_ports` asks the ruleset for these heads on the usual ports and `app_heads`
asks the engine to keep flows found by content queued as long (the kernel's DEEP mark). TLS
flows are never kept: they pass at their ClientHello. After ``AUTH TLS`` / ``STLS`` /
``STARTTLS`` the rest is encrypted and the connection is no longer watched. State lives in the
flow's note (flows are bounded and aged by the flow table).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from appliance.alerts.model import Signature
from appliance.detect.base import Detector, Loader, Options
from appliance.packet.decode import TCP
from appliance.packet.flows import VERDICT_PASS

if TYPE_CHECKING:
    from appliance.detect.engine import Context
    from appliance.detect.records import HttpRequest
    from appliance.packet.decode import Packet
    from appliance.packet.flows import Flow

CATEGORY = "Cleartext credentials"
WHAT = "a username and password were sent unencrypted"
FTP = Signature(
    8109001, "Cleartext credentials: FTP login with a password sent unencrypted", CATEGORY, 2
)
TELNET = Signature(
    8109002, "Cleartext credentials: Telnet login with a password sent unencrypted", CATEGORY, 2
)
HTTP_BASIC = Signature(
    8109003,
    "Cleartext credentials: web login (HTTP Basic authentication) sent unencrypted",
    CATEGORY,
    2,
)
POP3 = Signature(8109004, "Cleartext credentials: POP3 mail login sent unencrypted", CATEGORY, 2)
IMAP = Signature(8109005, "Cleartext credentials: IMAP mail login sent unencrypted", CATEGORY, 2)
SMTP = Signature(
    8109006, "Cleartext credentials: SMTP mail login (AUTH) sent unencrypted", CATEGORY, 2
)

PROTOCOLS = ("ftp", "telnet", "http", "pop3", "imap", "smtp")
_PORT_PROTOCOL = {21: "ftp", 23: "telnet", 110: "pop3", 143: "imap", 25: "smtp", 587: "smtp"}
# Head packets (both directions) per protocol: a banner, option negotiation, a login typed one
# character per packet (Telnet), a 401 and the request repeated with credentials (HTTP).
HEADS = {"ftp": 40, "telnet": 60, "pop3": 30, "imap": 30, "smtp": 30, "http": 24}
_ANONYMOUS = (b"anonymous", b"ftp")
_CLEAR_SASL = (b"PLAIN", b"LOGIN")
IAC, SB, SE = 255, 250, 240


def telnet_text(data: bytes) -> bytes:
    """Telnet data with option negotiation (IAC sequences) removed."""
    if IAC not in data:
        return data
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        b = data[i]
        if b != IAC:
            out.append(b)
            i += 1
        elif i + 1 < n and data[i + 1] == IAC:  # an escaped 255 data byte
            out.append(IAC)
            i += 2
        elif i + 1 < n and data[i + 1] == SB:  # subnegotiation: skip to IAC SE
            end = data.find(bytes((IAC, SE)), i + 2)
            i = n if end < 0 else end + 2
        else:
            i += 3 if i + 1 < n and 251 <= data[i + 1] <= 254 else 2  # WILL/WONT/DO/DONT opt
    return bytes(out)


def first_line_words(payload: bytes, n: int) -> list[bytes]:
    """Up to `n` + 1 whitespace-separated words of the payload's first line."""
    line = payload.split(b"\n", 1)[0].strip()
    return line.split(None, n)


class CleartextDetector(Detector):
    name = "cleartext"
    # replay --workers (Detector.partition): state only per flow.
    partition = "flow"
    packet_passed = False  # the packet hook returns at once for a passed flow
    signatures = (FTP, TELNET, HTTP_BASIC, POP3, IMAP, SMTP)

    def __init__(self) -> None:
        # Port → head packets for the ruleset (the usual ports of the protocols watched), and
        # protocol → head packets for the engine (flows found by content on any port).
        self.deep_ports: dict[int, int] = {}
        self.app_heads: dict[str, int] = {}

    @classmethod
    def load(cls, loader: Loader) -> None:
        loader.add_option(
            "protocols",
            tuple[str, ...],
            PROTOCOLS,
            f"Protocols whose cleartext logins are reported (any of: {', '.join(PROTOCOLS)}).",
            choices=PROTOCOLS,
            remote=True,
        )
        for proto, n in HEADS.items():
            loader.add_option(
                f"{proto}_head_packets",
                int,
                n,
                f"Packets (both directions) of each {proto.upper()} connection looked at "
                "(on its usual ports and wherever it is found by content).",
                range=(1, 1000),
                remote=True,
                remote_range=(2, 100),
            )

    def configure(self, opts: Options) -> None:
        self.protocols = frozenset(opts.protocols)
        self.heads = {p: int(getattr(opts, f"{p}_head_packets")) for p in self.protocols}
        self._ports = {
            port: proto for port, proto in _PORT_PROTOCOL.items() if proto in self.protocols
        }
        self.deep_ports = {port: self.heads[proto] for port, proto in self._ports.items()}
        self.app_heads = dict(self.heads)

    # -- hooks -------------------------------------------------------------------------------

    def packet(self, ctx: Context, pkt: Packet, flow: Flow, from_client: bool) -> None:
        if not pkt.payload_len or pkt.proto != TCP or flow.verdict == VERDICT_PASS:
            return
        app = flow.app
        proto = app if app in self.heads else self._ports.get(flow.server_port)
        if proto is None or flow.pkts_c + flow.pkts_s > self.heads[proto]:
            return  # past the head: the kernel queues no more of it
        if proto == "http":
            if not from_client and pkt.payload[:12] in (b"HTTP/1.1 401", b"HTTP/1.0 401"):
                flow.note(self.name)["challenged"] = True
            return
        note = flow.note(self.name)
        if note.get("done"):
            return
        payload = pkt.payload
        if proto == "telnet":
            self._telnet(ctx, pkt, flow, note, payload, from_client)
        elif from_client:
            if proto == "ftp":
                self._ftp(ctx, pkt, flow, note, payload)
            elif proto == "pop3":
                self._pop3(ctx, pkt, flow, note, payload)
            elif proto == "smtp":
                self._smtp(ctx, pkt, flow, note, payload)
            else:
                self._imap(ctx, pkt, flow, note, payload)

    def http(self, ctx: Context, pkt: Packet, flow: Flow, req: HttpRequest) -> None:
        if not req.basic_auth or "http" not in self.protocols:
            return
        note = flow.note(self.name)
        if note.get("done"):
            return
        note["done"] = True  # one alert per connection (every request of it is looked at)
        details = {"protocol": "HTTP", "what": WHAT}
        if note.get("challenged"):
            details["after"] = "401"  # the server asked for them: a login, not a stray header
        ctx.alert(HTTP_BASIC, pkt=pkt, flow=flow, app=req.eve(), details=details)

    # -- protocols ---------------------------------------------------------------------------

    def _ftp(self, ctx: Context, pkt: Packet, flow: Flow, note: dict, payload: bytes) -> None:
        words = first_line_words(payload, 1)
        if not words:
            return
        cmd = words[0].upper()
        if cmd == b"USER":
            note["user"] = True
            note["anonymous"] = len(words) > 1 and words[1].lower() in _ANONYMOUS
        elif cmd == b"AUTH":
            note["done"] = True  # AUTH TLS / SSL: the login that follows is encrypted
        elif cmd == b"PASS" and len(words) > 1 and note.get("user") and not note.get("anonymous"):
            self._report(ctx, pkt, flow, note, FTP, "FTP")

    def _telnet(
        self,
        ctx: Context,
        pkt: Packet,
        flow: Flow,
        note: dict,
        payload: bytes,
        from_client: bool,
    ) -> None:
        text = telnet_text(payload)
        if not from_client:
            low = text.lower()
            if b"password" in low or b"passcode" in low:
                note["prompt"] = True
        elif note.get("prompt") and text.strip(b"\r\n\x00"):
            self._report(ctx, pkt, flow, note, TELNET, "Telnet")

    def _pop3(self, ctx: Context, pkt: Packet, flow: Flow, note: dict, payload: bytes) -> None:
        words = first_line_words(payload, 2)
        if not words:
            return
        cmd = words[0].upper()
        if cmd == b"USER":
            note["user"] = True
        elif cmd == b"STLS":
            note["done"] = True
        elif (cmd == b"PASS" and note.get("user") and len(words) > 1) or (
            cmd == b"AUTH" and len(words) > 1 and words[1].upper() in _CLEAR_SASL
        ):
            self._report(ctx, pkt, flow, note, POP3, "POP3")

    def _imap(self, ctx: Context, pkt: Packet, flow: Flow, note: dict, payload: bytes) -> None:
        words = first_line_words(payload, 3)
        if len(words) < 2:
            return
        cmd = words[1].upper()
        if cmd == b"STARTTLS":
            note["done"] = True
        elif (cmd == b"LOGIN" and len(words) > 2) or (
            cmd == b"AUTHENTICATE" and len(words) > 2 and words[2].upper() in _CLEAR_SASL
        ):
            self._report(ctx, pkt, flow, note, IMAP, "IMAP")

    def _smtp(self, ctx: Context, pkt: Packet, flow: Flow, note: dict, payload: bytes) -> None:
        if note.get("sasl"):  # the line after AUTH PLAIN/LOGIN: the credentials (or "*")
            if payload.strip() not in (b"", b"*"):
                self._report(ctx, pkt, flow, note, SMTP, "SMTP")
            else:
                note["sasl"] = False
            return
        words = first_line_words(payload, 2)
        if not words:
            return
        cmd = words[0].upper()
        if cmd == b"STARTTLS":
            note["done"] = True
        elif cmd == b"AUTH" and len(words) > 1 and words[1].upper() in _CLEAR_SASL:
            if len(words) > 2 and words[2] != b"=":  # an initial response: the credentials
                self._report(ctx, pkt, flow, note, SMTP, "SMTP")
            else:
                note["sasl"] = True

    def _report(
        self, ctx: Context, pkt: Packet, flow: Flow, note: dict, sig: Signature, proto: str
    ) -> None:
        note["done"] = True  # one alert per connection
        ctx.alert(sig, pkt=pkt, flow=flow, details={"protocol": proto, "what": WHAT})
