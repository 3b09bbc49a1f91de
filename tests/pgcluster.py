"""A private PostgreSQL server for tests that stop and start their database.

The machine's shared server (127.0.0.1:5432) is used by other test runs at the same time and must
never be stopped; a test that needs an outage gets its own cluster: ``initdb`` in a temporary
directory, ``pg_ctl start`` on a free port, ``pg_ctl stop -m immediate`` for a crash-like stop.
initdb refuses to run as root, so as root the cluster belongs to the ``postgres`` user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from conftest import unavailable
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

PG_BIN_DIRS = (
    Path(os.environ.get("SYNCD_TEST_PG_BIN", "/nonexistent")),
    *sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True),
)


class ClusterUnavailableError(Exception):
    """No way to run a private PostgreSQL here (no binaries, no unprivileged user)."""


def _bin_dir() -> Path:
    for candidate in PG_BIN_DIRS:
        if (candidate / "initdb").is_file() and (candidate / "pg_ctl").is_file():
            return candidate
    raise ClusterUnavailableError(
        "no PostgreSQL server binaries (initdb, pg_ctl) found; set SYNCD_TEST_PG_BIN"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PrivatePostgres:
    """One private cluster: ``url(db)`` for a database in it; ``stop()``/``start()`` at will."""

    bin_dir: Path
    root: Path
    port: int
    run_as: str | None

    @property
    def data(self) -> Path:
        return self.root / "data"

    def _pg(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", self.run_as, "--"] if self.run_as else []
        return subprocess.run(
            [*prefix, *args], capture_output=True, text=True, check=check, timeout=60
        )

    def init(self) -> None:
        self._pg(
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c full_page_writes=off -c max_connections=60"
        )
        self._pg(
            str(self.bin_dir / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.root / "server.log"),
            "-w",
            "-t",
            "30",
            "start",
        )

    def stop(self) -> None:
        """An immediate stop: every connection is cut, as when the server crashes."""
        self._pg(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")

    def is_running(self) -> bool:
        status = self._pg(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "status", check=False)
        return status.returncode == 0

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        engine = create_engine(self.url(), isolation_level="AUTOCOMMIT", poolclass=NullPool)
        try:
            with engine.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            engine.dispose()
        return self.url(name)


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """A running private cluster, destroyed on exit; skips (fails under CI=true) if impossible."""
    try:
        bin_dir = _bin_dir()
        run_as: str | None = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                raise ClusterUnavailableError(
                    "running as root and there is no 'postgres' user for initdb"
                ) from None
            if shutil.which("runuser") is None:
                raise ClusterUnavailableError("running as root and runuser is missing")
            run_as = "postgres"
    except ClusterUnavailableError as exc:
        unavailable(f"private PostgreSQL cluster: {exc}")
    # Not pytest's tmp_path: its parents are private to root, and the server runs as postgres.
    root = Path(tempfile.mkdtemp(prefix="syncd-pg-"))
    if run_as:
        shutil.chown(root, user=run_as)
    cluster = PrivatePostgres(bin_dir=bin_dir, root=root, port=_free_port(), run_as=run_as)
    try:
        try:
            cluster.init()
            cluster.start()
        except subprocess.CalledProcessError as exc:
            unavailable(f"private PostgreSQL cluster did not start: {exc.stderr.strip()[:300]}")
        yield cluster
    finally:
        if cluster.is_running():
            cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
