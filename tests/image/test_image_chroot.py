"""customise.sh in a real Debian Bookworm root: the release venv, offline, and what it installed.

The root is made by mmdebstrap from Debian's mirror with exactly image-build/packages.txt (the
Raspberry Pi archive is not reachable here; packages-rpi.txt is left out), cached as a tarball in
/var/cache/watchpost-test (WATCHPOST_TEST_CACHE) so reruns take seconds. customise.sh runs in it
with chroot, in a private mount namespace and with no network at all (`unshare --net`), which
proves the install uses the shipped wheelhouse only. Then the installed `watchpost --version` and
`watchpost check-config` of the shipped config run from the release venv, and
`systemd-analyze verify --root` checks the installed units against the root's own binaries.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.update.layout import Layout
from tests.image.conftest import IMAGE_BUILD

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.usefixtures("needs_root")]

CACHE = Path(os.environ.get("WATCHPOST_TEST_CACHE", "/var/cache/watchpost-test"))
SUITE = "bookworm"
CLEAN_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
}


def packages() -> list[str]:
    lines = (IMAGE_BUILD / "packages.txt").read_text().splitlines()
    return [w for line in lines for w in line.split("#")[0].split()]


def root_tarball() -> Path:
    """The cached Bookworm root with packages.txt installed, made on first use."""
    if shutil.which("mmdebstrap") is None:
        pytest.skip("no mmdebstrap (.ci/bootstrap installs it)")
    pkgs = packages()
    key = hashlib.sha256(f"{SUITE} {' '.join(pkgs)}".encode()).hexdigest()[:12]
    CACHE.mkdir(parents=True, exist_ok=True)
    tarball = CACHE / f"{SUITE}-amd64-{key}.tar"
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tarball.exists():
            return tarball
        tmp = tarball.with_suffix(".part.tar")  # mmdebstrap picks the format by suffix
        r = subprocess.run(
            ["mmdebstrap", "--quiet", "--variant=apt", f"--include={','.join(pkgs)}", SUITE, tmp],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if r.returncode != 0:
            tmp.unlink(missing_ok=True)
            tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
            pytest.skip(f"mmdebstrap could not make a {SUITE} root (Debian mirror?): {tail}")
        tmp.rename(tarball)
    return tarball


@pytest.fixture(scope="module")
def payload(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("WATCHPOST_PAYLOAD")
    if given:
        return Path(given)
    out = tmp_path_factory.mktemp("payload")
    r = subprocess.run(
        [str(IMAGE_BUILD / "build-payload.sh"), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "WHEEL_CACHE": str(CACHE / "wheels")},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def in_root(root: Path, *cmd: str, net: bool = True) -> subprocess.CompletedProcess[str]:
    """Run cmd chrooted in root with /dev and /proc, in a private mount (and net) namespace."""
    script = (
        f'mount --bind /dev "{root}/dev" && mount -t proc proc "{root}/proc" && exec chroot "$@"'
    )
    flags = ["--mount", "--fork"] + ([] if net else ["--net"])
    return subprocess.run(
        ["unshare", *flags, "sh", "-c", script, "sh", str(root), *cmd],
        capture_output=True,
        text=True,
        timeout=300,
        env=CLEAN_ENV,
    )


@pytest.fixture(scope="module")
def installed(
    tmp_path_factory: pytest.TempPathFactory, payload: Path
) -> Iterator[tuple[Path, list[subprocess.CompletedProcess[str]]]]:
    tarball = root_tarball()
    root = tmp_path_factory.mktemp("bookworm") / "root"
    root.mkdir()
    # A tmpfs of its own: extracting and removing ~12 000 files on a busy disk took minutes.
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3g,mode=0755", "tmpfs", root], check=True)
    try:
        subprocess.run(["tar", "-C", root, "-xf", tarball], check=True, timeout=300)
        shutil.copytree(payload, root / "tmp/watchpost-payload", symlinks=True)
        runs = [in_root(root, "/tmp/watchpost-payload/customise.sh", net=False) for _ in range(2)]
        yield root, runs
    finally:
        subprocess.run(["umount", "-l", root], check=False)


def test_customise_runs_offline_and_idempotently(
    installed: tuple[Path, list[subprocess.CompletedProcess[str]]],
) -> None:
    _root, (first, second) = installed
    assert first.returncode == 0, first.stdout + first.stderr
    assert "release " in first.stdout and " installed in /opt/watchpost/releases/" in first.stdout
    assert "warning" not in first.stdout  # every unit it enables is in packages.txt
    assert second.returncode == 0, second.stdout + second.stderr
    assert "already installed" in second.stdout
    assert "0 file(s) installed or updated" in second.stdout


def test_release_layout_and_version(
    installed: tuple[Path, list[subprocess.CompletedProcess[str]]],
) -> None:
    root, _ = installed
    version = next((root / "tmp/watchpost-payload/wheelhouse").glob("watchpost-*.whl")).name
    version = version.split("-")[1]
    assert os.readlink(root / "opt/watchpost/current") == f"releases/{version}"
    assert os.readlink(root / "opt/watchpost/bin") == "current/bin"
    # The layout the updater switches: it sees the image's release as current and complete.
    layout = Layout(root / "opt/watchpost")
    assert layout.current_version() == version and layout.complete(version)
    cfg = (root / f"opt/watchpost/releases/{version}/pyvenv.cfg").read_text()
    assert "include-system-site-packages = true" in cfg
    r = in_root(root, "/opt/watchpost/bin/watchpost", "--version")
    assert (r.returncode, r.stdout.strip()) == (0, f"watchpost, version {version}"), r.stderr
    # The compiled dependencies load against the root's own libraries (libnetfilter-queue1).
    r = in_root(
        root, "/opt/watchpost/current/bin/python", "-c", "import netfilterqueue, cryptography"
    )
    assert r.returncode == 0, r.stderr
    # The firmware release holds the firmware and the protocol, never the hub or the lab.
    r = in_root(root, "/opt/watchpost/current/bin/python", "-c", "import appliance, protocol")
    assert r.returncode == 0, r.stderr
    for pkg in ("hub", "lab"):
        r = in_root(root, "/opt/watchpost/current/bin/python", "-c", f"import {pkg}")
        assert r.returncode == 1 and "ModuleNotFoundError" in r.stderr, pkg


def test_installed_check_config_on_the_shipped_config(
    installed: tuple[Path, list[subprocess.CompletedProcess[str]]],
) -> None:
    root, _ = installed
    r = in_root(root, "watchpost", "check-config", "/etc/watchpost/watchpost.toml")
    assert (r.returncode, r.stdout.strip()) == (0, "/etc/watchpost/watchpost.toml: ok"), r.stderr
    # The first-boot unit's command, in the image as shipped: no bundle yet, said so (exit 3,
    # not retried), and the reason left for the LEDs and the page.
    r = in_root(root, "watchpost", "enrol", "--config", "/etc/watchpost/watchpost.toml")
    assert r.returncode == 3, r.stderr
    assert "no enrolment bundle (watchpost-enrol.toml) found: looked at /boot/firmware/" in r.stderr
    status = (root / "var/lib/watchpost/enrol-status.json").read_text()
    assert '"state": "failed"' in status
    (root / "var/lib/watchpost/enrol-status.json").unlink()
    (root / "tmp/bad.toml").write_text('[inline]\nworkers = "two"\n')
    r = in_root(root, "watchpost", "check-config", "/tmp/bad.toml")
    assert r.returncode == 2 and "inline.workers: expected an integer" in r.stderr


def test_units_verify_and_are_enabled(
    installed: tuple[Path, list[subprocess.CompletedProcess[str]]],
) -> None:
    root, _ = installed
    units = [
        "/etc/systemd/system/watchpost.service",
        "/etc/systemd/system/watchpost-bridge-mac.service",
        "/etc/systemd/system/watchpost-enrol.service",
        "/etc/systemd/system/watchpost-fault.service",
        "systemd-networkd-wait-online.service",  # with our drop-in
    ]
    r = subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", *units],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr
    system = root / "etc/systemd/system"
    for link in (
        "multi-user.target.wants/watchpost.service",
        "multi-user.target.wants/watchpost-enrol.service",
        "multi-user.target.wants/systemd-networkd.service",
        "systemd-networkd.service.wants/watchpost-bridge-mac.service",
        "sysinit.target.wants/systemd-timesyncd.service",
    ):
        assert (system / link).is_symlink(), link
    assert (system / "multi-user.target.wants/systemd-resolved.service").is_symlink() or (
        system / "sysinit.target.wants/systemd-resolved.service"
    ).is_symlink()
    for unit in ("NetworkManager.service", "dhcpcd.service", "sshswitch.service"):
        assert os.readlink(system / unit) == "/dev/null"
    # What the udev rule and the wait-online drop-in run exists in this root.
    for exe in ("usr/lib/systemd/systemd-sysctl", "usr/lib/systemd/systemd-networkd-wait-online"):
        assert os.access(root / exe, os.X_OK), exe
    assert (root / "etc/shadow").read_text().startswith(("root:*", "root:!"))


def test_verify_catches_a_broken_unit(
    installed: tuple[Path, list[subprocess.CompletedProcess[str]]],
) -> None:
    """The control for the check above: a unit running a missing binary fails verify."""
    root, _ = installed
    bad = root / "etc/systemd/system/wp-broken.service"
    bad.write_text("[Service]\nExecStart=/opt/watchpost/nothing\n")
    try:
        r = subprocess.run(
            [
                "systemd-analyze",
                "verify",
                f"--root={root}",
                "/etc/systemd/system/wp-broken.service",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        bad.unlink()
    assert r.returncode != 0 and "/opt/watchpost/nothing" in r.stderr
