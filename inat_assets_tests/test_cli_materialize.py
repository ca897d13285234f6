"""The chain runs the way users run it: `dagster asset materialize` in a subprocess, settings from env."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from inat_assets.testing.sample import SampleArchiveInfo
from inat_assets_tests.conftest import query

REPO = Path(__file__).resolve().parents[1]


def test_dagster_asset_materialize_command(sample_45: SampleArchiveInfo, tmp_path: Path) -> None:
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    env = {
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
