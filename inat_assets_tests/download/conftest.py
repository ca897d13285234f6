"""Fixtures: a two-host mirror on 127.0.0.1/127.0.0.2 and a fast-retrying engine config."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from inat_assets.download import DownloadConfig
from inat_assets.testing.mirror import MirrorServer, serve_mirror

HOST_A = "127.0.0.1"  # plays static.inaturalist.org
HOST_B = "127.0.0.2"  # plays the open-data bucket
IMAGE_BYTES = 3000  # small images keep the tests quick; sizes are not what they test
# Allowlist entries for the mirror, which listens on a random port (a bare host allows port 80/443 only).
ANY_PORT_A = f"{HOST_A}:*"
ANY_PORT_B = f"{HOST_B}:*"


@pytest.fixture
def mirror() -> Iterator[MirrorServer]:
    with serve_mirror((HOST_A, HOST_B), image_bytes=IMAGE_BYTES) as server:
        yield server


def fast_config(**overrides: object) -> DownloadConfig:
    settings: dict[str, object] = dict(
        concurrency=8,
        allowed_hosts=(ANY_PORT_A, ANY_PORT_B),
        other_hosts={HOST_A: HOST_B, HOST_B: HOST_A},
        retries=3,
        backoff_base=0.01,
        backoff_max=0.05,
        retry_after_max=0.2,
        connect_timeout=2.0,
        read_timeout=2.0,
        request_deadline=5.0,
    )
    settings.update(overrides)
    return DownloadConfig(**settings)  # type: ignore[arg-type]


def files_in(folder: Path) -> list[Path]:
    """Every file below ``folder`` except manifests, their lock files and the span record
    (batches.json), hidden ones included (to catch .part files)."""
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and p.suffix not in (".parquet", ".lock") and p.name != "batches.json")


def manifest_rows(path: Path) -> dict[int, dict[str, object]]:
    """A manifest's rows by photo id."""
    return {row["photo_id"]: row for row in pq.read_table(path).to_pylist()}
