"""A real S3-compatible server for the object-storage tests: moto in server mode on 127.0.0.1.

`s3_server` starts ``python -m moto.server`` once per session on a free port (a separate process
speaking HTTP, as S3 or MinIO would; nothing is mocked in the client). It records every request it
serves to a file (MOTO_ENABLE_RECORDING), so a test can count the PUTs a run made. `s3_bucket` sets
the standard AWS variables (endpoint, keys, region) for one test and creates a fresh bucket, so
tests never see each other's objects.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    recording: Path

    def start_recording(self) -> None:
        """Forget the requests recorded so far and record from now on."""
        httpx.post(f"{self.endpoint}/moto-api/recorder/reset-recording").raise_for_status()
        httpx.post(f"{self.endpoint}/moto-api/recorder/start-recording").raise_for_status()

    def stop_recording(self) -> list[dict]:
        """The requests since `start_recording`: method and URL of each (bodies dropped)."""
        httpx.post(f"{self.endpoint}/moto-api/recorder/stop-recording").raise_for_status()
        text = self.recording.read_text() if self.recording.exists() else ""
        return [{"method": e["method"], "url": e["url"]} for e in map(json.loads, filter(None, text.splitlines()))]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    port = _free_port()
    recording = tmp_path_factory.mktemp("moto") / "requests.jsonl"
    env = {**os.environ, "MOTO_RECORDER_FILEPATH": str(recording)}
    log = open(recording.with_name("server.log"), "wb")  # noqa: SIM115 - open for the server's lifetime
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], env=env, stdout=log, stderr=log
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{endpoint}/moto-api/", timeout=2)
                break
            except httpx.TransportError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start: {recording.with_name('server.log').read_text()}") from None
                time.sleep(0.1)
        yield S3Server(endpoint, recording)
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The standard AWS variables pointing at the test server (any key works with moto)."""
    for name, value in {
        "AWS_ENDPOINT_URL": s3_server.endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    return s3_server


@pytest.fixture
def s3_bucket(s3_env: S3Server) -> str:
    """A new, empty bucket on the server; its name."""
    import boto3

    name = f"inat-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name
