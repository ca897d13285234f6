"""A real PostgreSQL server for the tests: initdb + pg_ctl in a temporary folder, on a free port of 127.0.0.1.

Debian's ``postgresql`` package (``.ci/run`` installs it) puts the programs in
``/usr/lib/postgresql/<version>/bin``, off PATH; both places are searched. PostgreSQL refuses to run
as root, so as root the server runs as the ``postgres`` user the package creates (via ``runuser``).
Outside CI, missing programs skip the tests that need the server; in CI (``CI=true``) they fail.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from inat_assets_tests.e2e.harness import free_port

_START_TIMEOUT = 60  # seconds; initdb + start took ~3 s here on 2 busy cores


def postgres_bin_dir() -> Path | None:
    """The folder holding initdb, pg_ctl and postgres: on PATH, else the newest Debian version's."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                      key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    return versions[-1].parent if versions else None


def missing(reason: str) -> None:
    """Skip outside CI; fail in CI, where .ci/run installs PostgreSQL and every test must run."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (in CI, .ci/run installs Debian's postgresql package)")
    pytest.skip(f"{reason}: install PostgreSQL (Debian: apt-get install postgresql) to run this test")


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str

    def url(self, database: str = "postgres") -> str:
        """The database's URL in the form INAT_DAGSTER_POSTGRES_URL takes (the ledger takes it too)."""
        return f"postgresql+psycopg2://{self.user}@{self.host}:{self.port}/{database}"

    def create_database(self) -> str:
        """A new, empty database; its URL."""
        import psycopg2

        name = f"t_{uuid.uuid4().hex[:12]}"
        con = psycopg2.connect(host=self.host, port=self.port, user=self.user, dbname="postgres")
        try:
            con.autocommit = True  # CREATE DATABASE cannot run in a transaction
            with con.cursor() as cur:
                cur.execute(f"CREATE DATABASE {name}")
        finally:
            con.close()
        return self.url(name)


def _as_server_user(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    runuser = shutil.which("runuser")
    if runuser:
        return [runuser, "-u", "postgres", "--", *command]
    return ["su", "postgres", "-s", "/bin/sh", "-c", shlex.join(command)]


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """initdb + pg_ctl start on a free port; stopped (immediate) and removed at the end."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        missing("PostgreSQL's initdb and pg_ctl were not found (PATH, /usr/lib/postgresql/*/bin)")
    assert bin_dir is not None
    root = Path(tempfile.mkdtemp(prefix="inat-pg-"))
    if os.geteuid() == 0:
        try:
            server_user = pwd.getpwnam("postgres")
        except KeyError:
            missing("running as root needs the 'postgres' user to start PostgreSQL (it refuses root)")
        os.chown(root, server_user.pw_uid, server_user.pw_gid)
    data, log = root / "data", root / "server.log"
    port = free_port()
    started = False
    try:
        subprocess.run(
            _as_server_user([str(bin_dir / "initdb"), "-D", str(data), "-U", "inat", "-A", "trust", "-E", "UTF8",
                             "--no-sync"]),
            check=True, capture_output=True, timeout=_START_TIMEOUT,
        )
        # fsync off: a test database need not survive a power cut, and fsync costs seconds per
        # test on a shared disk. The socket lives in our folder, not /var/run/postgresql.
        options = f"-p {port} -c listen_addresses=127.0.0.1 -k {root} -c fsync=off -c max_connections=200"
        subprocess.run(
            _as_server_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w",
                             "-t", str(_START_TIMEOUT), "start"]),
            check=True, capture_output=True, timeout=_START_TIMEOUT + 10,
        )
        started = True
        yield PostgresServer("127.0.0.1", port, "inat")
    except subprocess.CalledProcessError as exc:
        server_log = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise RuntimeError(
            f"PostgreSQL did not start: {exc.cmd} exited {exc.returncode}: "
            f"{exc.stderr.decode(errors='replace')[-2000:]}\n{server_log}"
        ) from exc
    finally:
        if started:
            subprocess.run(_as_server_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
                           capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)
