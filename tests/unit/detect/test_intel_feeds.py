"""Feeds as they come: URLs without a scheme, IP:port indicators, Maltrail trail files
(trail,info,reference); bad lines are reported by replay and check-config (file:line and why,
with a count) and a refused file is named with its reason."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from appliance.cli import main
from appliance.detect import intel
from tests.helpers import make_config, write_pcap
from tests.unit.detect.rules.kit import PC1, http_request, syn

TRAILS = """# Maltrail-style trails
trail,info,reference
evil-trail.example,emotet (malware),(static) abuse.ch
203.0.113.77,known attacker,(static) lab
bad-trail.example/gate.php,phishing,(static) lab
203.0.113.78:8443,cobalt strike (malware),(static) lab
not an indicator,x,y
"""


def test_urls_without_a_scheme(tmp_path: Path) -> None:
    f = tmp_path / "urls.txt"
    f.write_text(
        "evil.example/gate.php\n203.0.113.5/x.exe\n203.0.113.6:8080/bins/a.arm7\n"
        "evil2.example:8081/p\n[2001:db8::7]:8080/q\n203.0.113.0/24\nfoo/bar\n"
    )
    s = intel.load_files([f])
    assert s.match_url("http://evil.example/gate.php?id=1") is not None
    assert s.match_url("http://evil.example/other.php") is None
    assert s.match_url("http://203.0.113.5/x.exe") is not None
    assert s.match_url("http://203.0.113.6:8080/bins/a.arm7") is not None
    assert s.match_url("http://evil2.example:8081/p") is not None
    assert s.match_url("http://[2001:db8::7]:8080/q") is not None
    assert s.match_ip(bytes([203, 0, 113, 9])) is not None  # the CIDR is still a network
    assert [p.line for p in s.problems] == [7]
    assert "foo/bar" in s.problems[0].problem


def test_ip_port_indicators(tmp_path: Path) -> None:
    f = tmp_path / "c2.txt"
    f.write_text("203.0.113.78:8443\n[2001:db8::9]:443\n")
    s = intel.load_files([f])
    assert s.match_ip(bytes([203, 0, 113, 78])) is not None
    assert s.match_ip(bytes.fromhex("20010db8" + "0" * 23 + "9")) is not None
    assert not s.problems


def test_maltrail_trails_with_and_without_header(tmp_path: Path) -> None:
    for name, text in (("with.csv", TRAILS), ("bare.csv", "\n".join(TRAILS.splitlines()[2:]))):
        f = tmp_path / name
        f.write_text(text + "\n")
        s = intel.load_files([f])
        assert s.files[0].format == "csv:maltrail", name
        assert s.files[0].indicators == 4
        assert s.files[0].bad_lines == 1
        ind = s.match_domain("cdn.evil-trail.example")
        assert ind is not None
        assert (ind.source, ind.category, ind.tags) == (
            "maltrail",
            "emotet (malware)",
            "(static) abuse.ch",
        )
        assert s.match_url("http://bad-trail.example/gate.php") is not None
        assert s.match_ip(bytes([203, 0, 113, 78])) is not None


def test_a_trail_hit_alerts_through_the_engine(tmp_path: Path) -> None:
    f = tmp_path / "trails.csv"
    f.write_text(TRAILS)
    from tests.helpers import Harness

    h = Harness(make_config(intel={"paths": [str(f)]}))
    h.feed(http_request("/gate.php?u=1", host="bad-trail.example", src=PC1, dst="203.0.113.20"))
    h.finish()
    alerts = [a for a in h.by_detector("intel") if a["alert"]["signature_id"] == 8100009]
    assert len(alerts) == 1
    assert alerts[0]["alert"]["category"] == "phishing"


def test_replay_and_check_config_report_bad_lines_and_refused_files(tmp_path: Path) -> None:
    trails = tmp_path / "trails.csv"
    trails.write_text(TRAILS)
    binary = tmp_path / "junk.bin"
    binary.write_bytes(b"\x00\x01garbage\x00")
    cfg = tmp_path / "wp.toml"
    cfg.write_text(
        '[device]\nid = "t"\n[inline]\nhome_nets = ["198.18.0.0/24"]\n'
        f'[intel]\npaths = ["{trails}", "{binary}"]\n'
    )
    pcap = write_pcap(syn(src=PC1, dst="203.0.113.77", dport=443), tmp_path / "t.pcap")
    runner = CliRunner()
    res = runner.invoke(main, ["replay", str(pcap), "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    assert f"intel {trails}: 4 indicators (csv:maltrail), 1 bad line" in res.stderr
    assert f"intel {trails}:7: not an indicator: 'not an indicator'" in res.stderr
    assert f"intel {binary}: refused: " in res.stderr
    assert '"signature_id":8100001' in res.stdout.replace(" ", "")

    res = runner.invoke(main, ["check-config", str(cfg)])
    assert res.exit_code == 2
    assert f"{trails}:7: not an indicator" in res.stderr
    assert f"error: intel.paths: {binary}: " in res.stderr
    cfg.write_text(cfg.read_text().replace(f', "{binary}"', ""))
    res = runner.invoke(main, ["check-config", str(cfg)])
    assert res.exit_code == 0 and res.stdout.strip() == f"{cfg}: ok"
    assert "1 bad line" in res.stderr
