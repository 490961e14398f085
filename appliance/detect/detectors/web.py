"""`web`: attacks in plain-HTTP requests, and risky downloads.

Works on the request heads the HTTP dissector hands over (method, target, Host, User-Agent):
every request within the flow's head, the keep-alive ones and those pipelined in one segment.
Checks:

- the request target, percent-decoded once and then again (attackers double-encode to slip past
  filters), for SQL injection, path traversal, command injection and cross-site scripting;
- the User-Agent, for attack tools that announce themselves (sqlmap, Nikto, Nmap's scripting
  engine, masscan, zgrab, gobuster, ...) and for exploits carried in headers (Log4Shell
  ``${jndi:``, Shellshock ``() {``);
- per source, a sweep: `sweep_paths` distinct well-known sensitive paths (``/.env``,
  ``/.git/config``, ``/wp-login.php``, ...) within `sweep_window` seconds;
- downloads of programs (.exe, .scr, .ps1, .hta, .msi, ...) straight from an IP address, an
  unusual port or a throwaway host (dynamic DNS, abused TLDs), and IoT malware fetches
  (``/bins.sh``, ``/Mozi.m``, ``*.arm7``, or an injected ``wget http://...; chmod +x``).

Alerts carry method, host, user agent and the target with query values removed (see
`HttpRequest.eve`), plus the name of the check that matched and where: never the matched text,
cookies, credentials or body.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from urllib.parse import unquote, unquote_plus

from appliance.alerts.model import Signature
from appliance.detect.base import Detector, Loader, Options

if TYPE_CHECKING:
    from appliance.detect.engine import Context
    from appliance.detect.records import HttpRequest
    from appliance.packet.decode import Packet
    from appliance.packet.flows import Flow

ATTACK = "Web attack"


def _not_blank(raw: str) -> None:
    """not empty"""
    if not raw.strip():
        raise ValueError("must not be empty")


def _host_suffix(raw: str) -> None:
    """a domain suffix"""
    text = raw.strip().strip(".").lower()
    if not text or " " in text or not all(text.split(".")):
        raise ValueError(f"not a domain suffix: {raw!r}")


DOWNLOAD = "Risky download"
SQLI = Signature(8107001, "Web attack: SQL injection attempt in a web request", ATTACK, 2)
TRAVERSAL = Signature(
    8107002,
    "Web attack: path traversal attempt (reaching for files outside the web root)",
    ATTACK,
    2,
)
CMDI = Signature(
    8107003, "Web attack: attempt to run commands on a web server (command injection)", ATTACK, 1
)
XSS = Signature(8107004, "Web attack: cross-site scripting attempt in a web request", ATTACK, 2)
SCANNER = Signature(
    8107005, "Web attack: request from a known attack or vulnerability-scanning tool", ATTACK, 2
)
SWEEP = Signature(
    8107006,
    "Web attack: one host probed many sensitive paths (hunting for exposed files and admin pages)",
    ATTACK,
    2,
)
PROGRAM = Signature(
    8107010,
    "Risky download: a program file fetched over plain HTTP from a bare IP address or an "
    "unusual host",
    DOWNLOAD,
    2,
)
IOT = Signature(
    8107011,
    "Risky download: IoT malware being fetched (a dropper script or device binary)",
    DOWNLOAD,
    1,
)

CHECKS = (
    "sql-injection",
    "path-traversal",
    "command-injection",
    "xss",
    "scanner",
    "sweep",
    "program-download",
    "iot-dropper",
)

_SQLI = re.compile(
    r"""\bunion\b[\s(]+(?:all\s+|distinct\s+)?select\b
    |\bselect\b.{0,120}?\bfrom\b.{0,120}?\b(?:information_schema|mysql\.user|sysobjects
        |pg_catalog|sqlite_master)\b
    |['"`)]\s*(?:(?:or|and)\b|\|\||&&)\s*\(?\s*['"]?\w*['"]?\s*(?:=|<|>|\blike\b|\bis\b)
    |['"`)]\s*(?:or|and)\s+\d+\s*(?:--|\#|/\*|$)
    |\b(?:sleep|benchmark|pg_sleep|extractvalue|updatexml|load_file|char|concat)\s*\(.{0,40}?\)
        .{0,40}?(?:--|\#|/\*|\b(?:and|or|select)\b)
    |\b(?:sleep|pg_sleep)\s*\(\s*\d+\s*\)\s*(?:--|\#|/\*|$|['")])
    |\bwaitfor\s+delay\s+'
    |(?:['"`)]|\b\d+)\s*;\s*(?:drop\s+(?:table|database)|delete\s+from|insert\s+into
        |update\s+\w+\s+set|exec(?:ute)?[\s(]|shutdown\b|declare\s+@|select\s)
    |\binto\s+(?:out|dump)file\b
    |@@(?:version|datadir|hostname)\b
    |\bxp_cmdshell\b
    |\border\s+by\s+\d+\s*(?:--|\#)
    |['"]\s*(?:--|\#)\s*$
    """,
    re.VERBOSE,
)
_TRAVERSAL = re.compile(
    r"""(?:\.\.[/\\]){2,}
    |(?:\.\.[/\\]).{0,200}?(?:etc[/\\](?:passwd|shadow|hosts|issue)|win\.ini|boot\.ini
        |system32|\.ssh[/\\]|proc[/\\]self)
    |^/?(?:etc/(?:passwd|shadow)|proc/self/environ)
    |[=:]/?(?:etc/(?:passwd|shadow)|proc/self/environ)\b
    |\bc:[/\\]+windows[/\\]
    |\bfile:/{2,3}(?:etc|c:)
    """,
    re.VERBOSE,
)
# Overlong UTF-8 and double-encoded dots and slashes, looked for in the raw target.
_TRAVERSAL_RAW = re.compile(r"%c0%a[ef]|%e0%80%ae|%c1%9c|%25c0%25ae|%252e%252e")
_SHELL_WORDS = (
    r"(?:/usr)?(?:/s?bin/)?(?:cat|wget|curl|id|uname|whoami|sh|bash|nc|ncat|netcat|ping"
    r"|nslookup|chmod|busybox|tftp|python[23]?|perl|php|rm|echo|sleep|powershell|cmd(?:\.exe)?"
    r"|ifconfig|ls)"
)
_CMDI = re.compile(
    rf"""(?:[;|`\n]|&&|\$\()\s*{_SHELL_WORDS}(?=$|[\s;|&`)<>$'"+])
    |\$\{{ifs\}}|\$ifs\b
    |\$\{{jndi:
    |\(\)\s*\{{\s*:?\s*;?\s*\}}\s*;
    |\bcmd(?:\.exe)?\s+/[ck]\s
    |\b(?:wget|curl)\s+(?:-\S+\s+)*(?:https?|ftp)://
    |<\?php
    """,
    re.VERBOSE,
)
_XSS = re.compile(
    r"""<\s*(?:script|iframe|svg|object|embed|math|details|marquee|body|img|video|audio|input)\b
        [^>]{0,200}?(?:>|[\s"'/]on[a-z]{3,20}\s*=|\bsrc\s*=)
    |<\s*/?\s*script\b
    |\bjavascript\s*:
    |[\s"'/;]on(?:error|load|mouseover|focus|click|toggle|animationstart|pointerover)\s*=
    |\bdocument\s*\.\s*(?:cookie|domain|write)\b
    |\b(?:alert|prompt|confirm)\s*\(\s*(?:\d|['"`]|document)
    """,
    re.VERBOSE,
)
_HEADER_EXPLOIT = re.compile(r"\$\{jndi:|\$\{\$\{|\(\)\s*\{\s*:?\s*;?\s*\}\s*;")
# Attack tools that name themselves in the User-Agent (matched in the lower-cased value).
SCANNER_AGENTS = (
    "sqlmap", "nikto", "nmap scripting engine", "masscan", "zgrab", "gobuster", "dirbuster",
    "dirb/", "wfuzz", "fuzz faster u fool", "feroxbuster", "wpscan", "nuclei", "acunetix",
    "netsparker", "nessus", "openvas", "w3af", "arachni", "commix", "hydra", "jorgee", "zmeu",
    "morfeus", "paros/", "whatweb", "skipfish", "havij", "xsstrike", "jaeles", "l9explore",
    "l9tcpid", "struts-pwn", "medusa/", "naabu", "ffuf",
)  # fmt: skip
# A check's regex runs only when one of these strings is in the lower-cased target (decoded
# forms included): ordinary requests skip the regexes entirely.
GATES = {
    "sql-injection": ("'", '"', "`", ")", ";", "@@", "select", "waitfor", "outfile",
                      "dumpfile", "xp_cmdshell", "order"),
    "path-traversal": ("..", "etc/", "proc/self", "c:", "win.ini", "file:", "%c0", "%e0",
                       "%c1", "%25"),
    "command-injection": (";", "|", "`", "\n", "$", "&&", "()", "cmd", "wget", "curl", "<?"),
    "xss": ("<", "javascript", "document", "alert", "prompt", "confirm", "onerror", "onload",
            "onmouse", "onfocus", "onclick", "ontoggle", "onanimation", "onpointer"),
    "iot-dropper": ("wget", "curl", "tftp", "ftpget", "chmod", "busybox"),
}  # fmt: skip
# Paths that only attackers (and their scanners) ask for on an office's server or router. A sweep
# counts distinct *kinds* (the matched name), so a printer's many /cgi-bin/ pages count once.
_SENSITIVE = re.compile(
    r"""(?:^|/)(\.env|\.git/|\.svn/|\.hg/|\.ds_store|\.aws/|\.ssh/|\.htaccess|\.htpasswd|\.npmrc
    |\.vscode/|\.idea/|\.bash_history|\.dockerenv|id_rsa|wp-login\.php|wp-admin|xmlrpc\.php
    |wp-config\.php|phpmyadmin|pma/|myadmin|admin\.php|administrator/|config\.(?:php|json|yml)
    |configuration\.php|server-status|server-info|actuator|manager/html|jmx-console|web-console
    |invoker/|solr/|jenkins|cgi-bin/|boaform/|hnap1|gponform|setup\.cgi|vendor/phpunit
    |owa/auth|remote/login|_ignition|telescope|v2/_catalog|debug/pprof|web\.config|phpinfo\.php
    |info\.php|test\.php|shell\.php|sftp-config\.json|docker-compose\.ya?ml|database\.yml
    |storage/logs|elmah\.axd|trace\.axd|login\.action|axis2|backup|db\.sql|dump\.sql
    |[^/]*\.(?:bak|old|sql|swp)$)""",
    re.VERBOSE,
)
_PROGRAM = re.compile(
    r"\.(?:exe|scr|ps1|psm1|hta|msi|msp|bat|cmd|vbs|vbe|jse|wsf|wsh|lnk|dll|cpl|jar|apk)$"
)
_IOT_FILE = re.compile(
    r"""/(?:bins?|[\w.-]{0,20})\.sh$
    |/mozi\.[amsd]$
    |[./](?:arm[4-7]?|mips(?:el)?|mpsl|m68k|ppc|sh4|spc|sparc|x86(?:_64)?|i[3-6]86|aarch64|arc)$
    |/bins?/[\w.-]+$
    """,
    re.VERBOSE,
)
_IOT_COMMANDS = re.compile(
    r"""\b(?:wget|curl|tftp|ftpget)\b.{0,200}?(?:chmod|\bsh\b|busybox|/tmp/|\|\s*sh)
    |\bchmod\s+(?:\+x|[0-7]{3})\b
    |\bbusybox\s+(?:wget|tftp|ftpget)\b
    """,
    re.VERBOSE,
)
_IPV4_HOST = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")

# Registrable domains of free dynamic-DNS services and TLDs often used for throwaway hosts.
DEFAULT_RISKY_SUFFIXES = (
    "duckdns.org",
    "no-ip.com",
    "no-ip.org",
    "ddns.net",
    "hopto.org",
    "zapto.org",
    "sytes.net",
    "serveftp.com",
    "servehttp.com",
    "dynu.net",
    "freedns.afraid.org",
    "000webhostapp.com",
    "ngrok.io",
    "ngrok-free.app",
    "trycloudflare.com",
    "tk",
    "ml",
    "ga",
    "cf",
    "gq",
    "top",
    "xyz",
    "zip",
    "mov",
    "su",
)


def decoded_forms(target: str) -> tuple[str, ...]:
    """The target as sent, decoded once (``+`` as space) and, if still encoded, twice."""
    if "%" not in target and "+" not in target:
        return (target,)
    once = unquote_plus(target, errors="replace")
    if "%" in once:
        return (target, once, unquote(once, errors="replace"))
    return (target, once)


def _where(rx: re.Pattern[str], forms: tuple[str, ...]) -> str:
    """Where `rx` matches in any form of the target: "path", "query", or "" for nowhere."""
    for text in forms:
        m = rx.search(text)
        if m is not None:
            cut = text.find("?")
            return "query" if 0 <= cut <= m.start() else "path"
    return ""


def bare_host(host: str) -> str:
    """The Host header without its port; IPv6 literals keep their brackets."""
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end > 0 else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def host_port(host: str) -> int:
    if host.startswith("["):
        _, _, rest = host.partition("]")
        return int(rest[1:]) if rest[1:].isdigit() else 0
    _, sep, port = host.rpartition(":")
    return int(port) if sep and port.isdigit() else 0


class WebDetector(Detector):
    name = "web"
    # replay --workers (Detector.partition): state per client (path sweeps).
    partition = "client"
    signatures = (SQLI, TRAVERSAL, CMDI, XSS, SCANNER, SWEEP, PROGRAM, IOT)

    def __init__(self) -> None:
        # source address → (window start, hashes of the distinct sensitive paths it asked for)
        self._sweeps: dict[bytes, tuple[float, set[int]]] = {}
        self._next_prune = 0.0

    @classmethod
    def load(cls, loader: Loader) -> None:
        loader.add_option(
            "checks",
            tuple[str, ...],
            CHECKS,
            f"Checks to run (any of: {', '.join(CHECKS)}).",
            choices=CHECKS,
            remote=True,
        )
        loader.add_option(
            "sweep_paths",
            int,
            8,
            "Distinct sensitive paths from one source within `sweep_window` that make a sweep.",
            range=(2, 10_000),
            remote=True,
        )
        loader.add_option(
            "sweep_window",
            float,
            600.0,
            "Seconds over which a source's sensitive paths count.",
            range=(1.0, 86400.0),
            remote=True,
        )
        loader.add_option(
            "scanner_agents",
            tuple[str, ...],
            (),
            "More User-Agent substrings (case-insensitive) that mark an attack tool.",
            check=_not_blank,
            remote=True,
        )
        loader.add_option(
            "risky_suffixes",
            tuple[str, ...],
            DEFAULT_RISKY_SUFFIXES,
            "Host suffixes (dynamic DNS, throwaway TLDs) from which a program download is risky.",
            check=_host_suffix,
            remote=True,
        )
        loader.add_option(
            "max_sources",
            int,
            4096,
            "Sources whose sensitive paths are tracked at once.",
            range=(1, 1_000_000),
            remote=True,
            remote_range=(1, 100_000),
        )

    def configure(self, opts: Options) -> None:
        self.checks = frozenset(opts.checks)
        self.sweep_paths, self.sweep_window = opts.sweep_paths, opts.sweep_window
        self.max_sources = opts.max_sources
        self.agents = tuple(a.strip().lower() for a in opts.scanner_agents)
        self.risky = tuple("." + s.strip().strip(".").lower() for s in opts.risky_suffixes)

    # -- the hook ----------------------------------------------------------------------------

    def http(self, ctx: Context, pkt: Packet, flow: Flow, req: HttpRequest) -> None:
        target, host = req.path, req.host
        if target[:7].lower() == "http://":  # absolute form, as sent to a proxy
            authority, slash, rest = target[7:].partition("/")
            target = slash + rest
            host = host or authority
        path = unquote(target.partition("?")[0], errors="replace").lower()
        for sig, check, where in self._matches(target, path, host, req, flow):
            self._alert(ctx, flow, req, sig, {"check": check, "where": where})
        if "sweep" in self.checks:
            m = _SENSITIVE.search(path)
            if m is not None:
                self._sweep(ctx, flow, req, m.group(1).lower())

    def _matches(
        self, target: str, path: str, host: str, req: HttpRequest, flow: Flow
    ) -> list[tuple[Signature, str, str]]:
        """(signature, check, where) for every check the request fails."""
        checks = self.checks
        forms = tuple(f.lower() for f in decoded_forms(target))
        blob = "\x00".join(forms)  # a separator no gate string contains
        found: list[tuple[Signature, str, str]] = []
        for sig, check, rx in (
            (SQLI, "sql-injection", _SQLI),
            (TRAVERSAL, "path-traversal", _TRAVERSAL),
            (CMDI, "command-injection", _CMDI),
            (XSS, "xss", _XSS),
        ):
            if check not in checks or not any(g in blob for g in GATES[check]):
                continue
            where = _where(rx, forms)
            if not where and sig is TRAVERSAL and _TRAVERSAL_RAW.search(forms[0]):
                where = "path"
            if where:
                found.append((sig, check, where))
        ua = req.user_agent.lower()
        if (
            "command-injection" in checks
            and ("$" in ua or "()" in ua)
            and _HEADER_EXPLOIT.search(ua) is not None
        ):
            found.append((CMDI, "command-injection", "user-agent"))
        if (
            ua
            and "scanner" in checks
            and (any(a in ua for a in SCANNER_AGENTS) or any(a in ua for a in self.agents))
        ):
            found.append((SCANNER, "scanner", "user-agent"))
        if "iot-dropper" in checks:
            gated = any(g in blob for g in GATES["iot-dropper"])
            where = _where(_IOT_COMMANDS, forms) if gated else ""
            if where:
                found.append((IOT, "iot-dropper", where))
            elif _IOT_FILE.search(path) and self._odd_host(host, flow):
                found.append((IOT, "iot-dropper", "path"))
        if (
            "program-download" in checks
            and req.method in ("GET", "POST")
            and _PROGRAM.search(path)
            and self._odd_host(host, flow)
        ):
            found.append((PROGRAM, "program-download", "path"))
        return found

    def tick(self, ctx: Context, now: float) -> None:
        if now < self._next_prune:
            return
        self._next_prune = now + 30.0
        # Sources are in activity order (re-inserted on use): stop at the first live one, no
        # scan of the table; a live source past its window is restarted by its next request.
        sweeps = self._sweeps
        limit = now - self.sweep_window
        while sweeps:
            src = next(iter(sweeps))
            if sweeps[src][0] >= limit:
                break
            del sweeps[src]

    # -- helpers -----------------------------------------------------------------------------

    def _odd_host(self, host: str, flow: Flow) -> bool:
        """A download source no ordinary software vendor uses: a bare address, a missing Host,
        a port other than 80/8080, or a throwaway domain."""
        name = bare_host(host).lower().rstrip(".")
        if not name or name.startswith("[") or _IPV4_HOST.fullmatch(name):
            return True
        port = host_port(host) or flow.server_port
        if port not in (80, 8080):
            return True
        return ("." + name).endswith(self.risky)

    def _sweep(self, ctx: Context, flow: Flow, req: HttpRequest, kind: str) -> None:
        src = flow.client
        now = ctx.now
        entry = self._sweeps.pop(src, None)
        if entry is None or now - entry[0] > self.sweep_window:
            entry = (now, set())
            while len(self._sweeps) >= self.max_sources:
                del self._sweeps[next(iter(self._sweeps))]
        self._sweeps[src] = entry
        first, paths = entry
        paths.add(hash(kind))
        if len(paths) >= self.sweep_paths:
            count = len(paths)
            self._sweeps[src] = (now, set())  # a long sweep reports again every threshold
            self._alert(
                ctx,
                flow,
                req,
                SWEEP,
                {"check": "sweep", "paths": count, "window_s": self.sweep_window},
                count=count,
                first_seen=first,
            )

    def _alert(
        self,
        ctx: Context,
        flow: Flow,
        req: HttpRequest,
        sig: Signature,
        details: dict[str, object],
        count: int = 1,
        first_seen: float = 0.0,
    ) -> None:
        ctx.alert(
            sig,
            flow=flow,
            app=req.eve(),
            details=details,
            count=count,
            first_seen=first_seen,
        )
