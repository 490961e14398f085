"""cleartext in the lab, with pseudonymisation on: an FTP login (Python's ftplib against the
lab's FTP server), a Telnet login typed one character per packet, HTTP Basic auth with curl.
Each is reported once, never with the username or password, never with an office address;
anonymous FTP is not reported; `watchpost replay` of the uplink capture agrees."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import pytest

from appliance.detect.detectors import cleartext
from lab.netns import Lab

from .behaviour_lab import Watch, totals
from .content_lab import capture, python, sids, start_watch

pytestmark = pytest.mark.root

PC1, WEB = "198.18.0.11", "203.0.113.10"
USER, PASSWORD = "alice.lab", "Wonder-1and!pw"

FTP_CLIENT = """
import ftplib, sys
host, user, password = sys.argv[1:4]
f = ftplib.FTP(host, timeout=5)
try:
    f.login(user, password)
except ftplib.error_perm:
    pass
f.quit()
"""

TELNET_SERVER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 23))
s.listen(4)
def line(c):
    got = b""
    while not got.endswith((b"\\r", b"\\n")) and len(got) < 200:
        b = c.recv(1)
        if not b:
            break
        got += b
    return got
for _ in range(4):  # bounded: a test makes one or two logins
    c, _ = s.accept()
    c.settimeout(5)
    c.sendall(bytes([255, 251, 1, 255, 251, 3]) + b"\\r\\nlab-router login: ")
    line(c)
    c.sendall(b"\\r\\nPassword: ")
    line(c)
    c.sendall(b"\\r\\nWelcome\\r\\n$ ")
    c.close()
"""

TELNET_CLIENT = """
import socket, sys, time
host, user, password = sys.argv[1:4]
c = socket.create_connection((host, 23), timeout=5)
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
def until(word):
    got = b""
    while word not in got:
        b = c.recv(256)
        if not b:
            raise SystemExit("closed before " + word.decode())
        got += b
until(b"login: ")
for ch in user + "\\r":
    c.send(ch.encode()); time.sleep(0.02)
until(b"Password: ")
for ch in password + "\\r":
    c.send(ch.encode()); time.sleep(0.02)
until(b"$ ")
c.close()
"""


@pytest.fixture(scope="module")
def watch(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Watch]:
    w = start_watch(
        lab,
        tmp_path_factory.mktemp("cleartext"),
        privacy={"pseudonymize": True, "key": "lab-privacy-key-0123456789abcdef"},
    )
    yield w
    w.daemon.stop()


def test_cleartext_logins_are_reported_without_secrets(watch: Watch, serve) -> None:
    serve.ftp("web", user=USER, password=PASSWORD)
    serve.run("web", sys.executable, "-c", TELNET_SERVER, WEB, port=23)
    serve.http("web")
    mark = watch.mark()
    with capture(watch, "cleartext") as pcap:
        res = python(watch, "pc1", FTP_CLIENT, WEB, USER, PASSWORD)
        assert res.returncode == 0, res.stderr
        res = python(watch, "pc1", TELNET_CLIENT, WEB, USER, PASSWORD)
        assert res.returncode == 0, res.stderr
        res = watch.lab.exec(
            "pc1", "curl", "-sS", "-m", "5", "-u", f"{USER}:{PASSWORD}",
            "http://www.example.com/admin/", check=False, timeout=20,
        )  # fmt: skip
        assert "lab page" in res.stdout, res.stderr
    want = {cleartext.FTP.sid, cleartext.TELNET.sid, cleartext.HTTP_BASIC.sid}
    got = watch.wait(mark, lambda a: want <= sids(a), "cleartext")
    assert sids(got) == want, watch.daemon.log_tail()
    for a in got:
        assert a["dest_ip"] == WEB and a["src_ip"].startswith("office-")
        assert a["watchpost"]["details"]["what"] == "a username and password were sent unencrypted"
    assert {a["watchpost"]["details"]["protocol"] for a in got} == {"FTP", "Telnet", "HTTP"}
    everything = watch.settle(mark, None, quiet=3.0)
    text = json.dumps(everything)
    for secret in (USER, PASSWORD, "alice", "Wonder"):
        assert secret not in text
    assert PC1 not in text and "198.18.0." not in text  # pseudonymised, in every field
    got = watch.settle(mark, "cleartext", quiet=3.0)
    assert totals(watch.replay(pcap), "cleartext") == totals(got, "cleartext")


def test_anonymous_ftp_is_not_reported(watch: Watch, serve) -> None:
    serve.ftp("web", user="anonymous", password="guest@example.com")
    mark = watch.mark()
    res = python(watch, "pc1", FTP_CLIENT, WEB, "anonymous", "guest@example.com")
    assert res.returncode == 0, res.stderr
    assert watch.settle(mark, "cleartext", quiet=3.0, timeout=10.0) == []
