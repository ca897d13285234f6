"""The chain runs the way users run it: `dagster asset materialize` in a subprocess, settings from env."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from inat_assets.testing.mirror import MirrorServer, serve_mirror
from inat_assets.testing.sample import SampleArchiveInfo
from inat_assets_tests.conftest import query

REPO = Path(__file__).resolve().parents[1]
SPAN = 1_000_000


@pytest.fixture
def mirror():
    with serve_mirror(("127.0.0.1",)) as server:
        yield server


def test_dagster_asset_materialize_command(sample_45: SampleArchiveInfo, tmp_path: Path, mirror: MirrorServer) -> None:
    """The README's order: the tables and a dataset's fetch list, then one of its batches by key."""
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    env = {
        "INAT_PHOTO_MIRROR": mirror.base_url(),
        "INAT_ALLOWED_HOSTS": "127.0.0.1",
        "INAT_BATCH_SPAN": str(SPAN),
        **os.environ,
        "DAGSTER_HOME": str(dagster_home),
        "INAT_DATA_DIR": str(tmp_path / "data"),
        "INAT_DWCA_SOURCE": str(sample_45.path),
        "INAT_DUCKDB_MEMORY_LIMIT": "512MB",
        "INAT_DUCKDB_THREADS": "2",
    }
    dagster = Path(sys.executable).with_name("dagster")
    completed = subprocess.run(
        [
            str(dagster), "asset", "materialize", "-m", "inat_assets.definitions",
            "--select", "dwca_archive,observations_parquet,media_parquet,plants/fetch_parquet",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    fetch = tmp_path / "data" / "datasets" / "plants" / "fetch.parquet"
    assert query(f"SELECT count(*) FROM '{fetch}'")[0][0] == sample_45.photos_by_kingdom["Plantae"]
    assert query(f"SELECT count(*) FROM '{tmp_path}/data/observations.parquet'")[0][0] == sample_45.observations_valid

    # Then one batch of the dataset, by its partition key, in the same instance (DAGSTER_HOME).
    first_photo = query(f"SELECT min(photo_id) FROM '{fetch}'")[0][0]
    key = f"batch-{first_photo // SPAN:06d}"
    batch = subprocess.run(
        [str(dagster), "asset", "materialize", "-m", "inat_assets.definitions",
         "--select", "plants/image_batches", "--partition", key],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert batch.returncode == 0, batch.stdout[-3000:] + batch.stderr[-3000:]
    lo = first_photo // SPAN * SPAN
    expected = query(f"SELECT count(*) FROM '{fetch}' WHERE photo_id >= ? AND photo_id < ?", lo, lo + SPAN)[0][0]
    manifest = tmp_path / "data" / "datasets" / "plants" / "manifests" / f"{key}.parquet"
    assert query(f"SELECT count(*) FROM '{manifest}' WHERE status = 'ok'")[0][0] == expected > 0
