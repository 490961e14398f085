"""The page belongs to the office side: input rules that keep it off the uplink.

Two small nftables tables of the page's own, replaced whole in one ``nft -f`` transaction and
removed when the page stops (the packet path's ``inet watchpost`` table is not touched):

- ``bridge watchpost_page``, input hook: frames for the device itself that came in on a bridge
  port other than the office port (``inline.office``) and ask for the page's TCP port are dropped,
  unless their source is in ``status.allow_from``. The bridge family sees the port a frame entered
  on, which the IP layer (where the frame arrives as ``br0``) no longer does.
- ``inet watchpost_page``, input hook: the page's port is reachable through loopback and the
  bridge only (so not through a second interface such as Wi-Fi), again unless the source is in
  ``status.allow_from``.

`rules` is a pure function (unit-tested); `apply` needs root and nft.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess

from appliance.config import Config

TABLE = "watchpost_page"
PRIORITY = -5


class GuardError(RuntimeError):
    pass


def _elements(nets: list[str]) -> str:
    return f"\t\telements = {{ {', '.join(nets)} }}\n" if nets else ""


def rules(config: Config, port: int) -> str:
    """The nft script for the page on `port`."""
    if not 0 < port < 65536:
        raise GuardError(f"status page port {port} out of range")
    inl = config.inline
    office, bridge = json.dumps(inl.office), json.dumps(inl.bridge)
    v4: list[str] = []
    v6: list[str] = []
    for net in config.status.allow_from:
        n = ipaddress.ip_network(net, strict=False)
        (v4 if n.version == 4 else v6).append(str(n))

    def sets() -> str:
        return (
            "\tset allow4 {\n\t\ttype ipv4_addr\n\t\tflags interval\n" + _elements(v4) + "\t}\n"
            "\tset allow6 {\n\t\ttype ipv6_addr\n\t\tflags interval\n" + _elements(v6) + "\t}\n"
        )

    allow = (
        f"\t\tip saddr @allow4 tcp dport {port} accept\n"
        f"\t\tip6 saddr @allow6 tcp dport {port} accept\n"
    )
    return (
        f"add table bridge {TABLE}\ndelete table bridge {TABLE}\n"
        f"table bridge {TABLE} {{\n" + sets() + "\tchain input {\n"
        f"\t\ttype filter hook input priority {PRIORITY}; policy accept;\n"
        f"\t\tiifname {office} accept\n"
        + allow
        + f"\t\tether type ip tcp dport {port} counter drop\n"
        f"\t\tether type ip6 tcp dport {port} counter drop\n"
        "\t}\n}\n"
        f"add table inet {TABLE}\ndelete table inet {TABLE}\n"
        f"table inet {TABLE} {{\n" + sets() + "\tchain input {\n"
        f"\t\ttype filter hook input priority {PRIORITY}; policy accept;\n"
        f'\t\ttcp dport {port} iifname {{ "lo", {bridge} }} accept\n'
        + allow
        + f"\t\ttcp dport {port} counter drop\n"
        "\t}\n}\n"
    )


def _nft(script: str) -> None:
    nft = shutil.which("nft") or "/usr/sbin/nft"
    try:
        proc = subprocess.run(
            [nft, "-f", "-"], input=script, capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise GuardError(f"status page input rules: cannot run nft: {e}") from None
    if proc.returncode != 0:
        why = (proc.stderr or proc.stdout).strip().splitlines()
        raise GuardError(f"status page input rules refused by nft: {why[0] if why else '?'}")


def apply(config: Config, port: int) -> None:
    _nft(rules(config, port))


def remove() -> None:
    _nft(
        f"add table bridge {TABLE}\ndelete table bridge {TABLE}\n"
        f"add table inet {TABLE}\ndelete table inet {TABLE}\n"
    )
