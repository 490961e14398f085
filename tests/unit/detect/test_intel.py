"""Intel store: formats, matching rules, bad input, cache and atomic reload."""

from __future__ import annotations

import ipaddress
import os
import random
import threading
from pathlib import Path

import pytest

from appliance.detect import intel
from appliance.detect.intel import IntelManager, IntelStore, load_files


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def ip(store: IntelStore, text: str) -> intel.Indicator | None:
    return store.match_ip(ipaddress.ip_address(text).packed)


# -- plain lists and matching rules --------------------------------------------------------------


def test_plain_list_mixed_kinds(tmp_path: Path) -> None:
    f = write(
        tmp_path / "mixed.txt",
        "# a comment\n"
        "\n"
        "203.0.113.66\n"
        "198.51.100.0/24   # a network\n"
        "2001:db8:bad::1\n"
        "2001:db8:ee::/48\n"
        "Evil.Example.\n"
        "http://203.0.113.10/bins/Mips\n"
        "E7D705A3286E19EA42F587B344EE6865\n"
        "t13d1516h2_8daaf6152771_b186095e22b6\n",
    )
    store = load_files([str(f)])
    assert store.counts == {"ip": 2, "cidr": 2, "domain": 1, "url": 1, "ja3": 1, "ja4": 1}
    assert not store.problems
    hit = ip(store, "203.0.113.66")
    assert hit is not None and (hit.value, hit.kind, hit.source) == ("203.0.113.66", "ip", "mixed")
    net = ip(store, "198.51.100.200")
    assert net is not None and (net.value, net.kind) == ("198.51.100.0/24", "cidr")
    assert ip(store, "198.51.101.1") is None
    assert ip(store, "203.0.113.67") is None
    v6 = ip(store, "2001:db8:bad::1")
    assert v6 is not None and v6.value == "2001:db8:bad::1"
    assert ip(store, "2001:db8:bad::2") is None
    v6net = ip(store, "2001:db8:ee:ffff::9")
    assert v6net is not None and v6net.value == "2001:db8:ee::/48"
    assert ip(store, "2001:db8:ef::1") is None
    assert store.match_domain("evil.example") is not None
    assert store.match_url("http://203.0.113.10/bins/Mips") is not None
    assert store.match_url("http://203.0.113.10/bins/mips") is None  # paths are case-sensitive
    assert store.match_ja3("e7d705a3286e19ea42f587b344ee6865") is not None
    assert store.match_ja3("e7d705a3286e19ea42f587b344ee6866") is None
    assert store.match_ja4("T13D1516H2_8daaf6152771_b186095e22b6") is not None
    assert store.match_ja4("t13d1516h2_8daaf6152771_b186095e22b7") is None
    assert intel.classify("198.51.100.0/24") == "cidr"
    assert intel.classify("not an indicator") is None
    assert intel.classify("7e824c638af271eed109ff808babf7f8") == "ja3"  # digits at both ends


def test_subdomains_match_lookalikes_do_not(tmp_path: Path) -> None:
    store = load_files([str(write(tmp_path / "d.txt", "evil.example\n*.bad.example.org\n"))])
    for name in ("evil.example", "a.evil.example", "x.y.z.EVIL.example.", "q.bad.example.org"):
        hit = store.match_domain(name)
        assert hit is not None, name
    assert store.match_domain("a.b.evil.example").value == "evil.example"  # the listed entry
    assert store.match_domain("bad.example.org").value == "bad.example.org"
    for name in ("notevil.example", "evil.example.com", "example", "evilexample", "", "."):
        assert store.match_domain(name) is None, name


def test_url_normalisation(tmp_path: Path) -> None:
    f = write(tmp_path / "u.txt", "http://Bad.Example:80/a/b.exe\nhttps://x.example/q?id=1\n")
    store = load_files([str(f)])
    assert store.match_url("http://bad.example/a/b.exe") is not None
    assert store.match_url("HTTP://BAD.EXAMPLE/a/b.exe?any=thing") is not None  # query ignored
    assert store.match_url("http://bad.example:8080/a/b.exe") is None
    assert store.match_url("https://x.example/q?id=1") is not None
    assert store.match_url("https://x.example/q?id=2") is None  # a listed query must match
    assert store.match_url("not a url") is None


def test_cidr_overlaps_most_specific_wins(tmp_path: Path) -> None:
    wide = write(tmp_path / "wide.txt", "198.51.0.0/16\n")
    mid = write(tmp_path / "mid.txt", "198.51.100.0/24\n2001:db8::/32\n")
    host = write(tmp_path / "host.txt", "198.51.100.7\n198.51.0.0\n2001:db8::7\n")
    store = load_files([str(wide), str(mid), str(host)])
    cases = {
        "198.51.100.7": ("198.51.100.7", "host"),
        "198.51.100.6": ("198.51.100.0/24", "mid"),
        "198.51.100.8": ("198.51.100.0/24", "mid"),
        "198.51.100.0": ("198.51.100.0/24", "mid"),
        "198.51.100.255": ("198.51.100.0/24", "mid"),
        "198.51.99.255": ("198.51.0.0/16", "wide"),
        "198.51.101.0": ("198.51.0.0/16", "wide"),
        "198.51.0.0": ("198.51.0.0", "host"),
        "198.51.0.1": ("198.51.0.0/16", "wide"),
        "198.51.255.255": ("198.51.0.0/16", "wide"),
        "2001:db8::7": ("2001:db8::7", "host"),
        "2001:db8::8": ("2001:db8::/32", "mid"),
    }
    for addr, (value, source) in cases.items():
        hit = ip(store, addr)
        assert hit is not None and (hit.value, hit.source) == (value, source), addr
    assert ip(store, "198.50.255.255") is None
    assert ip(store, "198.52.0.0") is None
    assert ip(store, "2001:db9::") is None


def test_flattening_agrees_with_brute_force() -> None:
    """Random nested networks: every address maps to the longest listed prefix covering it."""
    rng = random.Random(7)
    nets: dict[ipaddress.IPv4Network, str] = {}
    for i in range(300):
        plen = rng.choice([8, 12, 16, 20, 24, 28, 30, 32])
        base = 0x0A000000 | rng.getrandbits(20) << 4  # crowd them into 10/8 so they nest
        net = ipaddress.ip_network((base & ~((1 << (32 - plen)) - 1), plen))
        nets.setdefault(net, f"s{i}")
    inds = [intel.Indicator(str(n), "cidr", src) for n, src in nets.items()]
    store = intel.build(inds)
    probes = [ipaddress.ip_address(0x0A000000 | rng.getrandbits(24)) for _ in range(3000)]
    probes += [n.network_address for n in nets] + [n.broadcast_address for n in nets]
    for addr in probes:
        covering = [n for n in nets if addr in n]
        hit = store.match_ip(addr.packed)
        if not covering:
            assert hit is None, addr
            continue
        best = max(covering, key=lambda n: n.prefixlen)
        assert hit is not None and hit.source == nets[best], addr


def test_duplicate_keeps_most_severe(tmp_path: Path) -> None:
    low = write(tmp_path / "low.txt", "# watchpost: severity=low\n203.0.113.9\nbad.example\n")
    high = write(
        tmp_path / "high.txt",
        "# watchpost: source=hub-phish category=phishing severity=high\n203.0.113.9\nbad.example\n",
    )
    store = load_files([str(low), str(high)])
    for hit in (ip(store, "203.0.113.9"), store.match_domain("bad.example")):
        assert hit is not None
        assert (hit.source, hit.category, hit.severity) == ("hub-phish", "phishing", 1)


# -- other formats -------------------------------------------------------------------------------


def test_hosts_file(tmp_path: Path) -> None:
    f = write(
        tmp_path / "hosts",
        "127.0.0.1 localhost\n"
        "::1 localhost ip6-localhost\n"
        "0.0.0.0 0.0.0.0\n"
        "# blocked\n"
        "0.0.0.0 ads.example.net tracker.example.net  # two names\n"
        "127.0.0.1\tphish.example.org\n"
        "0.0.0.0 ~~bad~~\n",
    )
    store = load_files([str(f)])
    assert store.files[0].format == "hosts"
    assert store.counts["domain"] == 3
    for name in ("ads.example.net", "tracker.example.net", "login.phish.example.org"):
        hit = store.match_domain(name)
        assert hit is not None and hit.category == "blocklist", name
    assert store.match_domain("localhost") is None
    assert ip(store, "0.0.0.0") is None and ip(store, "127.0.0.1") is None  # the sink, not listed
    assert [str(p) for p in store.problems] == [f"{f}:7: not a domain: '~~bad~~'"]


FEODO = """\
################################################################
# abuse.ch Feodo Tracker Botnet C2 IP Blocklist (CSV)          #
# Last updated: 2026-11-26 15:00:42 UTC                        #
#                                                              #
# Terms Of Use: https://feodotracker.abuse.ch/blocklist/       #
################################################################
#
"first_seen_utc","dst_ip","dst_port","c2_status","last_online","malware"
"2026-01-17 07:30:05","203.0.113.80","443","online","2026-11-26","Dridex"
"2026-01-17 07:44:46","198.51.100.81","4643","offline","2026-11-20","QakBot"
"2026-01-17 07:44:50","not-an-ip","3786","online","2026-11-26","Emotet"
# END 3 entries
"""

URLHAUS = """\
################################################################
# abuse.ch URLhaus Database Dump (CSV - recent URLs)           #
# Last updated: 2026-11-26 08:12:07 (UTC)                      #
#                                                              #
# Terms Of Use: https://urlhaus.abuse.ch/api/                  #
################################################################
#
# id,dateadded,url,url_status,last_online,threat,tags,urlhaus_link,reporter
"3129711","2026-11-26 08:12:07","http://203.0.113.90:8080/bins/mips","online","2026-11-26 08:12:07","malware_download","elf,mirai","https://urlhaus.abuse.ch/url/3129711/","someone"
"3129710","2026-11-26 08:11:00","https://files.example.net/inv.zip","offline","","malware_download","zip","https://urlhaus.abuse.ch/url/3129710/","other"
"3129709","2026-11-26 08:10:00","http://half.example/x.sh","online
"""


def test_feodo_csv(tmp_path: Path) -> None:
    f = write(tmp_path / "ipblocklist.csv", FEODO)
    store = load_files([str(f)])
    rep = store.files[0]
    assert (rep.format, rep.source, rep.indicators, rep.bad_lines) == (
        "csv:feodo",
        "feodotracker",
        2,
        1,
    )
    online = ip(store, "203.0.113.80")
    assert online is not None
    assert (online.source, online.category, online.severity, online.tags) == (
        "feodotracker",
        "botnet-c2",
        1,
        "Dridex",
    )
    offline = ip(store, "198.51.100.81")
    assert offline is not None and (offline.severity, offline.tags) == (2, "QakBot")
    assert str(store.problems[0]) == f"{f}:11: not an indicator: 'not-an-ip'"


def test_urlhaus_csv(tmp_path: Path) -> None:
    # The last row is cut short but the file ends with a newline: one bad line, not a broken file.
    f = write(tmp_path / "csv.txt", URLHAUS)
    store = load_files([str(f)])
    rep = store.files[0]
    assert (rep.format, rep.source, rep.indicators, rep.bad_lines, rep.broken) == (
        "csv:urlhaus",
        "urlhaus",
        2,
        1,
        "",
    )
    hit = store.match_url("http://203.0.113.90:8080/bins/mips")
    assert hit is not None
    assert (hit.category, hit.severity, hit.tags) == ("malware-download", 2, "elf,mirai")
    off = store.match_url("https://files.example.net/inv.zip")
    assert off is not None and off.severity == 3
    assert store.match_domain("files.example.net") is None  # a URL lists a URL, not its host
    assert store.problems[0].line == 11


def test_spamhaus_drop_text_and_json(tmp_path: Path) -> None:
    text = write(
        tmp_path / "drop.txt",
        "; Spamhaus DROP List 2026/11/26 - (c) 2026 The Spamhaus Project SLU\n"
        "; Last-Modified: Thu, 26 Nov 2026 09:12:33 GMT\n"
        "192.0.2.0/24 ; SBL256894\n"
        "198.18.128.0/17 ; SBL434604\n",
    )
    js = write(
        tmp_path / "drop_v6.json",
        '{"cidr":"2001:db8:66::/48","sblid":"SBL301771","rir":"ripencc"}\n'
        '{"cidr":"203.0.113.128\\/25","sblid":"SBL1","rir":"arin"}\n'
        '{"type":"metadata","timestamp":1790072042,"size":2,"records":2}\n',
    )
    store = load_files([str(text), str(js)])
    assert [f.format for f in store.files] == ["spamhaus-drop", "spamhaus-drop-json"]
    hit = ip(store, "192.0.2.55")
    assert hit is not None
    assert (hit.value, hit.source, hit.category, hit.tags) == (
        "192.0.2.0/24",
        "spamhaus-drop",
        "hijacked-network",
        "SBL256894",
    )
    assert ip(store, "198.18.200.1").tags == "SBL434604"
    assert ip(store, "198.18.0.1") is None
    assert ip(store, "2001:db8:66::1").tags == "SBL301771"
    assert ip(store, "203.0.113.200").tags == "SBL1"
    assert not store.problems


def test_threatfox_and_sslbl_csv(tmp_path: Path) -> None:
    tf = write(
        tmp_path / "threatfox.csv",
        '# "first_seen_utc","ioc_id","ioc_value","ioc_type","threat_type","fk_malware",'
        '"malware_alias","malware_printable","last_seen_utc","confidence_level","reference",'
        '"tags","anonymous","reporter"\n'
        '"2026-11-26 10:00:00","1","203.0.113.77:443","ip:port","botnet_cc","win.cobalt",'
        '"","Cobalt Strike","","100","","cs","0","x"\n'
        '"2026-11-26 10:00:00","2","c2.example.org","domain","botnet_cc","win.x","","X","",'
        '"40","","","0","x"\n'
        '"2026-11-26 10:00:00","3","0123456789abcdef0123456789abcdef","md5_hash","payload",'
        '"win.x","","X","","50","","","0","x"\n',
    )
    ja3 = write(
        tmp_path / "sslbl.csv",
        "# ja3_md5,Firstseen,Lastseen,Listingreason\n"
        "b386946a5a44d1ddcc843bc75336dfce,2017-07-14 18:08:15,2019-07-27 20:42:54,Dridex\n",
    )
    store = load_files([str(tf), str(ja3)])
    assert store.files[0].skipped == 1 and store.files[0].indicators == 2
    c2 = ip(store, "203.0.113.77")
    assert c2 is not None
    assert (c2.category, c2.severity, c2.tags) == ("botnet-cc", 1, "Cobalt Strike")
    dom = store.match_domain("c2.example.org")
    assert dom is not None and dom.severity == 3  # low confidence
    fp = store.match_ja3("b386946a5a44d1ddcc843bc75336dfce")
    assert fp is not None and (fp.source, fp.tags) == ("sslbl", "Dridex")
    assert not store.problems


# -- bad input -----------------------------------------------------------------------------------


def test_bad_lines_reported_with_file_and_line(tmp_path: Path) -> None:
    f = write(
        tmp_path / "list.txt",
        "203.0.113.1\n"
        "999.1.2.3\n"
        "203.0.113.2\n"
        "198.51.100.0/33\n"
        "0.0.0.0/0\n"
        "ftp://x.example/\n"
        "203.0.113.3\n"
        "good.example\n"
        "\xff\xfe junk\n"
        "# watchpost: colour=blue\n" + "".join(f"192.0.2.{i}\n" for i in range(10)),
    )
    store = load_files([str(f)])
    assert store.counts["ip"] == 13 and store.counts["domain"] == 1
    assert store.files[0].bad_lines == 6 and not store.files[0].broken
    text = [str(p) for p in store.problems]
    assert text[0] == f"{f}:2: not an address: '999.1.2.3'"
    assert [p.line for p in store.problems] == [2, 4, 5, 6, 9, 10]
    assert "too wide" in text[2]
    assert "not an http(s) URL" in text[3]


def test_non_utf8_line_is_named(tmp_path: Path) -> None:
    f = write(tmp_path / "l.txt", b"203.0.113.1\n203.0.113.2\n\xc3\x28bad.example\n")
    store = load_files([str(f)])
    assert [str(p) for p in store.problems] == [f"{f}:3: not UTF-8 text"]


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 40, "binary data"),
        (random.Random(3).randbytes(4096).replace(b"\0", b"\1") + b"\n", "mostly not indicators"),
        (b"203.0.113.1\n203.0.113.2\n203.0.11", "ends mid-line"),
        (b"x" * (10 << 20), "mostly not indicators"),
    ],
    ids=["binary", "junk", "half-written", "10MB-single-line"],
)
def test_broken_file_is_refused_and_does_not_poison_the_rest(
    tmp_path: Path, content: bytes, why: str
) -> None:
    good = write(tmp_path / "good.txt", "203.0.113.66\nevil.example\n")
    bad = write(tmp_path / "bad.txt", content)
    store = load_files([str(bad), str(good)])
    assert [f.path for f in store.broken] == [str(bad)]
    assert why in store.broken[0].broken
    assert store.counts["ip"] == 1 and store.counts["domain"] == 1  # nothing from bad.txt
    assert ip(store, "203.0.113.66") is not None
    assert ip(store, "203.0.113.1") is None
    assert any(str(bad) in str(p) and "refused" in str(p) for p in store.problems)
    if why != "binary data":
        assert len(store.problems) <= intel.MAX_PROBLEMS_PER_FILE + 1


def test_long_line_among_good_lines(tmp_path: Path) -> None:
    f = write(tmp_path / "l.txt", "203.0.113.1\n" + "a" * 100_000 + "\n203.0.113.2\n")
    store = load_files([str(f)])
    assert store.counts["ip"] == 2 and not store.broken
    assert [str(p) for p in store.problems] == [f"{f}:2: line longer than 16384 bytes"]


def test_missing_file_reported(tmp_path: Path) -> None:
    good = write(tmp_path / "good.txt", "203.0.113.66\n")
    store = load_files([str(tmp_path / "nope.txt"), str(good)])
    assert "cannot read" in store.broken[0].broken
    assert ip(store, "203.0.113.66") is not None


# -- version and cache ---------------------------------------------------------------------------


def test_version_is_a_content_hash(tmp_path: Path) -> None:
    a = write(tmp_path / "a.txt", "203.0.113.66\n")
    v1 = load_files([str(a)]).version
    assert v1 == load_files([str(a)]).version and len(v1) == 12
    write(a, "203.0.113.67\n")
    assert load_files([str(a)]).version != v1
    assert load_files([]).version == "empty"
    assert IntelStore().version == "empty" and IntelStore().match_ip(b"\1\2\3\4") is None


def test_cache_round_trip_and_invalidation(tmp_path: Path) -> None:
    f = write(tmp_path / "l.txt", "203.0.113.66\n198.51.100.0/24\n2001:db8::/32\nevil.example\n")
    first = load_files([str(f)], cache=True)
    cpath = intel.cache_path([str(f)])
    assert first.loaded_from == "sources" and cpath is not None and cpath.exists()
    second = load_files([str(f)], cache=True)
    assert second.loaded_from == "cache"
    assert second.version == first.version and second.counts == first.counts
    assert ip(second, "198.51.100.9").value == "198.51.100.0/24"
    assert ip(second, "2001:db8::1") is not None
    assert second.match_domain("www.evil.example") is not None
    # Same size, new content (mtime may even be equal on a coarse clock): the hash catches it.
    st = f.stat()
    write(f, "203.0.113.99\n198.51.100.0/24\n2001:db8::/32\nevil.example\n")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    third = load_files([str(f)], cache=True)
    assert third.loaded_from == "sources" and ip(third, "203.0.113.99") is not None
    assert ip(third, "203.0.113.66") is None
    # A corrupted cache is ignored, not trusted.
    data = bytearray(cpath.read_bytes())
    data[-10] ^= 0xFF
    cpath.write_bytes(bytes(data))
    fourth = load_files([str(f)], cache=True)
    assert fourth.loaded_from == "sources" and ip(fourth, "203.0.113.99") is not None


def test_no_cache_written_for_a_refused_file(tmp_path: Path) -> None:
    good = write(tmp_path / "good.txt", "203.0.113.66\n")
    bad = write(tmp_path / "bad.txt", b"\0\0\0")
    load_files([str(good), str(bad)], cache=True)
    assert not intel.cache_path([str(good), str(bad)]).exists()


# -- the manager: atomic reload ------------------------------------------------------------------


def test_reload_keeps_old_store_when_new_load_fails(tmp_path: Path) -> None:
    f = write(tmp_path / "feed.txt", "203.0.113.66\n")
    seen: list[str] = []
    mgr = IntelManager([str(f)], cache=False, listeners=[lambda s: seen.append(s.version)])
    first = mgr.load()
    assert first.ok and mgr.store.match_ip(bytes([203, 0, 113, 66])) is not None
    old = mgr.store
    write(f, b"\x00\x01binary junk\x00")
    result = mgr.reload().join() or mgr.last
    assert result is not None and not result.ok
    assert mgr.store is old and mgr.version == first.version
    assert "feed.txt" in result.message and "binary" in result.message
    assert mgr.status()["last_load"]["ok"] is False
    assert seen == [first.version]
    write(f, "203.0.113.67\n")
    assert mgr.load().ok
    assert mgr.store is not old and ip(mgr.store, "203.0.113.67") is not None
    assert seen == [first.version, mgr.version]


def test_old_store_serves_until_new_one_is_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = write(tmp_path / "feed.txt", "203.0.113.66\n")
    mgr = IntelManager([str(f)], cache=False)
    mgr.load()
    old = mgr.store
    started, release = threading.Event(), threading.Event()
    real = intel.load_files

    def slow_load(*args: object, **kw: object) -> IntelStore:
        started.set()
        assert release.wait(10)
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(intel.manager, "load_files", slow_load)
    write(f, "203.0.113.67\n")
    thread = mgr.reload()
    assert started.wait(10)
    assert mgr.loading and mgr.store is old  # still the old one while the new is being built
    assert ip(mgr.store, "203.0.113.66") is not None
    release.set()
    thread.join(10)
    assert not mgr.loading and mgr.last is not None and mgr.last.ok
    assert ip(mgr.store, "203.0.113.67") is not None and ip(mgr.store, "203.0.113.66") is None


def test_first_load_serves_the_good_files(tmp_path: Path) -> None:
    good = write(tmp_path / "good.txt", "203.0.113.66\n")
    bad = write(tmp_path / "bad.txt", b"\0junk")
    mgr = IntelManager([str(good), str(bad)], cache=False)
    res = mgr.load()
    assert res.ok and "refused bad.txt" in res.message
    assert ip(mgr.store, "203.0.113.66") is not None


def test_manager_compiles_in_a_child_process(tmp_path: Path) -> None:
    f = write(tmp_path / "feed.txt", "203.0.113.66\nevil.example\n")
    mgr = IntelManager([str(f)], cache=True, cache_dir=str(tmp_path / "cache"))
    res = mgr.load()
    assert res.ok and mgr.store.loaded_from == "cache"  # the child wrote it, we only read it
    assert mgr.store.match_domain("a.evil.example") is not None
    assert mgr.status()["version"] == mgr.version != "empty"


def test_check_command_reports_refused_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    good = tmp_path / "good.txt"
    good.write_text("203.0.113.66\n")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\0\0")
    assert intel.main(["check", str(good)]) == 0
    assert intel.main(["check", str(good), str(bad)]) == 1
    assert "binary data" in capsys.readouterr().out


def test_sniffing_does_not_mistake_plain_lists(tmp_path: Path) -> None:
    """A comment that reads like a CSV header, DShield's "start end prefix" ranges and trailing
    words keep a plain list plain."""
    f = write(tmp_path / "notes.txt", "# ip, domain, url lists below\n203.0.113.5\nevil.example\n")
    ds = write(tmp_path / "block.txt", "64.62.156.0\t64.62.156.255\t24\t356\tHE\n")
    words = write(tmp_path / "words.txt", "203.0.113.9 seen scanning\nbad.example phishing kit\n")
    store = load_files([str(f), str(ds), str(words)])
    assert [r.format for r in store.files] == ["plain", "plain", "plain"]
    assert not store.problems
    assert ip(store, "64.62.156.200").value == "64.62.156.0/24"
    assert ip(store, "203.0.113.9") is not None and store.match_domain("bad.example") is not None
