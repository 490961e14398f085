"""What an office should do, in plain English, per kind of finding (the detector that raised
it, which is what the signature's category names)."""

from __future__ import annotations

ADVICE: dict[str, tuple[str, str]] = {
    "portscan": (
        "Port scans",
        "Computers on the internet are probing your addresses for open services. This is "
        "common and usually harmless on its own; make sure your router forwards no ports you "
        "do not need, and ask your IT supplier to close any it does.",
    ),
    "bruteforce": (
        "Password guessing",
        "Someone tried many logins on one of your services. Use long unique passwords, turn "
        "on two-factor sign-in, and do not expose remote access (SSH, Remote Desktop) to the "
        "internet; put it behind a VPN.",
    ),
    "exposure": (
        "Exposed services",
        "A computer on the internet reached a service in your office that should not be "
        "reachable from outside (remote desktop, file sharing, a database or printer). Ask "
        "your IT supplier to remove the port forwarding or firewall opening.",
    ),
    "intel": (
        "Known bad addresses",
        "A computer in your office talked to an address or domain on a threat list. If it was "
        "blocked, no action is needed beyond checking that computer for malware; if it was "
        "allowed, run a full malware scan on it and change its passwords.",
    ),
    "dga": (
        "Random-looking domain lookups",
        "A computer looked up random-looking names, as malware does when searching for its "
        "controller. Scan it for malware and keep it off the network until it is clean.",
    ),
    "dns-tunnel": (
        "Data hidden in DNS",
        "A computer sent unusual DNS traffic that can carry data out of the office. Have it "
        "checked for malware or unwanted software.",
    ),
    "web": (
        "Web attacks",
        "Requests tried to break into a web server. Keep web software and plugins updated "
        "and remove admin pages you do not use.",
    ),
    "beacon": (
        "Regular check-ins",
        "A computer contacts the same server at regular intervals, as malware checking in "
        "does. If you do not recognise the server, have the computer checked.",
    ),
    "cleartext": (
        "Passwords sent unencrypted",
        "A password crossed the network unencrypted (FTP, Telnet, plain web or mail login). "
        "Switch those services to their encrypted versions and change the password.",
    ),
}
DEFAULT = (
    "Other findings",
    "Ask the regional centre to explain these findings if they are unfamiliar.",
)


def advice(detector: str | None) -> tuple[str, str]:
    """(heading, what to do) for a detector name; a general line for anything else."""
    return ADVICE.get(detector or "", DEFAULT)
