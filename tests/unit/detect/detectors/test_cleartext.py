"""cleartext: FTP, Telnet, POP3 and IMAP logins and HTTP Basic auth in the clear are reported;
anonymous FTP, STARTTLS, challenge-response logins and tokens are not; no username or password
ever reaches an alert."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP

from appliance.config import ConfigError
from appliance.detect.detectors.cleartext import HEADS, telnet_text
from appliance.packet.flows import DEEP_ANY_PORT, VERDICT_DEEP, VERDICT_NONE, VERDICT_PASS
from tests.helpers import Harness, at, make_config, replay_alerts, run_packets, write_pcap

PC1, PC2 = "198.18.0.11", "198.18.0.12"
SRV = "203.0.113.10"
ATK = "198.51.100.23"
T0 = 1_800_000_000.0
USER, PASSWORD = "alice.o", "Tr0ub4dor&3-secret"
IAC, DO, WILL, SB, SE = 255, 253, 251, 250, 240


def session(
    talk: list[tuple[bool, bytes]],
    port: int,
    ts: float = T0,
    client: str = PC1,
    server: str = SRV,
    sport: int = 40000,
) -> list:
    """A TCP handshake, then each (from_client, payload) segment in order."""
    c, s = IP(src=client, dst=server), IP(src=server, dst=client)
    pkts = [
        at(c / TCP(sport=sport, dport=port, flags="S", seq=1000), ts),
        at(s / TCP(sport=port, dport=sport, flags="SA", seq=5000, ack=1001), ts + 0.001),
        at(c / TCP(sport=sport, dport=port, flags="A", seq=1001, ack=5001), ts + 0.002),
    ]
    cseq, sseq = 1001, 5001
    t = ts + 0.01
    for from_client, data in talk:
        if from_client:
            seg = c / TCP(sport=sport, dport=port, flags="PA", seq=cseq, ack=sseq) / data
            cseq += len(data)
        else:
            seg = s / TCP(sport=port, dport=sport, flags="PA", seq=sseq, ack=cseq) / data
            sseq += len(data)
        pkts.append(at(seg, t))
        t += 0.01
    return pkts


def ftp_login(user: str = USER, password: str = PASSWORD, tls: bool = False) -> list:
    talk = [(False, b"220 (vsFTPd 3.0.5)\r\n")]
    if tls:
        talk += [(True, b"AUTH TLS\r\n"), (False, b"234 Proceed.\r\n"), (True, b"\x16\x03\x01")]
    talk += [
        (True, f"USER {user}\r\n".encode()),
        (False, b"331 Please specify the password.\r\n"),
        (True, f"PASS {password}\r\n".encode()),
        (False, b"230 Login successful.\r\n"),
        (True, b"SYST\r\n"),
    ]
    return talk


def telnet_login(per_char: bool = True) -> list:
    talk = [
        (False, bytes((IAC, DO, 24, IAC, DO, 32, IAC, WILL, 1))),
        (True, bytes((IAC, WILL, 24, IAC, SB, 24, 0)) + b"xterm" + bytes((IAC, SE))),
        (False, b"\r\nrouter login: "),
    ]
    for word, prompt in ((USER, b"Password: "), (PASSWORD, b"\r\nWelcome\r\n$ ")):
        if per_char:
            for ch in word:
                talk.append((True, ch.encode()))
                talk.append((False, ch.encode() if prompt == b"Password: " else b""))
        else:
            talk.append((True, word.encode()))
        talk.append((True, b"\r\n"))
        talk.append((False, prompt))
    return [(fc, d) for fc, d in talk if d]


def run(pkts, cfg=None) -> Harness:
    return run_packets(pkts, cfg)


def sids(h: Harness) -> list[int]:
    return h.sids("cleartext")


def assert_no_secrets(h: Harness, *extra: str) -> None:
    text = json.dumps(h.alerts)
    for secret in (USER, PASSWORD, "alice", "Tr0ub4dor", *extra):
        assert secret not in text, secret


# -- FTP -----------------------------------------------------------------------------------


def test_ftp_login_is_reported_without_the_credentials() -> None:
    h = run(session(ftp_login(), 21))
    assert sids(h) == [8109001]
    a = h.by_detector("cleartext")[0]
    assert (a["src_ip"], a["dest_ip"], a["dest_port"]) == (PC1, SRV, 21)
    assert a["alert"]["category"] == "Cleartext credentials"
    assert a["watchpost"]["details"] == {
        "protocol": "FTP",
        "what": "a username and password were sent unencrypted",
    }
    assert a["watchpost"]["direction"] == "outbound"
    assert_no_secrets(h)


def test_ftp_flows_stay_unjudged_until_the_login() -> None:
    """Port 21 is a deep port: the engine does not pass the flow after its first payload (the
    greeting makes it DEEP: still no verdict, queued on)."""
    assert HEADS == {"ftp": 40, "telnet": 60, "pop3": 30, "imap": 30, "smtp": 30, "http": 24}
    h = run(session(ftp_login(), 21))
    assert set(h.verdicts) == {VERDICT_NONE, VERDICT_DEEP}
    deep = h.engine.deep_ports()
    ports = {p: deep[p] for p in (21, 23, 110, 143, 25, 587)}
    assert ports == {21: 40, 23: 60, 110: 30, 143: 30, 25: 30, 587: 30}
    assert deep[DEEP_ANY_PORT] == 60  # the kernel's bound for flows found by content


def test_inbound_ftp_logins_count_up_per_connection() -> None:
    pkts = []
    for i in range(5):
        pkts += session(ftp_login(password=f"guess{i}"), 21, T0 + i, ATK, PC2, 30000 + i)
    h = run(pkts)
    alerts = h.by_detector("cleartext")
    assert sum(a["watchpost"]["count"] for a in alerts) == 5
    assert {a["watchpost"]["direction"] for a in alerts} == {"inbound"}
    assert_no_secrets(h, "guess")


def test_anonymous_ftp_is_not_a_secret() -> None:
    assert sids(run(session(ftp_login("anonymous", "guest@example.com"), 21))) == []
    assert sids(run(session(ftp_login("FTP", "x"), 21))) == []


def test_ftp_over_tls_is_not_reported() -> None:
    assert sids(run(session(ftp_login(tls=True), 21))) == []


def test_ftp_pass_without_user_or_password_is_not_a_login() -> None:
    talk = [(False, b"220 hi\r\n"), (True, b"PASS \r\n"), (True, b"PASS orphan\r\n")]
    assert sids(run(session(talk, 21))) == []


# -- Telnet --------------------------------------------------------------------------------


def test_telnet_iac_stripping() -> None:
    data = bytes((IAC, DO, 1)) + b"ab" + bytes((IAC, IAC)) + bytes((IAC, SB, 24, 1, IAC, SE))
    assert telnet_text(data + b"c") == b"ab\xffc"
    assert telnet_text(b"plain") == b"plain"


@pytest.mark.parametrize("per_char", [True, False])
def test_telnet_login_is_reported(per_char: bool) -> None:
    talk = telnet_login(per_char)
    pkts = session(talk, 23)
    assert len(pkts) <= HEADS["telnet"]  # fits in the queued head
    h = run(pkts)
    assert sids(h) == [8109002]
    assert h.by_detector("cleartext")[0]["watchpost"]["details"]["protocol"] == "Telnet"
    assert_no_secrets(h)


def test_telnet_without_a_password_prompt_is_not_reported() -> None:
    talk = [(False, b"Welcome to the BBS\r\n> "), (True, b"help\r\n"), (False, b"commands...")]
    assert sids(run(session(talk, 23))) == []


# -- POP3 and IMAP -------------------------------------------------------------------------


def test_pop3_user_pass_is_reported() -> None:
    talk = [
        (False, b"+OK POP3 ready\r\n"),
        (True, f"USER {USER}\r\n".encode()),
        (False, b"+OK\r\n"),
        (True, f"PASS {PASSWORD}\r\n".encode()),
    ]
    h = run(session(talk, 110))
    assert sids(h) == [8109004]
    assert_no_secrets(h)


def test_pop3_auth_plain_is_reported() -> None:
    talk = [(False, b"+OK\r\n"), (True, b"AUTH PLAIN AGFsaWNlLm8AVHIwdWI0ZG9yJjMtc2VjcmV0\r\n")]
    h = run(session(talk, 110))
    assert sids(h) == [8109004]
    assert_no_secrets(h, "AGFsaWNlLm8AVHIwdWI0ZG9yJjMtc2VjcmV0")


def test_pop3_stls_and_apop_are_not_reported() -> None:
    stls = [(False, b"+OK\r\n"), (True, b"STLS\r\n"), (False, b"+OK\r\n"), (True, b"\x16\x03\x01")]
    stls += [(True, f"USER {USER}\r\n".encode()), (True, f"PASS {PASSWORD}\r\n".encode())]
    apop = [(False, b"+OK <1896.697170952@dbc.mtview.ca.us>\r\n")]
    apop += [(True, b"APOP mrose c4c9334bac560ecc979e58001b3e22fb\r\n")]
    assert sids(run(session(stls, 110))) == []
    assert sids(run(session(apop, 110, sport=40001))) == []


def test_imap_login_is_reported() -> None:
    talk = [
        (False, b"* OK IMAP4rev1 ready\r\n"),
        (True, b"a001 CAPABILITY\r\n"),
        (False, b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\na001 OK\r\n"),
        (True, f'a002 LOGIN {USER} "{PASSWORD}"\r\n'.encode()),
    ]
    h = run(session(talk, 143))
    assert sids(h) == [8109005]
    assert_no_secrets(h)


def test_imap_authenticate_plain_is_reported_but_not_cram_md5() -> None:
    plain = [(False, b"* OK\r\n"), (True, b"A1 AUTHENTICATE PLAIN\r\n")]
    cram = [(False, b"* OK\r\n"), (True, b"A1 AUTHENTICATE CRAM-MD5\r\n")]
    assert sids(run(session(plain, 143))) == [8109005]
    assert sids(run(session(cram, 143, sport=40001))) == []


def test_imap_starttls_is_not_reported() -> None:
    talk = [(False, b"* OK\r\n"), (True, b"a1 STARTTLS\r\n"), (False, b"a1 OK\r\n")]
    talk += [(True, b"\x16\x03\x01\x02\x00"), (True, f"a2 LOGIN {USER} {PASSWORD}\r\n".encode())]
    assert sids(run(session(talk, 143))) == []


# -- HTTP Basic ----------------------------------------------------------------------------


def http_get(auth: str | None, cookie: str = "") -> list[tuple[bool, bytes]]:
    head = "GET /admin/ HTTP/1.1\r\nHost: printer.office.example\r\nUser-Agent: curl/8.5.0\r\n"
    if auth:
        head += f"Authorization: {auth}\r\n"
    if cookie:
        head += f"Cookie: {cookie}\r\n"
    return [(True, (head + "\r\n").encode())]


def test_http_basic_auth_is_reported() -> None:
    token = "YWxpY2Uubzpjb3JyZWN0LWhvcnNl"  # alice.o:correct-horse
    h = run(session(http_get(f"Basic {token}", cookie="sid=c00k1e-value"), 80, server=PC2))
    assert sids(h) == [8109003]
    a = h.by_detector("cleartext")[0]
    assert a["http"]["hostname"] == "printer.office.example" and a["http"]["url"] == "/admin/"
    assert_no_secrets(h, token, "correct-horse", "c00k1e-value")


def test_http_without_basic_auth_is_not_reported() -> None:
    assert sids(run(session(http_get("Bearer eyJhbGciOi.x.y"), 80))) == []
    assert sids(run(session(http_get(None, cookie="sid=1"), 80, sport=40001))) == []


# -- options, privacy, replay ----------------------------------------------------------------


def test_protocols_can_be_switched_off() -> None:
    cfg = make_config(detect={"cleartext": {"protocols": ["telnet", "http"]}})
    assert sids(run(session(ftp_login(), 21), cfg)) == []
    assert sids(run(session(telnet_login(), 23), cfg)) == [8109002]


def test_bad_protocol_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError) as err:
        Harness(make_config(detect={"cleartext": {"protocols": ["ftp", "gopher"]}}))
    assert err.value.key == "detect.cleartext.protocols[1]"


def test_pseudonymized_alerts_hold_no_office_address() -> None:
    cfg = make_config(privacy={"pseudonymize": True, "key": "k" * 32})
    pkts = session(ftp_login(), 21, client=PC1)
    pkts += session(telnet_login(), 23, T0 + 5, client=ATK, server=PC2)
    h = run(pkts, cfg)
    assert sorted(sids(h)) == [8109001, 8109002]
    text = json.dumps(h.alerts)
    assert PC1 not in text and PC2 not in text and "198.18.0." not in text


def test_works_when_neither_side_is_in_home_nets() -> None:
    cfg = make_config(inline={"home_nets": ["10.99.0.0/16"]})
    h = run(session(ftp_login(), 21), cfg)
    assert sids(h) == [8109001]
    assert h.by_detector("cleartext")[0]["watchpost"]["direction"] == "unknown"


def test_replayed_pcap_gives_the_same_alerts(tmp_path: Path) -> None:
    pkts = session(ftp_login(), 21)
    pkts += session(telnet_login(), 23, T0 + 2, sport=40002)
    pkts += session(http_get("Basic eDp5"), 80, T0 + 4, sport=40004)
    pcap = write_pcap(pkts, tmp_path / "cleartext.pcap")
    inline = run(list(pkts)).by_detector("cleartext")
    replayed = replay_alerts(pcap, "cleartext")

    def key(a: dict) -> tuple:
        return (a["alert"]["signature_id"], a["src_ip"], a["dest_ip"], a["dest_port"])

    assert len(inline) == 3
    assert sorted(map(key, inline)) == sorted(map(key, replayed))


def test_odd_payloads_never_break_the_detector() -> None:
    r = random.Random(14)
    pkts = []
    for i, port in enumerate((21, 23, 110, 143) * 25):
        talk = [(bool(j % 2), r.randbytes(r.randint(1, 300))) for j in range(8)]
        talk += [(True, b"USER x\r\n"), (True, bytes((IAC, SB)) + r.randbytes(20))]
        pkts += session(talk, port, T0 + i, sport=20000 + i)
    run(pkts)  # asserts that no hook raised


# -- more of each flow's head: found by content on any port, keep-alive HTTP, SMTP AUTH ----------


def http_401_then_basic(pad: int = 0) -> list[tuple[bool, bytes]]:
    """A keep-alive exchange: a request, the server's 401, `pad` more server segments, and the
    request repeated with Basic credentials (what curl --anyauth does)."""
    req = "GET /private/ HTTP/1.1\r\nHost: nas.office.example:8080\r\nUser-Agent: curl/8.5\r\n"
    challenge = b'HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm="nas"\r\n'
    talk = [(True, (req + "\r\n").encode()), (False, challenge + b"Content-Length: 0\r\n\r\n")]
    talk += [(False, b"x" * 10)] * pad
    talk.append((True, (req + "Authorization: Basic YWxpY2UubzpzM2NyZXQ=\r\n\r\n").encode()))
    return talk


def test_http_basic_after_a_401_on_a_keepalive_connection_on_8080() -> None:
    """The second request of the connection is seen (port 8080 is no deep port: the request
    line made the flow DEEP); the alert says the server had asked with a 401."""
    h = run(session(http_401_then_basic(), 8080, server=PC2))
    assert sids(h) == [8109003]
    a = h.by_detector("cleartext")[0]
    assert a["watchpost"]["details"]["after"] == "401" and a["dest_port"] == 8080
    assert a["http"]["url"] == "/private/" and a["app_proto"] == "http"
    assert h.verdicts[3:] == [VERDICT_DEEP] * (len(h.verdicts) - 3)  # the first request on
    assert_no_secrets(h, "YWxpY2UubzpzM2NyZXQ=", "s3cret")


def test_http_credentials_past_the_head_are_not_seen_and_the_flow_passes() -> None:
    """Just past `http_head_packets` (24): the kernel queues no more, the engine neither."""
    fits, past = session(http_401_then_basic(pad=18), 8080), session(http_401_then_basic(19), 8080)
    assert (len(fits), len(past)) == (24, 25)
    assert sids(run(fits)) == [8109003]
    h = run(past)
    assert sids(h) == []
    assert h.verdicts[23] == VERDICT_PASS  # the 24th packet ends the head
    cfg = make_config(detect={"cleartext": {"http_head_packets": 25}})
    assert sids(run(past, cfg)) == [8109003]


def test_tls_flows_pass_at_their_hello_whatever_the_heads() -> None:
    """Longer heads cost nothing on TLS bulk flows: they pass at the ClientHello, on any port."""
    from scapy.layers.tls.handshake import TLSClientHello
    from scapy.layers.tls.record import TLS

    hello = bytes(TLS(msg=[TLSClientHello(ciphers=[0x1301])]))
    for port in (443, 8080, 21):
        h = run(session([(True, hello), (False, b"\x16\x03\x03" + b"s" * 40)] * 3, port))
        assert h.verdicts[3] == VERDICT_PASS, port
        assert VERDICT_DEEP not in h.verdicts


def test_ftp_on_8021_is_found_by_its_greeting() -> None:
    h = run(session(ftp_login(), 8021))
    assert sids(h) == [8109001]
    assert h.by_detector("cleartext")[0]["app_proto"] == "ftp"
    assert h.verdicts[3] == VERDICT_DEEP  # the greeting: queued on past inline.head_packets


def test_a_non_cleartext_server_on_8021_passes_at_the_first_client_payload() -> None:
    talk = [(False, b"SSH-2.0-OpenSSH_9.6\r\n"), (True, b"SSH-2.0-OpenSSH_9.6\r\n")]
    talk += [(True, f"USER {USER}\r\n".encode()), (True, f"PASS {PASSWORD}\r\n".encode())]
    h = run(session(talk, 8021))
    assert sids(h) == [] and h.verdicts[3:5] == [VERDICT_NONE, VERDICT_PASS]


def smtp(auth: list[bytes], starttls: bool = False) -> list[tuple[bool, bytes]]:
    talk = [(False, b"220 mail.office.example ESMTP Postfix\r\n"), (True, b"EHLO pc1\r\n")]
    talk.append((False, b"250-mail.office.example\r\n250-AUTH PLAIN LOGIN\r\n250 STARTTLS\r\n"))
    if starttls:
        talk += [(True, b"STARTTLS\r\n"), (False, b"220 2.0.0 Ready\r\n"), (True, b"\x16\x03\x01")]
    for line in auth:
        talk += [(True, line + b"\r\n"), (False, b"334 \r\n")]
    return talk


PLAIN = b"AGFsaWNlLm8AVHIwdWI0ZG9yJjMtc2VjcmV0"


@pytest.mark.parametrize("port", [587, 25, 2525])
def test_smtp_auth_plain_and_login_are_reported(port: int) -> None:
    """On the submission ports and, found by its greeting, on any other."""
    h = run(session(smtp([b"AUTH PLAIN " + PLAIN]), port))
    assert sids(h) == [8109006]
    assert h.by_detector("cleartext")[0]["watchpost"]["details"]["protocol"] == "SMTP"
    h = run(session(smtp([b"AUTH LOGIN", b"YWxpY2Uubw==", b"VHIwdWI0ZG9y"]), port, sport=40001))
    assert sids(h) == [8109006]
    assert_no_secrets(h, PLAIN.decode(), "YWxpY2Uubw==", "VHIwdWI0ZG9y")


def test_smtp_without_credentials_on_the_wire_is_not_reported() -> None:
    for i, auth in enumerate(([b"AUTH CRAM-MD5", b"YWxpY2UgZGVhZGJlZWY="], [b"AUTH LOGIN", b"*"])):
        assert sids(run(session(smtp(auth), 587, sport=41000 + i))) == []
    assert sids(run(session(smtp([b"AUTH PLAIN " + PLAIN], starttls=True), 587))) == []
    off = make_config(detect={"cleartext": {"protocols": ["ftp"]}})
    assert sids(run(session(smtp([b"AUTH PLAIN " + PLAIN]), 587), off)) == []


def test_more_of_the_head_replays_to_the_same_alerts(tmp_path: Path) -> None:
    pkts = session(http_401_then_basic(), 8080, server=PC2)
    pkts += session(ftp_login(), 8021, T0 + 2, sport=40002)
    pkts += session(smtp([b"AUTH PLAIN " + PLAIN]), 2525, T0 + 4, sport=40004)
    pkts += session(http_401_then_basic(pad=19), 8080, T0 + 6, sport=40006)  # just past
    pcap = write_pcap(pkts, tmp_path / "heads.pcap")
    inline = run(list(pkts)).by_detector("cleartext")
    replayed = replay_alerts(pcap, "cleartext")

    def key(a: dict) -> tuple:
        return (a["alert"]["signature_id"], a["dest_port"], a["watchpost"]["details"])

    assert sorted(map(key, inline)) == sorted(map(key, replayed))
    assert sorted(k[0] for k in map(key, inline)) == [8109001, 8109003, 8109006]
