"""A real PostgreSQL for the tests: a cluster made by `initdb` in a temporary folder, served by `postgres` on a
Unix socket and a loopback port, stopped and started again at will (the outage tests). As root, PostgreSQL
refuses to run, so the cluster belongs to `nobody` and its programs run as that user."""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

NOBODY = 65534
USER = "mcp"
PASSWORD = "store-test-password"
_names = itertools.count()


def binaries() -> Path | None:
    """The folder holding initdb and postgres: on PATH, or Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("initdb")
    if found and shutil.which("postgres"):
        return Path(found).resolve().parent
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(folder) / "initdb").exists() and (Path(folder) / "postgres").exists():
            return Path(folder)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Postgres:
    """One cluster. `url(db)` reaches a database over the Unix socket without a password; `tcp_url(db)` over
    loopback, where the password is required."""

    def __init__(self, bin_dir: Path):
        self.bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="mcp-tiered-pg-"))
        self.data, self.socket_dir = self.root / "data", self.root / "socket"
        self.port = _free_port()
        self.process: subprocess.Popen | None = None
        self.log = self.root / "postgres.log"
        self.root.chmod(0o755)
        self.socket_dir.mkdir()
        self._own(self.root, self.socket_dir)
        password_file = self.root / "password"
        password_file.write_text(PASSWORD + "\n")
        self._own(password_file)
        self._run("initdb", "-D", str(self.data), "-U", USER, "--pwfile", str(password_file), "-A", "trust",
                  "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync")

    def _own(self, *paths: Path) -> None:
        if os.geteuid() == 0:
            for path in paths:
                os.chown(path, NOBODY, NOBODY)

    def _as_owner(self) -> list[str]:
        return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"] if os.geteuid() == 0 else []

    def _run(self, program: str, *args: str) -> None:
        done = subprocess.run([*self._as_owner(), str(self.bin / program), *args], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{program} failed: {done.stderr.strip() or done.stdout.strip()}")

    def start(self) -> None:
        log = self.log.open("ab")
        self.process = subprocess.Popen(
            [*self._as_owner(), str(self.bin / "postgres"), "-D", str(self.data), "-k", str(self.socket_dir),
             "-p", str(self.port), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
             "-c", "max_connections=300", "-c", "shared_buffers=32MB"],
            stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(self.conninfo("postgres"), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"postgres did not start: {self.log.read_text()[-2000:]}") from None
                time.sleep(0.05)

    def stop(self, how: signal.Signals = signal.SIGINT) -> None:
        """SIGINT: PostgreSQL's fast shutdown (sessions cut, no wait for clients)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(how)
            self.process.wait(30)
        self.process = None

    def conninfo(self, db: str) -> str:
        return f"host={self.socket_dir} port={self.port} user={USER} dbname={db}"

    def url(self, db: str) -> str:
        return f"postgresql://{USER}@/{db}?host={self.socket_dir}&port={self.port}"

    def tcp_url(self, db: str) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{db}"

    def new_database(self) -> str:
        name = f"store_{os.getpid()}_{next(_names)}"
        with psycopg.connect(self.conninfo("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return name

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
