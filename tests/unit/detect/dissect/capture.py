"""Real-client handshakes captured into a pcap, and tshark's reading of a pcap, for the
dissector tests.

`capture_handshakes(path)` runs, in a private network namespace (``unshare -n``, only its own
loopback), an `openssl s_server` on :443, a Python HTTP server on :80 and tcpdump, then
`openssl s_client` (TLS 1.3 with SNI, TLS 1.2 with ALPN, no SNI), `curl --http2`, curl HTTP/1.1
requests (Basic auth, a cookie, a POST) and two `dig` queries (no DNS server: the queries
are what counts). The committed fixture tests/data/dissect/handshakes.pcap was made by it:

    .venv/bin/python -m tests.unit.detect.dissect.capture tests/data/dissect/handshakes.pcap
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parents[3] / "data" / "dissect"
HANDSHAKES = DATA / "handshakes.pcap"

# Credentials and cookie sent by the capture: tests check they never come out of a dissector.
SECRET_USER = "alice"
SECRET_PASSWORD = "s3cret-Pa55"
SECRET_COOKIE = "session=topsecret-cookie-value"

_SCRIPT = r"""
set -u
cd "$WORK"
ip link set lo up
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -subj /CN=www.example.com -days 2 -keyout key.pem -out cert.pem >/dev/null 2>&1
tcpdump -i lo --immediate-mode -U -s 0 -w "$OUT" \
    'tcp port 443 or tcp port 80 or udp port 53' 2>tcpdump.err &
TD=$!
openssl s_server -accept 443 -cert cert.pem -key key.pem -www -alpn http/1.1 \
    </dev/null >/dev/null 2>&1 &
SS=$!
"$PY" -m http.server 80 --bind 127.0.0.1 >/dev/null 2>&1 &
HS=$!
for i in $(seq 100); do
    grep -q listening tcpdump.err 2>/dev/null && ss -ltn | grep -q ':443 ' \
        && ss -ltn | grep -q ':80 ' && break
    sleep 0.1
done
T="timeout 10"
$T openssl s_client -connect 127.0.0.1:443 -servername www.example.com </dev/null >/dev/null 2>&1
$T openssl s_client -connect 127.0.0.1:443 -servername API.Example.ORG -alpn h2,http/1.1 \
    -tls1_2 </dev/null >/dev/null 2>&1
$T openssl s_client -connect 127.0.0.1:443 -noservername </dev/null >/dev/null 2>&1
$T curl -s -k --http2 -o /dev/null --resolve www.example.net:443:127.0.0.1 \
    https://www.example.net/
$T curl -s -o /dev/null -A 'WatchpostTest/1.0 (dissect)' -u "$USERPASS" \
    --resolve www.example.com:80:127.0.0.1 'http://www.example.com/path/to?q=1&token=abc'
$T curl -s -o /dev/null -X POST -H 'Content-Type: application/json' -H "Cookie: $COOKIE" \
    --data '{"a": 1}' http://127.0.0.1/api/v1/items
$T dig @127.0.0.1 +tries=1 +time=1 www.Example.COM A >/dev/null 2>&1
$T dig @127.0.0.1 +tries=1 +time=1 +norecurse mail.example.org AAAA >/dev/null 2>&1
sleep 0.5
kill -INT $TD; wait $TD
kill $SS $HS 2>/dev/null; wait
"""


def capture_handshakes(out: Path) -> Path:
    """Capture the real-client handshakes described above into `out` (needs root)."""
    if os.geteuid() != 0:
        raise RuntimeError("capturing needs root (unshare -n, tcpdump)")
    for tool in ("unshare", "tcpdump", "openssl", "curl", "dig", "ss"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed")
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        env = dict(
            os.environ,
            WORK=work,
            OUT=str(out),
            PY=sys.executable,
            USERPASS=f"{SECRET_USER}:{SECRET_PASSWORD}",
            COOKIE=SECRET_COOKIE,
        )
        subprocess.run(["unshare", "-n", "bash", "-c", _SCRIPT], env=env, check=True, timeout=120)
    return out


# -- tshark -------------------------------------------------------------------------------------


def tshark_fields(pcap: Path, fields: list[str], display_filter: str = "") -> dict[int, dict]:
    """frame number → {field: [values]} for the frames where any field has a value."""
    cmd = ["tshark", "-n", "-r", str(pcap), "-T", "fields", "-E", "occurrence=a"]
    cmd += ["-E", "aggregator=\x1f", "-e", "frame.number"]
    for f in fields:
        cmd += ["-e", f]
    if display_filter:
        cmd += ["-Y", display_filter]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120)
    out: dict[int, dict] = {}
    for line in res.stdout.splitlines():
        cols = line.split("\t")
        values = {f: (c.split("\x1f") if c else []) for f, c in zip(fields, cols[1:], strict=True)}
        if any(values.values()):
            out[int(cols[0])] = values
    return out


def tshark_hellos(pcap: Path) -> dict[int, dict[str, Any]]:
    """frame number → what tshark dissected of each ClientHello (PDML, so the signature
    algorithms come from the signature_algorithms extension only, in wire order)."""
    res = subprocess.run(
        ["tshark", "-n", "-r", str(pcap), "-T", "pdml", "-Y", "tls.handshake.type == 1"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    out: dict[int, dict[str, Any]] = {}
    for packet in ET.fromstring(res.stdout).iter("packet"):
        frame = int(_first(packet, "frame.number").get("show", "0"))
        hello = next(
            (
                f
                for f in packet.iter("field")
                if f.get("name") == "tls.handshake"
                and _first(f, "tls.handshake.type") is not None
                and _first(f, "tls.handshake.type").get("show") == "1"
            ),
            None,
        )
        if hello is None:
            continue
        info: dict[str, Any] = {
            "version": int(_first(hello, "tls.handshake.version").get("value"), 16),
            "ciphers": [int(f.get("value"), 16) for f in _all(hello, "tls.handshake.ciphersuite")],
            "extensions": [],
            "sig_algs": [],
            "supported_versions": [],
            "alpn": [],
            "sni": None,
        }
        for ext in hello.iter("field"):
            kind = next((c for c in ext if c.get("name") == "tls.handshake.extension.type"), None)
            if kind is None:
                continue
            etype = int(kind.get("show"))
            info["extensions"].append(etype)
            if etype == 13:
                info["sig_algs"] = [
                    int(f.get("value"), 16) for f in _all(ext, "tls.handshake.sig_hash_alg")
                ]
            elif etype == 43:
                info["supported_versions"] = [
                    int(f.get("value"), 16)
                    for f in _all(ext, "tls.handshake.extensions.supported_version")
                ]
            elif etype == 16:
                info["alpn"] = [
                    bytes.fromhex(f.get("value"))
                    for f in _all(ext, "tls.handshake.extensions_alpn_str")
                ]
            elif etype == 0:
                names = _all(ext, "tls.handshake.extensions_server_name")
                info["sni"] = names[0].get("show") if names else ""
        out[frame] = info
    return out


def _first(elem: ET.Element, name: str) -> ET.Element | None:
    return next((f for f in elem.iter("field") if f.get("name") == name), None)


def _all(elem: ET.Element, name: str) -> list[ET.Element]:
    return [f for f in elem.iter("field") if f.get("name") == name]


if __name__ == "__main__":
    print(capture_handshakes(Path(sys.argv[1]) if len(sys.argv) > 1 else HANDSHAKES))
