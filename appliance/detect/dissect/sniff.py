"""Cleartext protocols known by their first bytes, on any port.

The engine asks this about the first payload a server sends before its client said anything
(FTP, SMTP, POP3 and IMAP servers greet first; a Telnet server opens with option negotiation);
HTTP is known from the client's request line (`dissect.http`). Only the start of one segment is
read, so it costs nothing on flows that are not cleartext.
"""

from __future__ import annotations

IAC = 0xFF


def server_greeting(payload: bytes) -> str:
    """The protocol whose server greeting `payload` starts with: ``ftp``, ``smtp``, ``pop3``,
    ``imap``, ``telnet``, or "" when it is none of them."""
    if len(payload) < 3:
        return ""
    first = payload[0]
    if first == IAC:
        return "telnet" if 251 <= payload[1] <= 254 else ""
    if first == 0x32:  # "2": a "220 " / "220-" reply (FTP and SMTP both greet with it)
        if payload[:3] != b"220" or payload[3:4] not in (b" ", b"-"):
            return ""
        line = payload[:200].split(b"\n", 1)[0].upper()
        return "smtp" if b"SMTP" in line else "ftp"
    if payload[:3] == b"+OK":
        return "pop3"
    if payload[:4] == b"* OK" or payload[:9] == b"* PREAUTH":
        return "imap"
    return ""
