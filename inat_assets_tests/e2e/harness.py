"""Start what a user starts: `inat-assets ui --demo` (the real `dagster dev`: webserver, daemon, code
server) on a free port, in a temporary DAGSTER_HOME and data dir, with photos from a mirror the test
controls; stop the whole process group at the end, also when the test fails."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from inat_assets_tests.e2e.graphql_client import DagsterGraphQL, wait_for

# Seen here: 15-25 s from start to a loaded code location on 2 busy cores; generous for CI.
STARTUP_TIMEOUT = 180.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningUi:
    base_url: str
    client: DagsterGraphQL
    location: str
    data_dir: Path
    dagster_home: Path
    log_path: Path


def artifacts_dir() -> Path:
    """Where CI keeps screenshots and logs: $INAT_ARTIFACTS_DIR, else .ci/artifacts (git-ignored)."""
    path = Path(os.environ.get("INAT_ARTIFACTS_DIR") or Path(__file__).resolve().parents[2] / ".ci" / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _stop_group(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGINT to the group (dagster dev's own shutdown), then SIGKILL to whatever is left of it.

    Seen here with dagster 1.13.27: after SIGINT or SIGTERM the daemon logs "Daemon threads shut
    down" but dagster dev, webserver, daemon and code servers stay alive (waiting on futexes) for
    minutes, so the grace is short and the group is always killed in the end.
    """
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGINT)
    with suppress(subprocess.TimeoutExpired):
        process.wait(grace)
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)


@contextmanager
def demo_ui(
    root: Path, mirror_url: str, log_name: str = "dagster-dev.log", extra_env: Mapping[str, str] | None = None
) -> Iterator[RunningUi]:
    """`inat-assets ui --demo --port <free>` with INAT_DATA_DIR, DAGSTER_HOME and INAT_PHOTO_MIRROR set
    (and ``extra_env``)."""
    data_dir, home = root / "data", root / "dagster_home"
    port = free_port()
    env = {
        **os.environ,
        "INAT_DATA_DIR": str(data_dir),
        "DAGSTER_HOME": str(home),
        "INAT_PHOTO_MIRROR": mirror_url,
        "PYTHONUNBUFFERED": "1",
        **(extra_env or {}),
    }
    log_path = artifacts_dir() / log_name
    inat_assets = shutil.which("inat-assets", path=str(Path(sys.executable).parent)) or "inat-assets"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [inat_assets, "ui", "--demo", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: one signal reaches webserver, daemon, runs
        )
        client = DagsterGraphQL(f"http://127.0.0.1:{port}")
        try:

            def loaded() -> str | None:
                if process.poll() is not None:
                    raise AssertionError(f"inat-assets ui exited with {process.returncode}; see {log_path}")
                statuses = client.location_statuses()
                return next(iter(statuses), None) if statuses and set(statuses.values()) == {"LOADED"} else None

            location = wait_for(f"the webserver on port {port} (log: {log_path})", loaded, STARTUP_TIMEOUT)
            yield RunningUi(f"http://127.0.0.1:{port}", client, location, data_dir, home, log_path)
        finally:
            client.close()
            _stop_group(process)
