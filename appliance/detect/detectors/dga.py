"""`dga`: an office computer looking up names that a domain generation algorithm made up.

Malware that finds its server through a DGA (Conficker, Cryptolocker, Necurs, ...) looks up
dozens to thousands of made-up names a day, of which nearly all do not exist. One odd-looking
name proves little: popular-domain lists are full of ad-network and CDN names that look random
too, so every signature here needs several names from one host:

- 8105001: `failed_names` random-looking registrable domains that do not exist (NXDOMAIN or
  SERVFAIL) within `window` seconds. The classic DGA burst; severe.
- 8105002: `strong_names` very random-looking registrable domains within `burst_window`, whatever
  the answer (a capture with only queries, or a resolver that sinkholes).
- 8105003: more than `nxdomain_per_hour` distinct non-existent registrable domains in an hour,
  however they look (Maltrail's heuristic).

How random a name looks is judged on its registrable label only: ``xkqzjwbvtm`` in
``www.xkqzjwbvtm.co.uk``, not the CDN hash in ``d3c4b5.cloudfront.net`` (that is the tunnel
detector's business). The score is the evidence, in bits, that the label's letter pairs come from
uniformly random letters rather than from text: each pair costs -log2 P(b | a) under a letter-pair
model of English (built once from the English manual pages of a Debian system, 61 M letters, and
kept below as a table), minus log2(26) for uniform letters. Well-known technical abbreviations
(cdn, img, api, ...) are masked first, pronounceable labels (enough vowels, no consonant run
longer than three: pinyin, romaji) are never taken as random, and letter/digit alternation adds
evidence. A hex string of 12
or more characters with at least three digits and a letter is taken as generated outright.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from appliance.alerts.model import Signature
from appliance.detect.base import Detector, Loader, Options

if TYPE_CHECKING:
    from appliance.detect.engine import Context
    from appliance.detect.records import DnsMessage
    from appliance.packet.decode import Packet
    from appliance.packet.flows import Flow

CATEGORY = "DGA"
FAILED = Signature(
    8105001,
    "DGA: a computer looked up several random-looking domains that do not exist "
    "(malware searching for its control server)",
    CATEGORY,
    1,
)
STRONG = Signature(
    8105002,
    "DGA: a computer looked up many random-looking domains (possible malware)",
    CATEGORY,
    2,
)
NXDOMAINS = Signature(
    8105003,
    "DGA: a computer looked up many domains that do not exist",
    CATEGORY,
    2,
)

NXDOMAIN, SERVFAIL = 3, 2
PTR = 12
SAMPLE = 5  # example names carried in an alert
PRUNE_EVERY = 30.0
SCORE_CACHE = 8192
GENERATED = 40.0  # the score of a label that is certainly generated (a long hex string)

# Second-level labels under which two-letter country TLDs register names (co.uk, com.au, ne.jp,
# gov.in, ...): enough of the public suffix list to find the label a registrant chose.
SECOND_LEVEL = frozenset(
    (  # noqa: SIM905 (a word list reads better than 38 quoted strings)
        "ac ad asn co com ed edu firm gen go gob gouv gov govt gr id idv in ind info int lg ltd "
        "me mil mod ne net nhs nic nom or org plc police sch school web"
    ).split()
)

# Letter-pair costs: row a, column b holds round(-2 * log2 P(b | a)) in base 32, i.e. the cost
# in half-bits of letter b following letter a in English text (add-one smoothed counts of the
# letters of every English manual page of a Debian 12 system, words run together so that pairs
# across word boundaries, as in "facebook", are counted too).
_PAIR_TABLE = (
    "f98ajc9k9lg795lag785bcgfck",
    "7hch3hij8ck5fe8fmbaf6lji7n",
    "7h9h5hj88na7hj5en9d6algmcr",
    "79ba4bcd6jg9cc8bma99afaigk",
    "8e77b9cgblhaa7baf667ddcbei",
    "7hdfaaii4ni7ge5fm9c69jikbl",
    "9f6e5cd96jg9db9ai7897fekjj",
    "6ieh2fkj6mkheh8gpde8elingl",
    "bb8998apltj8a46cnc67ocjfvd",
    "bmih1homhkmjik6ihk8jaiinqp",
    "9ebd2adh8kgbaccdjd798gelkl",
    "7dca5ehi6li7gg59jf999ghl9m",
    "4aee4gij7mke7e87ngbc9igmcp",
    "7c96797i9kgbec8doe75bdfkek",
    "bc9bf8bjdbd985bap5a96bbigo",
    "7fcb5dga8qh7hf79o5a88fingp",
    "affcedjfclm8gffeheac1ihinm",
    "7d9b4b9h7mcdab6dnb98abembo",
    "8f8c5bdb7mdcdd78hc85afcldk",
    "7cbe6dg46mkcdf7bh998chdjbm",
    "cbb79fenbto777h8t666kmiitq",
    "4ihj3jjl3rlhchacqhgikhmmso",
    "6hbd8gf63mjbfb6fqbacihcklo",
    "6f8b88eg6mibcfc5mbb5ffedbh",
    "8a9aa9dd7hgc9976ca67cbbjhh",
    "5jfh2gkjaqoheh4fgiefdhilhf",
)
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
# Cost in bits, relative to uniformly random letters (log2 26 = 4.70 bits): positive for pairs
# rarer in text than chance, negative for common ones.
PAIR_BITS: dict[str, float] = {
    a + b: int(row[j], 32) / 2 - 4.700439718141092
    for a, row in zip(_LETTERS, _PAIR_TABLE, strict=True)
    for j, b in enumerate(_LETTERS)
}

_TOKENS = re.compile(
    r"cdns?|dns|vpn|srv|svc|img|js|css|hd|tv|xxx|www|bbs|sms|rtb|cms|crm|ssl|ftp|smtp|http|api"
    r"|app|web|ads"
)
_LETTER_RUNS = re.compile(r"[a-z]+")
_CONSONANT_RUNS = re.compile(r"[bcdfghjklmnpqrstvwxz]+")
_VOWELS = frozenset("aeiouy")
_HEX = frozenset("0123456789abcdef")
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")


def _suffix(raw: str) -> None:
    """a domain suffix"""
    text = raw.strip(".").lower()
    if not text or not all(_LABEL.fullmatch(p) for p in text.split(".")):
        raise ValueError(f"not a domain suffix: {raw!r}")


def split_name(name: str) -> tuple[str, str, str]:
    """(subdomain, registrable label, public suffix) of a lower-case name.

    ``a.b.example.co.uk`` → (``a.b``, ``example``, ``co.uk``); a bare suffix or a single label
    gives an empty registrable label. A small rule stands in for the public suffix list: a
    two-letter country TLD preceded by a common second level (co, com, org, ac, gov, ...).
    """
    labels = name.split(".")
    n = len(labels)
    if n < 2:
        return "", "", name
    suffix_len = 2 if n >= 3 and len(labels[-1]) == 2 and labels[-2] in SECOND_LEVEL else 1
    if n <= suffix_len:
        return "", "", name
    reg = n - suffix_len - 1
    return ".".join(labels[:reg]), labels[reg], ".".join(labels[reg + 1 :])


def registrable_domain(name: str) -> str:
    """The registrable domain (``example.co.uk``) of a name, or "" if it has none."""
    _sub, label, suffix = split_name(name)
    return f"{label}.{suffix}" if label else ""


def randomness(label: str) -> float:
    """Bits of evidence that `label` is random letters and digits rather than text (see above).

    Typical values: -40 for ``googlesyndication``, about -5 for popular names on average,
    +25 for 13 random letters.
    """
    n = len(label)
    digits = sum(c.isdigit() for c in label)
    if n >= 12 and digits >= 3 and digits < n and _HEX.issuperset(label):
        return GENERATED
    runs = _LETTER_RUNS.findall(_TOKENS.sub(".", label))
    bits = 0.0
    pair = PAIR_BITS
    for run in runs:
        for i in range(len(run) - 1):
            bits += pair[run[i : i + 2]]
    if runs and digits < 3:
        letters = "".join(runs)
        vowels = sum(c in _VOWELS for c in letters)
        longest = max((len(r) for r in _CONSONANT_RUNS.findall(label)), default=0)
        if vowels >= 0.35 * len(letters) and longest <= 3:
            bits = min(bits, 0.0)  # reads as syllables (pinyin, romaji): not random
    switches = sum(1 for i in range(n - 1) if label[i].isdigit() != label[i + 1].isdigit())
    if switches > 2:
        bits += 1.5 * (switches - 2)
    return bits


class _Host:
    """What one querying host did recently: registrable domain → time last seen."""

    __slots__ = ("failed", "last", "nx", "strong")

    def __init__(self) -> None:
        self.failed: dict[str, float] = {}
        self.strong: dict[str, float] = {}
        self.nx: dict[str, float] = {}
        self.last = 0.0


class DgaDetector(Detector):
    name = "dga"
    # replay --workers (Detector.partition): state per office host asking.
    partition = "client"
    signatures = (FAILED, STRONG, NXDOMAINS)

    def __init__(self) -> None:
        self._hosts: dict[bytes, _Host] = {}
        self._judged: dict[str, tuple[str, float] | None] = {}
        self._next_prune = 0.0

    @classmethod
    def load(cls, loader: Loader) -> None:
        loader.add_option(
            "min_length",
            int,
            8,
            "Shortest registrable label judged for randomness (shorter ones are often "
            "abbreviations).",
            range=(4, 63),
            remote=True,
        )
        loader.add_option(
            "score",
            float,
            8.0,
            "Randomness (bits) above which a name counts as random-looking when its lookup fails.",
            range=(0.0, 1000.0),
            remote=True,
        )
        loader.add_option(
            "strong_score",
            float,
            20.0,
            "Randomness (bits) above which a name counts as random-looking whatever the answer.",
            range=(0.0, 1000.0),
            remote=True,
        )
        loader.add_option(
            "failed_names",
            int,
            3,
            "Random-looking non-existent domains from one computer within `window` that raise "
            "an alert.",
            range=(1, 10_000),
            remote=True,
        )
        loader.add_option(
            "strong_names",
            int,
            10,
            "Very random-looking domains from one computer within `burst_window` that raise an "
            "alert.",
            range=(1, 10_000),
            remote=True,
        )
        loader.add_option(
            "nxdomain_per_hour",
            int,
            20,
            "Alert when one computer looks up more than this many distinct non-existent "
            "domains within `window` (an hour by default).",
            range=(1, 100_000),
            remote=True,
        )
        loader.add_option(
            "window",
            float,
            3600.0,
            "Seconds over which non-existent lookups are counted.",
            range=(1.0, 86400.0),
            remote=True,
        )
        loader.add_option(
            "burst_window",
            float,
            600.0,
            "Seconds over which very random-looking lookups are counted.",
            range=(1.0, 86400.0),
            remote=True,
        )
        loader.add_option(
            "ignore_suffixes",
            tuple[str, ...],
            ("arpa", "local", "lan", "home", "internal", "localdomain", "corp", "intranet"),
            "Names under these suffixes are never judged (reverse lookups, local names).",
            check=_suffix,
            remote=True,
        )
        loader.add_option(
            "max_hosts",
            int,
            4096,
            "Querying computers tracked at once (oldest dropped).",
            range=(1, 1_000_000),
            remote=True,
            remote_range=(1, 100_000),
        )

    def configure(self, opts: Options) -> None:
        self.min_length, self.score, self.strong_score = (
            opts.min_length,
            opts.score,
            opts.strong_score,
        )
        self.failed_names, self.strong_names = opts.failed_names, opts.strong_names
        self.nxdomain_per_hour = opts.nxdomain_per_hour
        self.window, self.burst_window = opts.window, opts.burst_window
        self.max_hosts = opts.max_hosts
        self.ignore = tuple("." + s.strip(".").lower() for s in opts.ignore_suffixes)
        self._judged.clear()

    # -- judging names ---------------------------------------------------------------------

    def _judge(self, qname: str) -> tuple[str, float] | None:
        """(registrable domain, randomness) of a name worth judging, else None (cached: the
        same names come back all day)."""
        cache = self._judged
        if qname in cache:
            return cache[qname]
        judged = self._judge_uncached(qname)
        if len(cache) >= SCORE_CACHE:
            cache.clear()
        cache[qname] = judged
        return judged

    def _judge_uncached(self, qname: str) -> tuple[str, float] | None:
        if not qname or "." not in qname or ("." + qname).endswith(self.ignore):
            return None
        _sub, label, suffix = split_name(qname)
        if not label or not suffix.isascii() or not suffix.replace(".", "").isalpha():
            return None  # no registrable label, or an address-like or escaped suffix
        if len(label) < self.min_length or label.startswith("xn--") or "\\" in label:
            score = float("-inf")
        else:
            score = randomness(label)
        return f"{label}.{suffix}", score

    # -- hooks -------------------------------------------------------------------------------

    def dns(self, ctx: Context, pkt: Packet, flow: Flow, msg: DnsMessage) -> None:
        if msg.opcode != 0 or msg.qtype == PTR:
            return
        judged = self._judge(msg.qname)
        if judged is None:
            return
        domain, score = judged
        failed = msg.response and msg.rcode in (NXDOMAIN, SERVFAIL)
        nx = msg.response and msg.rcode == NXDOMAIN
        if not ((failed and (nx or score >= self.score)) or score >= self.strong_score):
            return
        host = self._host(flow.client, ctx.now)
        now = ctx.now
        if score >= self.strong_score:
            self._count(ctx, flow, msg, host.strong, domain, STRONG, self.strong_names, now)
        if failed and score >= self.score:
            self._count(ctx, flow, msg, host.failed, domain, FAILED, self.failed_names, now)
        if nx:
            self._count(ctx, flow, msg, host.nx, domain, NXDOMAINS, self.nxdomain_per_hour + 1, now)

    def tick(self, ctx: Context, now: float) -> None:
        if now < self._next_prune:
            return
        self._next_prune = now + PRUNE_EVERY
        self._prune(now)

    # -- state -------------------------------------------------------------------------------

    def _host(self, addr: bytes, now: float) -> _Host:
        hosts = self._hosts
        host = hosts.pop(addr, None)  # re-inserted below: the dict stays in activity order
        if host is None:
            host = _Host()
            while len(hosts) >= self.max_hosts:
                del hosts[next(iter(hosts))]
        hosts[addr] = host
        host.last = now
        return host

    def _count(
        self,
        ctx: Context,
        flow: Flow,
        msg: DnsMessage,
        seen: dict[str, float],
        domain: str,
        sig: Signature,
        threshold: int,
        now: float,
    ) -> None:
        """Note `domain` in `seen`; alert (and start afresh) once it holds `threshold`."""
        seen.pop(domain, None)
        seen[domain] = now  # insertion order is time order
        window = self.burst_window if sig is STRONG else self.window
        if len(seen) < threshold:
            return
        for name in list(seen):  # forget names that fell out of the window first
            if now - seen[name] <= window:
                break
            del seen[name]
        if len(seen) < threshold:
            return
        names = list(seen)
        first = seen[names[0]]
        seen.clear()
        ctx.alert(
            sig,
            flow=flow,
            app=msg.eve(),
            count=len(names),
            first_seen=first,
            details={
                "domains": len(names),
                "window_s": window,
                "examples": names[-SAMPLE:],
            },
        )

    def _prune(self, now: float) -> None:
        # Hosts are in activity order: forget the idle ones from the front, stop at the first
        # live one (O(expired)). A live host's name lists need no sweep: each is bounded by its
        # threshold and `_count` drops names that fell out of the window before judging.
        horizon = max(self.window, self.burst_window)
        hosts = self._hosts
        limit = now - horizon
        while hosts:
            addr = next(iter(hosts))
            if hosts[addr].last >= limit:
                break
            del hosts[addr]
