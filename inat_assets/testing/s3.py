"""An S3-compatible server on 127.0.0.1 for tests and benchmarks: moto in server mode, in its own process.

`serve_s3()` starts ``python -m moto.server`` on a free port and stops it afterwards. The server's
access log (one line per request, written by its HTTP server) goes to a file, so a test can count the
PUTs a run made (`S3Server.start_recording` / `stop_recording`). moto's own request recorder is not
used: its threads append whole request bodies to one file without a lock, and under concurrent PUTs
the entries interleave. Nothing is mocked on the client side: boto3, s3fs and DuckDB talk HTTP to it
exactly as to S3 or MinIO (``AWS_ENDPOINT_URL``).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

# werkzeug colours the lines of some statuses (206 ranged GETs, 204 DELETEs...) with ANSI codes.
_ACCESS_LINE = re.compile(r'"(?:\x1b\[[0-9;]*m)*([A-Z]+) (\S+) HTTP/[0-9.]+(?:\x1b\[[0-9;]*m)*" (\d{3})')


@dataclass
class S3Server:
    endpoint: str
    log: Path
    pid: int
    _mark: int = 0

    def environment(self) -> dict[str, str]:
        """The standard AWS variables that point a client at this server (moto accepts any key)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def start_recording(self) -> None:
        """Count requests from now on (marks the end of the access log)."""
        self._mark = self.log.stat().st_size

    def stop_recording(self) -> list[tuple[str, str]]:
        """(method, path with query, without the leading /) of each request since `start_recording`."""
        # The server logs a request once its response is sent: a marker request, logged after every
        # request the client had already seen answered, tells when the log has caught up.
        marker = f"/moto-api/?inat-log-marker={time.monotonic_ns()}"
        httpx.get(self.endpoint + marker)
        deadline = time.monotonic() + 10
        while True:
            with open(self.log, "rb") as log:
                log.seek(self._mark)
                text = log.read().decode("utf-8", "replace")
            if marker in text or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        found = [m.groups() for m in map(_ACCESS_LINE.search, text.splitlines()) if m]
        return [(method, path.lstrip("/")) for method, path, _status in found if not path.startswith("/moto-api/")]

    def cpu_seconds(self) -> float:
        """CPU time the server process has used so far (user + system, from /proc)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve_s3(workdir: Path | None = None, start_timeout: float = 30.0) -> Iterator[S3Server]:
    """A moto server on 127.0.0.1 until the block ends; its request recording and log go to ``workdir``."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(workdir or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        port = _free_port()
        log_path = folder / "moto-server.log"
        with open(log_path, "wb") as log:
            server = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                stdout=log,
                stderr=log,
            )
            endpoint = f"http://127.0.0.1:{port}"
            try:
                deadline = time.monotonic() + start_timeout
                while True:
                    try:
                        httpx.get(f"{endpoint}/moto-api/", timeout=2)
                        break
                    except httpx.TransportError:
                        if server.poll() is not None or time.monotonic() > deadline:
                            raise RuntimeError(f"moto server did not start: {log_path.read_text()}") from None
                        time.sleep(0.1)
                yield S3Server(endpoint, log_path, server.pid)
            finally:
                server.terminate()
                try:
                    server.wait(10)
                except subprocess.TimeoutExpired:
                    server.kill()
                    server.wait()
