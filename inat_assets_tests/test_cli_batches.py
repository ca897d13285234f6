"""`inat-assets batches` and the newcomer's command sequence from a fresh shell (no DAGSTER_HOME set)."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.resources import as_file, files
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dagster import AssetKey, AssetMaterialization, instance_for_test

from inat_assets import definitions
from inat_assets.cli.batches import format_table, image_datasets, list_batches
from inat_assets.cli.main import main as inat_assets_main
from inat_assets.testing.mirror import serve_mirror
from inat_assets_tests.conftest import query
from inat_assets_tests.test_automation import fail_batch, succeed_batch

BIN = Path(sys.executable).parent
FETCH_CHAIN = "dwca_source,dwca_archive,observations_parquet,media_parquet,plants/fetch_parquet"
IMAGES = definitions.defs.get_assets_def(AssetKey(["plants", "image_batches"]))
FETCH = definitions.defs.get_assets_def(AssetKey(["plants", "fetch_parquet"]))
image_batch_partitions = IMAGES.partitions_def
assert image_batch_partitions is not None


def test_image_datasets_finds_the_partitioned_image_asset_and_its_fetch_list() -> None:
    datasets = {d.name: d for d in image_datasets(definitions.defs)}
    assert set(datasets) == {"plants", "fungi_open"}
    dataset = datasets["plants"]
    assert dataset.asset_key == IMAGES.key
    assert dataset.partitions_def.name == image_batch_partitions.name
    assert dataset.fetch_key == FETCH.key


def test_batches_lists_range_photo_count_and_each_status(tmp_path: Path) -> None:
    fetch_list = tmp_path / "fetch.parquet"
    pq.write_table(pa.table({"photo_id": [1001, 1002, 1999, 2500, 3001], "url": ["u"] * 5}), fetch_list)
    dataset = next(d for d in image_datasets(definitions.defs) if d.name == "plants")
    keys = ["batch-000001", "batch-000002", "batch-000003"]
    with instance_for_test() as instance:
        instance.add_dynamic_partitions(image_batch_partitions.name, keys)
        instance.report_runless_asset_event(
            AssetMaterialization(
                asset_key=FETCH.key, metadata={"path": str(fetch_list), "batch_span": 1000}
            )
        )
        succeed_batch(instance, keys[0])
        fail_batch(instance, keys[1], tmp_path)
        rows = list_batches(instance, dataset)
    assert [(r.key, r.first_id, r.end_id, r.photos, r.status) for r in rows] == [
        ("batch-000001", 1000, 2000, 3, "materialized"),
        ("batch-000002", 2000, 3000, 1, "failed"),
        ("batch-000003", 3000, 4000, 1, "missing"),
    ]
    table = format_table(dataset, rows, rows[1:2])
    assert "3 batches, 5 photos; 1 materialized, 1 failed, 0 in-progress, 1 missing" in table
    assert "[2,000, 3,000)" in table and "batch-000001" not in table


def test_batches_before_any_fetch_list_says_what_to_materialize(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.setenv("INAT_DATA_DIR", str(tmp_path / "data"))
    assert inat_assets_main(["batches"]) == 0
    assert "plants: no batches yet. Materialize plants/fetch_parquet first" in capsys.readouterr().out
    assert (tmp_path / "data" / "dagster_home" / "dagster.yaml").is_file()
    with pytest.raises(SystemExit):
        inat_assets_main(["batches", "no_such_dataset"])
    assert "the datasets are: fungi_open, plants" in capsys.readouterr().err


def _shell(command: str, env: dict[str, str], cwd: Path) -> str:
    """One command line in a new bash, as a user types it into a fresh terminal."""
    completed = subprocess.run(
        ["bash", "-c", command], env=env, cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert completed.returncode == 0, f"{command}\n{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}"
    return completed.stdout


def test_newcomer_sequence_from_fresh_shells_keeps_batch_keys_between_commands(tmp_path: Path) -> None:
    """The README's first steps: fetch list, `inat-assets batches`, one batch by key, offline."""
    with as_file(files("inat_assets") / "sample_data" / "sample-dwca.zip") as sample, serve_mirror() as mirror:
        env = {  # a fresh environment: no DAGSTER_HOME, only what the guide exports
            "PATH": f"{BIN}:/usr/bin:/bin",
            "HOME": str(tmp_path / "home"),
            "INAT_DATA_DIR": str(tmp_path / "data"),
            "INAT_DWCA_SOURCE": str(sample),
            "INAT_PHOTO_MIRROR": mirror.base_url(),
            "INAT_ALLOWED_HOSTS": "127.0.0.1",
            "INAT_DUCKDB_THREADS": "2",
        }
        assert "DAGSTER_HOME" not in env
        materialize = 'eval "$(inat-assets env)" && dagster asset materialize -m inat_assets.definitions'
        _shell(f"{materialize} --select {FETCH_CHAIN}", env, tmp_path)
        listing = _shell("inat-assets batches plants", env, tmp_path)
        keys = _shell("inat-assets batches plants --status missing --keys", env, tmp_path).split()
        assert keys and all(key in listing for key in keys)
        photos = query(f"SELECT count(*) FROM '{tmp_path}/data/datasets/plants/fetch.parquet'")[0][0]
        assert f"{len(keys)} batches, {photos:,} photos" in listing

        _shell(f"{materialize} --select plants/image_batches --partition {keys[0]}", env, tmp_path)
        assert _shell("inat-assets batches plants --status materialized --keys", env, tmp_path).split() == [keys[0]]
        assert (tmp_path / "data" / "datasets" / "plants" / "manifests" / f"{keys[0]}.parquet").is_file()
        assert mirror.total_hits > 0
    assert os.listdir(tmp_path / "data" / "dagster_home")  # one instance, in the data directory
