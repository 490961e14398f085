"""More of each flow's head and context in alerts, in the lab with real curl: a keep-alive
HTTP/1.1 server on port 8080 (no deep port: the request line makes the flow DEEP) answers 401,
curl --anyauth repeats the request with Basic credentials on the same connection; the cleartext
alert says so, the intel alert about the (listed) server carries the HTTP host and URL, once
each; `watchpost replay` of the uplink capture gives the same alerts."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import pytest

from appliance.detect.detectors import cleartext, intel
from lab.netns import DEMO_INTEL, Lab

from .behaviour_lab import Watch
from .content_lab import capture, sids, start_watch

pytestmark = pytest.mark.root

WEB = "203.0.113.10"
USER, PASSWORD = "alice.lab", "Keep-al1ve!pw"

SERVER = """
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    def do_GET(self):
        if self.headers.get("Authorization", "").startswith("Basic "):
            body, code = b"lab private page\\n", 200
        else:
            body, code = b"who are you?\\n", 401
        self.send_response(code)
        if code == 401:
            self.send_header("WWW-Authenticate", 'Basic realm="lab"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass

HTTPServer((sys.argv[1], 8080), H).serve_forever()
"""


@pytest.fixture(scope="module")
def watch(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Watch]:
    w = start_watch(lab, tmp_path_factory.mktemp("heads"), intel=DEMO_INTEL + f"{WEB}\n")
    yield w
    w.daemon.stop()


def test_keepalive_401_then_credentials_on_8080(watch: Watch, serve) -> None:
    serve.run("web", sys.executable, "-c", SERVER, WEB, port=8080)
    mark = watch.mark()
    with capture(watch, "keepalive") as pcap:
        res = watch.lab.exec(
            "pc1", "curl", "-sS", "-m", "5", "--anyauth", "-u", f"{USER}:{PASSWORD}", "-v",
            f"http://{WEB}:8080/private/?session=abc123", check=False, timeout=20,
        )  # fmt: skip
        assert "lab private page" in res.stdout, res.stderr
        assert "Re-using existing connection" in res.stderr or "left intact" in res.stderr
    want = {cleartext.HTTP_BASIC.sid, intel.IP_HIT.sid}
    got = watch.wait(mark, lambda a: want <= sids(a))
    ours = [a for a in got if a["dest_port"] == 8080]
    assert sorted(a["alert"]["signature_id"] for a in ours) == sorted(want), got
    basic = next(a for a in ours if a["watchpost"]["detector"] == "cleartext")
    assert basic["watchpost"]["details"]["after"] == "401"
    hit = next(a for a in ours if a["watchpost"]["detector"] == "intel")
    assert hit["http"]["hostname"] == f"{WEB}:8080"
    assert hit["http"]["url"] == "/private/?session="  # query values never leave the device
    text = json.dumps(ours)
    assert PASSWORD not in text and "abc123" not in text
    settled = [a for a in watch.settle(mark, None, quiet=3.0) if a["dest_port"] == 8080]
    assert len(settled) == 2  # one each: the context came with the alert, not after it

    def key(a: dict) -> tuple:
        return (a["alert"]["signature_id"], a.get("http"), json.dumps(a["watchpost"]["details"]))

    replayed = [a for a in watch.replay(pcap) if a["dest_port"] == 8080]
    assert sorted(map(key, replayed)) == sorted(map(key, settled))
