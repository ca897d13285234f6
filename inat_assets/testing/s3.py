"""An S3-compatible server on 127.0.0.1 for tests and benchmarks: moto in server mode, in its own process.

`serve_s3()` starts ``python -m moto.server`` on a free port and stops it afterwards. The server
records every request it serves (method, URL) to a file once `S3Server.start_recording` is called, so
a test can count the PUTs a run made. Nothing is mocked on the client side: boto3, s3fs and DuckDB
talk HTTP to it exactly as to S3 or MinIO (``AWS_ENDPOINT_URL``).
"""

from __future__ import annotations

import json
import os
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


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    recording: Path
    pid: int

    def environment(self) -> dict[str, str]:
        """The standard AWS variables that point a client at this server (moto accepts any key)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def start_recording(self) -> None:
        """Forget the requests recorded so far and record from now on."""
        httpx.post(f"{self.endpoint}/moto-api/recorder/reset-recording").raise_for_status()
        httpx.post(f"{self.endpoint}/moto-api/recorder/start-recording").raise_for_status()

    def stop_recording(self) -> list[tuple[str, str]]:
        """(method, URL path) of each request since `start_recording`."""
        httpx.post(f"{self.endpoint}/moto-api/recorder/stop-recording").raise_for_status()
        text = self.recording.read_text() if self.recording.exists() else ""
        entries = (json.loads(line) for line in text.splitlines() if line)
        return [(e["method"], e["url"].split("://", 1)[-1].split("/", 1)[-1]) for e in entries]

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
        recording = folder / "moto-requests.jsonl"
        log_path = folder / "moto-server.log"
        with open(log_path, "wb") as log:
            server = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                env={**os.environ, "MOTO_RECORDER_FILEPATH": str(recording)},
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
                yield S3Server(endpoint, recording, server.pid)
            finally:
                server.terminate()
                try:
                    server.wait(10)
                except subprocess.TimeoutExpired:
                    server.kill()
                    server.wait()
