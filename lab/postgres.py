"""A throwaway PostgreSQL cluster for tests, benches and the lab (Debian's `postgresql` package).

``PgCluster(dir).start()`` runs initdb as the ``postgres`` user into `dir`, starts the server on a
unix socket inside `dir` only (no TCP listener), creates a database and gives its URL;
``stop()`` shuts it down (the directory is the caller's to remove). Nothing touches the
machine's own clusters.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
from pathlib import Path

USER = "postgres"


class PgClusterError(RuntimeError):
    pass


def pg_bindir() -> Path:
    """The newest installed server's bin directory (initdb, pg_ctl)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_major)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise PgClusterError("PostgreSQL is not installed (apt-get install postgresql)")


def _major(path: str) -> int:
    try:
        return int(Path(path).parts[-3])
    except ValueError:
        return 0


class PgCluster:
    def __init__(self, directory: str | Path, database: str = "watchpost", fsync: bool = True):
        self.dir = Path(directory)
        self.data = self.dir / "data"
        self.sock = self.dir / "sock"
        self.database = database
        self.fsync = fsync
        self.bin = pg_bindir()
        self.running = False

    @property
    def url(self) -> str:
        return f"postgresql:///{self.database}?host={self.sock}&user={USER}"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = list(args)
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", USER, "--", *cmd]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if res.returncode != 0:
            raise PgClusterError(f"{' '.join(args[:2])}: {res.stderr.strip() or res.stdout}")
        return res

    def start(self) -> PgCluster:
        try:
            pw = pwd.getpwnam(USER)
        except KeyError:
            raise PgClusterError("no 'postgres' user (apt-get install postgresql)") from None
        self.dir.mkdir(parents=True, exist_ok=True)
        self.sock.mkdir(exist_ok=True)
        for parent in self.dir.resolve().parents:
            if not parent.stat().st_mode & 0o001:
                raise PgClusterError(f"{parent}: the {USER} user cannot enter it (chmod o+x)")
        for p in (self.dir, self.sock):
            os.chown(p, pw.pw_uid, pw.pw_gid)
        if not (self.data / "PG_VERSION").exists():
            self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", USER, "-A", "trust",
                      "-E", "UTF8", "--no-sync")  # fmt: skip
        opts = f"-c listen_addresses='' -k {self.sock} -c max_connections=50"
        if not self.fsync:
            opts += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", opts,
                  "-l", str(self.dir / "server.log"), "-w", "-t", "60", "start")  # fmt: skip
        self.running = True
        self.createdb(self.database)
        return self

    def createdb(self, name: str) -> str:
        """A new empty database in the cluster; its URL."""
        createdb = self.bin / "createdb"
        self._run(str(createdb) if createdb.exists() else "createdb", "-h", str(self.sock),
                  "-U", USER, name)  # fmt: skip
        return f"postgresql:///{name}?host={self.sock}&user={USER}"

    def stop(self) -> None:
        if self.running:
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
            self.running = False
