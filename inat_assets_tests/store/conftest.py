"""A real S3-compatible server for the object-storage tests: moto in server mode on 127.0.0.1.

`s3_server` starts it once per session (`inat_assets.testing.s3.serve_s3`: a separate process speaking
HTTP, as S3 or MinIO would; nothing is mocked in the client). `s3_env` sets the standard AWS variables
(endpoint, keys, region) for one test; `s3_bucket` also creates a fresh bucket, so tests never see
each other's objects.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from inat_assets.testing.s3 import S3Server, serve_s3


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with serve_s3(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    for name, value in s3_server.environment().items():
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
