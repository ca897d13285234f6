"""fetch.parquet -> image_batches partitions: registration, downloads, reruns, Dagster retries, the demo."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import duckdb
import pytest
from dagster import DagsterInstance, RetryPolicy, materialize

from inat_assets.assets.images import batch_progress_observer
from inat_assets.batches import BatchError, batch_range, nice_span, plan_batches
from inat_assets.download import Progress
from inat_assets.testing.mirror import MirrorServer, serve_mirror, served_bytes
from inat_assets.testing.sample import SampleArchiveInfo
from inat_assets.training.report import load_result
from inat_assets_tests.conftest import (
    TABLE_ASSETS,
    TABLE_CHECKS,
    DatasetAssets,
    dataset,
    dataset_assets,
    fetch_path,
    metadata,
    query,
    settings_for,
)

PLANTS = dataset_assets(dataset("plants"))


@pytest.fixture
def mirror():
    with serve_mirror(("127.0.0.1",)) as server:
        yield server


def _resources(sample: SampleArchiveInfo, data: Path, mirror: MirrorServer, **extra: object) -> dict:
    return settings_for(sample.path, data, photo_mirror=mirror.base_url(), allowed_hosts="127.0.0.1", **extra)


def _materialize_fetch(resources: dict, instance: DagsterInstance, built: DatasetAssets = PLANTS) -> dict:
    result = materialize(
        [*TABLE_ASSETS, *TABLE_CHECKS, built.fetch_parquet, built.check], resources=resources, instance=instance
    )
    return metadata(result, built.fetch_parquet.key.to_user_string())


def _photos(data: Path, key: str, span: int, name: str = "plants") -> list[tuple[int, str]]:
    lo, hi = batch_range(key, span)
    return query(
        f"SELECT photo_id, url FROM '{fetch_path(data, name)}' WHERE photo_id >= ? AND photo_id < ? ORDER BY 1", lo, hi
    )


def test_batches_are_registered_downloaded_and_resumed(
    sample_48: SampleArchiveInfo, tmp_path: Path, mirror: MirrorServer
) -> None:
    data = tmp_path / "data"
    resources = _resources(sample_48, data, mirror, batch_span=2_000)
    instance = DagsterInstance.ephemeral()
    fetch = _materialize_fetch(resources, instance)
    keys = instance.get_dynamic_partitions(PLANTS.partitions)
    expected = sorted({f"batch-{pid // 2_000:06d}" for (pid,) in query(f"SELECT photo_id FROM '{fetch_path(data)}'")})
    assert keys == expected and fetch["batches"] == len(keys) and fetch["batch_span"] == 2_000

    key = keys[0]
    photos = _photos(data, key, 2_000)
    seen: list[tuple[str, Progress]] = []  # what `inat-assets demo` draws its bar from, besides the run log
    token = batch_progress_observer.set(lambda batch, progress: seen.append((batch, progress)))
    try:
        result = materialize([PLANTS.image_batches], partition_key=key, resources=resources, instance=instance)
    finally:
        batch_progress_observer.reset(token)
    assert seen and seen[-1][0] == key and seen[-1][1].done == seen[-1][1].total == len(photos)
    meta = metadata(result, "plants/image_batches")
    assert meta["dagster/row_count"] == meta["ok"] == len(photos) > 0 and meta["failed_permanent"] == 0
    manifest = query(
        f"SELECT photo_id, status, path, bytes, sha256 FROM '{data}/datasets/plants/manifests/{key}.parquet' ORDER BY 1"
    )
    assert [r[0] for r in manifest] == [p for p, _ in photos]
    for (photo_id, url), (_, status, path, size, _sha) in zip(photos, manifest, strict=True):
        parts = urlsplit(url).path.split("/")  # /photos/<id>/<size>.<ext>
        size_name, ext = parts[-1].split(".")
        assert status == "ok" and Path(path).parent == data / "photos" / "original" / key
        assert Path(path).read_bytes() == served_bytes(photo_id, size_name, ext) and size == Path(path).stat().st_size
    assert not list((data / "photos" / "original" / key).glob(".*"))  # no temporary files left

    # The same batch with two worker processes, after losing some files: only those are fetched.
    for photo_id, _ in photos[:5]:
        next((data / "photos" / "original" / key).glob(f"{photo_id}.*")).unlink()
    two = metadata(
        materialize(
            [PLANTS.image_batches], partition_key=key, resources=resources, instance=instance,
            run_config={"ops": {"plants__image_batches": {"config": {"processes": 2}}}},
        ),
        "plants/image_batches",
    )  # fmt: skip
    assert two["ok"] == 5 and two["already_on_disk"] == len(photos) - 5

    hits = mirror.total_hits
    again = metadata(
        materialize([PLANTS.image_batches], partition_key=key, resources=resources, instance=instance),
        "plants/image_batches",
    )
    assert again["already_on_disk"] == len(photos) and again["ok"] == 0
    assert mirror.total_hits == hits  # a rerun touches the network for nothing already on disk

    # A refreshed fetch list keeps the existing keys and the span.
    assert _materialize_fetch(resources, instance)["new_batches"] == 0
    with pytest.raises(Exception, match="existing image batches use span 2000"):
        _materialize_fetch(_resources(sample_48, data, mirror, batch_span=5_000), instance)


def test_a_failing_batch_is_retried_by_dagster_and_refetches_only_what_is_missing(
    sample_48: SampleArchiveInfo, tmp_path: Path, mirror: MirrorServer
) -> None:
    data = tmp_path / "data"
    resources = _resources(sample_48, data, mirror, batch_span=1_000_000_000)
    instance = DagsterInstance.ephemeral()
    _materialize_fetch(resources, instance)
    (key,) = instance.get_dynamic_partitions(PLANTS.partitions)
    photos = _photos(data, key, 1_000_000_000)
    flaky, gone = photos[0][0], photos[1][0]
    # With 1 engine retry, `flaky` fails both tries of the first attempt (-> Dagster retries the batch).
    mirror.set_faults({flaky: ["503", "503", "ok"], gone: ["404"]})
    fast_retry = dataset_assets(dataset("plants"), RetryPolicy(max_retries=2, delay=0.1)).image_batches
    result = materialize(
        [fast_retry],
        partition_key=key,
        resources=resources,
        instance=instance,
        run_config={"ops": {"plants__image_batches": {"config": {"retries": 1, "try_other_host": False, "max_transient_share": 0.0}}}},
    )
    assert result.success
    retries = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert len(retries) == 1
    meta = metadata(result, "plants/image_batches")
    assert meta["ok"] == 1 and meta["failed_permanent"] == 1 and meta["failed_transient"] == 0
    assert meta["already_on_disk"] == len(photos) - 2
    status = dict(query(f"SELECT photo_id, status FROM '{data}/datasets/plants/manifests/{key}.parquet'"))
    assert status[flaky] == "ok" and status[gone] == "failed_permanent"
    # A rerun asks again for every photo that is not ok (a 404 may have been a passing state), once.
    for photo_id, url in photos:
        expected_hits = {flaky: 3, gone: 2}.get(photo_id, 1)
        assert mirror.hits(urlsplit(url).path) == expected_hits, photo_id
    assert not (data / "photos" / "original" / key / f"{gone}.jpg").exists()


def test_nice_span_targets_about_half_a_million_photos() -> None:
    # The real archive: ~150M plant photos with ids up to ~600M -> a span of 2M ids, 500k photos per
    # batch (bench/dagster_overhead.py: Dagster's fixed cost per run stays under 2 % of such a batch).
    assert nice_span(150_000_000, 1, 600_000_000) == 2_000_000
    assert nice_span(150_000_000, 1, 700_000_000) == 5_000_000  # rounded up: never fewer than the target
    assert nice_span(186, 5_551_990, 5_553_425, target=50) == 500
    with pytest.raises(BatchError):
        batch_range("not-a-batch", 10)


def test_demo_command_materializes_both_shipped_datasets_offline(tmp_path: Path) -> None:
    env = {**os.environ, "INAT_DATA_DIR": str(tmp_path / "demo")}
    command = [str(Path(sys.executable).with_name("inat-assets")), "demo"]
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    assert "dataset plants: fetch.parquet" in first.stdout and "dataset fungi_open: fetch.parquet" in first.stdout
    check_lines = [line for line in first.stdout.splitlines() if line.startswith("check ")]
    assert len(check_lines) >= 5 and all(": passed" in line for line in check_lines), check_lines  # a green first run
    data = tmp_path / "demo"
    plants = query(f"SELECT count(*) FROM '{fetch_path(data, 'plants')}'")[0][0]
    fungi = query(f"SELECT count(*) FROM '{fetch_path(data, 'fungi_open')}'")[0][0]
    assert plants > 0 and fungi > 0
    assert query(f"SELECT DISTINCT kingdom FROM '{fetch_path(data, 'fungi_open')}'") == [("Fungi",)]
    originals = [p for p in (data / "photos" / "original").rglob("*") if p.is_file()]
    mediums = [p for p in (data / "photos" / "medium").rglob("*") if p.is_file()]
    assert len(originals) == plants - 1  # one plant photo 404s on purpose
    assert len(mediums) == fungi
    # Each shipped dataset ends as a training dataset with every split filled, and the demo says how to load it.
    for name in ("plants", "fungi_open"):
        training = load_result(data / "datasets" / name / "training")
        assert training.rows > 0 and all(training.splits[split] > 0 for split in ("train", "val", "test")), name
        assert f"Training dataset in {data / 'datasets' / name / 'training'}" in first.stdout
    assert set(load_result(data / "datasets" / "plants" / "training").exports) == {"imagefolder", "webdataset", "coco"}
    assert "load_dataset('imagefolder', data_dir=" in first.stdout and "inat-assets report plants" in first.stdout
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "images: cached" in again.stdout and "images: ok" not in again.stdout
    rebuilt = load_result(data / "datasets" / "plants" / "training")
    assert rebuilt.reused_split_groups > 0  # the second build kept every group's split


def test_an_empty_first_fetch_list_does_not_fix_the_span(tmp_path: Path) -> None:
    empty, full = tmp_path / "empty.parquet", tmp_path / "full.parquet"
    with duckdb.connect() as con:
        con.execute(f"COPY (SELECT 1::BIGINT AS photo_id, 'x' AS url WHERE false) TO '{empty}'")
        con.execute(f"COPY (SELECT range::BIGINT AS photo_id, 'x' AS url FROM range(0, 5000000, 4)) TO '{full}'")
        state = tmp_path / "batches.json"
        assert plan_batches(con, empty, state).keys == [] and not state.exists()
        plan = plan_batches(con, full, state)
        assert plan.span == 2_000_000 and state.exists() and len(plan.keys) == 3
