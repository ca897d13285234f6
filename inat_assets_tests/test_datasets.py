"""Declared datasets: shared photos, a changed declaration, unused photos, and direct asset calls."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import duckdb
import pytest
from dagster import DagsterInstance, build_asset_context, materialize

from inat_assets.assets.images import ImageBatchConfig
from inat_assets.cli.main import main as cli_main
from inat_assets.locks import acquire
from inat_assets.photo_usage import find_unused_photos
from inat_assets.storage import DataStore
from inat_assets.testing.mirror import MirrorServer, serve_mirror
from inat_assets.testing.sample import SampleArchiveInfo
from inat_assets_tests.conftest import (
    DatasetAssets,
    dataset,
    dataset_assets,
    fetch_path,
    metadata,
    query,
    run_graph,
    settings_for,
)

SPAN = 2_000
SMALL_SPAN = 100


@pytest.fixture
def mirror():
    with serve_mirror(("127.0.0.1",)) as server:
        yield server


def _resources(sample: SampleArchiveInfo, data: Path, mirror: MirrorServer, span: int = SPAN) -> dict:
    return settings_for(sample.path, data, photo_mirror=mirror.base_url(), allowed_hosts="127.0.0.1", batch_span=span)


def _fetch(built: DatasetAssets, resources: dict, instance: DagsterInstance) -> dict:
    result = materialize([built.fetch_parquet, built.check], resources=resources, instance=instance)
    return metadata(result, built.fetch_parquet.key.to_user_string())


def _download_all(built: DatasetAssets, resources: dict, instance: DagsterInstance) -> list[dict]:
    return [
        metadata(
            materialize([built.image_batches], partition_key=key, resources=resources, instance=instance),
            built.image_batches.key.to_user_string(),
        )
        for key in instance.get_dynamic_partitions(built.partitions)
    ]


def _manifest_ids(data: Path, name: str) -> list[int]:
    return [r[0] for r in query(f"SELECT photo_id FROM '{data}/datasets/{name}/manifests/*.parquet' ORDER BY 1")]


def _fetch_ids(data: Path, name: str) -> list[int]:
    return [r[0] for r in query(f"SELECT photo_id FROM '{fetch_path(data, name)}' ORDER BY 1")]


def test_two_datasets_sharing_photos_download_them_once(
    sample_48: SampleArchiveInfo, tmp_path: Path, mirror: MirrorServer
) -> None:
    data = tmp_path / "data"
    resources = _resources(sample_48, data, mirror)
    instance = DagsterInstance.ephemeral()
    run_graph(sample_48.path, data, with_fetch=False, instance=instance)
    plants = dataset_assets(dataset("plants"))
    open_plants = dataset_assets(dataset("open_plants", license=["CC0", "CC-BY"]))
    _fetch(plants, resources, instance)
    _fetch(open_plants, resources, instance)
    assert set(_fetch_ids(data, "open_plants")) < set(_fetch_ids(data, "plants"))

    first = _download_all(plants, resources, instance)
    assert sum(m["ok"] for m in first) == len(_fetch_ids(data, "plants"))
    hits = mirror.total_hits
    second = _download_all(open_plants, resources, instance)
    assert mirror.total_hits == hits  # every photo of the second dataset was already on disk
    assert sum(m["already_on_disk"] for m in second) == len(_fetch_ids(data, "open_plants"))
    assert _manifest_ids(data, "open_plants") == _fetch_ids(data, "open_plants")  # its own manifests
    assert _manifest_ids(data, "plants") == _fetch_ids(data, "plants")
    files = [p for p in (data / "photos" / "original").rglob("*") if p.is_file()]
    assert len(files) == len(_fetch_ids(data, "plants"))  # one copy per photo


def test_a_changed_declaration_rebuilds_its_batches_and_reports_the_old_photos(
    sample_48: SampleArchiveInfo, tmp_path: Path, mirror: MirrorServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """plants declared as Plantae, then edited to Fungi: partitions, manifests and unused photos follow."""
    data = tmp_path / "data"
    # Narrow batches (about 30 photos each), so some hold only plants, some only fungi, some both.
    resources = _resources(sample_48, data, mirror, span=SMALL_SPAN)
    instance = DagsterInstance.ephemeral()
    run_graph(sample_48.path, data, with_fetch=False, instance=instance)
    before = dataset_assets(dataset("plants", kingdom=["Plantae"]))
    _fetch(before, resources, instance)
    _download_all(before, resources, instance)
    old_keys = set(instance.get_dynamic_partitions(before.partitions))
    plant_ids = _fetch_ids(data, "plants")

    after = dataset_assets(dataset("plants", kingdom=["Fungi"]))
    # The UI shows the dataset's assets as stale: their code version is the declaration's hash.
    for old, new in ((before.fetch_parquet, after.fetch_parquet), (before.image_batches, after.image_batches)):
        assert old.code_versions_by_key[old.key] != new.code_versions_by_key[new.key]
    meta = _fetch(after, resources, instance)
    new_keys = set(instance.get_dynamic_partitions(after.partitions))
    fungi_ids = _fetch_ids(data, "plants")
    assert new_keys == {f"batch-{pid // SMALL_SPAN:06d}" for pid in fungi_ids}
    assert meta["removed_batches"] == len(old_keys - new_keys) > 0
    assert meta["new_batches"] == len(new_keys - old_keys)
    assert meta["outdated_batches"] == len(old_keys & new_keys) > 0  # kept keys whose photos changed
    for key in old_keys - new_keys:
        assert not (data / "datasets" / "plants" / "manifests" / f"{key}.parquet").exists()

    _download_all(after, resources, instance)
    assert _manifest_ids(data, "plants") == fungi_ids  # exactly the new selection, nothing of the old one
    again = _fetch(after, resources, instance)
    assert again["outdated_batches"] == 0 and again["new_batches"] == 0 and again["removed_batches"] == 0

    # The plant photos are still on disk, reported, not deleted.
    plant_files = [p for p in (data / "photos" / "original").rglob("*") if p.is_file() and int(p.stem) in set(plant_ids)]
    assert len(plant_files) == len(plant_ids)
    assert cli_main(["photos", "unused", "--data-dir", str(data)]) == 0
    report = capsys.readouterr().out
    plant_bytes = sum(p.stat().st_size for p in plant_files)
    assert f"unused photos: {len(plant_ids):,}, {plant_bytes:,} bytes" in report
    assert all(p.exists() for p in plant_files)
    assert cli_main(["photos", "unused", "--delete", "--data-dir", str(data)]) == 0
    assert f"deleted {len(plant_ids):,} photos" in capsys.readouterr().out
    assert not any(p.exists() for p in plant_files)
    remaining = sorted(int(p.stem) for p in (data / "photos" / "original").rglob("*") if p.is_file())
    assert remaining == fungi_ids


def test_an_image_batch_called_directly_with_a_partition_key(
    sample_48: SampleArchiveInfo, tmp_path: Path, mirror: MirrorServer
) -> None:
    data = tmp_path / "data"
    resources = _resources(sample_48, data, mirror)
    instance = DagsterInstance.ephemeral()
    run_graph(sample_48.path, data, with_fetch=False, instance=instance)
    fungi = dataset_assets(dataset("fungi", kingdom=["Fungi"], photo_size="small"))
    _fetch(fungi, resources, instance)
    key = instance.get_dynamic_partitions(fungi.partitions)[0]
    with build_asset_context(partition_key=key, instance=instance, resources=resources) as context:
        result = fungi.image_batches(context, config=ImageBatchConfig())
    lo, hi = int(key.split("-")[1]) * SPAN, (int(key.split("-")[1]) + 1) * SPAN
    expected = [pid for pid in _fetch_ids(data, "fungi") if lo <= pid < hi]
    assert result.metadata["ok"] == len(expected) > 0  # type: ignore[index]
    assert sorted(int(p.stem) for p in (data / "photos" / "small" / key).iterdir()) == expected
    urls = query(f"SELECT url FROM '{fetch_path(data, 'fungi')}' WHERE photo_id >= ? AND photo_id < ?", lo, hi)
    assert all("/small." in url and mirror.hits(urlsplit(url).path) == 1 for (url,) in urls)


def test_unused_photos_are_not_deleted_from_a_folder_a_download_holds(tmp_path: Path) -> None:
    store = DataStore(tmp_path)
    held, free = store.photos_dir("original", "batch-000001"), store.photos_dir("original", "batch-000002")
    for folder, photo_id in ((held, 15), (free, 25)):
        folder.mkdir(parents=True)
        (folder / f"{photo_id}.jpg").write_bytes(b"\xff\xd8\xff" + b"x" * 97)
    (free / ".26.jpg.abc.part").write_bytes(b"partial")  # a download's temporary file is never counted
    lock = acquire(store.photos_lock("original", "batch-000001"), purpose="a running batch")
    try:
        with duckdb.connect() as con:
            unused = find_unused_photos(con, store, 10, [], delete=True)
    finally:
        lock.release()
    assert unused.busy_folders == ["original/batch-000001"] and (held / "15.jpg").exists()
    assert (unused.count, unused.bytes, unused.deleted) == (1, 100, 1) and not (free / "25.jpg").exists()
    assert (free / ".26.jpg.abc.part").exists()
