"""The training dataset on s3:// (a moto server): the same files as on disk, each object whole, summary.json last.

Photos and manifests are placed on the bucket by the test, under the layout `DataStore` defines
(``photos/<size>/<batch>/<id>.<ext>``, ``datasets/<name>/manifests/<batch>.parquet`` whose ``path`` is
the photo's URL), from the training engine's synthetic world; the same world built on local disk is
the reference every store build is compared with.
"""

from __future__ import annotations

import csv
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import boto3
import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from dagster import DagsterInstance, materialize

from inat_assets.cli.main import main as cli_main
from inat_assets.errors import TrainingDatasetError
from inat_assets.storage import DataStore
from inat_assets.store import Location
from inat_assets.testing.mirror import MirrorServer, serve_mirror
from inat_assets.testing.sample import SampleArchiveInfo
from inat_assets.training import TrainingDatasetResult, TrainingOptions, build_training_dataset, summary_text
from inat_assets.training.report import load_result
from inat_assets_tests.conftest import (
    TABLE_ASSETS,
    TABLE_CHECKS,
    dataset,
    dataset_assets,
    metadata,
    settings_for,
)
from inat_assets_tests.store.conftest import S3Server
from inat_assets_tests.training.world import World, make_world

SIZE = "original"
SPAN = 200  # sample_48's plant photos fall into several batches
OPTIONS = {
    "mini_per_class": 2,
    "licences": {"preset": "research", "share_alike": True},
    "splits": {"min_val_per_class": 1, "min_test_per_class": 1},
    "exports": {"webdataset": {"shard_max_photos": 5}, "imagefolder": {}, "coco": True},
}
SELECTION = {"dataset": "plants", "kingdom": ["Plantae"], "photo_size": SIZE}
ARCHIVE = {"archive date": "2026-11-20"}


def _keys(bucket: str, prefix: str) -> dict[str, dict]:
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"][len(prefix):]: o for page in pages for o in page.get("Contents", [])}


def _read(bucket: str, key: str) -> bytes:
    return boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()


def _stop_recording(server: S3Server) -> list[dict]:
    """The requests served since start_recording, in the order served (from the server's access log)."""
    return [{"method": method, "url": path} for method, path in server.stop_recording()]


def place_world(world: World, store: DataStore, batches: list[str] | None = None) -> None:
    """Upload the world's tables, photos and manifests to the store's layout; manifests name the photos' URLs."""
    assert isinstance(store.root, Location)
    fs = store.root.fs
    fs.put_file(str(world.fetch), store.fetch_list("plants").path)
    fs.put_file(str(world.observations), store.table("observations").path)
    for batch in batches or world.batches:
        table = pq.ParquetFile(world.manifests_dir / f"{batch}.parquet").read()  # the world repeats width/height
        folder = store.photos_dir(SIZE, batch)
        urls = [None if p is None else str(folder / Path(p).name) for p in table.column("path").to_pylist()]
        local = [p for p in table.column("path").to_pylist() if p is not None]
        fs.put(local, [f"{folder.path}/{Path(p).name}" for p in local])
        table = table.set_column(table.schema.get_field_index("path"), "path", pa.array(urls, pa.string()))
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        store.manifest("plants", batch).write_bytes(sink.getvalue().to_pybytes())


def build(store_or_dir: DataStore | Path, world: World, options: dict, batches: list[str] | None = None) -> TrainingDatasetResult:
    if isinstance(store_or_dir, DataStore):
        store = store_or_dir
        fetch, obs, out = store.fetch_list("plants"), store.table("observations"), store.training_dir("plants")
        manifests = [store.manifest("plants", b) for b in batches] if batches else store.manifests_dir("plants")
    else:
        fetch, obs, out = world.fetch, world.observations, store_or_dir
        manifests = world.manifests(batches) if batches else world.manifests_dir
    with duckdb.connect() as con:
        return build_training_dataset(
            con, TrainingOptions.model_validate(options), fetch, obs, manifests, out, ARCHIVE, selection=SELECTION
        )


def local_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def store_files(bucket: str, prefix: str) -> dict[str, bytes]:
    return {k: _read(bucket, prefix + k) for k in _keys(bucket, prefix)}


def index_without_paths(data: bytes) -> pa.Table:
    return pq.read_table(io.BytesIO(data)).drop_columns(["path"])


@dataclass(frozen=True)
class OnStore:
    bucket: str
    url: str
    store: DataStore
    world: World
    scratch: Path

    @property
    def prefix(self) -> str:
        return "inat/datasets/plants/training/"


@pytest.fixture
def on_store(s3_bucket: str, tmp_path: Path) -> OnStore:
    world = make_world(tmp_path / "world")
    url = f"s3://{s3_bucket}/inat"
    store = DataStore.from_setting(url, str(tmp_path / "scratch"))
    place_world(world, store)
    return OnStore(s3_bucket, url, store, world, tmp_path / "scratch")


def test_a_store_build_writes_the_same_files_as_a_local_build(on_store: OnStore, s3_server: S3Server, tmp_path: Path) -> None:
    local = build(tmp_path / "local", on_store.world, OPTIONS, None)
    s3_server.start_recording()
    remote = build(on_store.store, on_store.world, OPTIONS)
    requests = _stop_recording(s3_server)

    disk, objects = local_files(tmp_path / "local"), store_files(on_store.bucket, on_store.prefix)
    disk.pop(".lock")  # the local flock file stays; the store's lease is deleted when released
    assert set(objects) == set(disk) and not [k for k in objects if "/." in f"/{k}" or k.endswith(".part")]
    # Paths name the photos (local files vs URLs); everything else is byte for byte the same.
    differ = {"dataset.parquet", "summary.json"} | {k for k in disk if k.startswith("plots/")}
    assert {k for k in disk if disk[k] != objects[k]} <= differ
    assert index_without_paths(objects["dataset.parquet"]).equals(index_without_paths(disk["dataset.parquet"]))
    paths = pq.read_table(io.BytesIO(objects["dataset.parquet"])).column("path").to_pylist()
    assert all(p.startswith(f"{on_store.url}/photos/{SIZE}/batch-") for p in paths)
    assert all(objects[k].startswith(b"\x89PNG") for k in differ if k.startswith("plots/"))
    assert [k for k in disk if k.startswith("webdataset/")] and [k for k in disk if k.startswith("imagefolder/")]

    assert str(remote.out_dir) == f"{on_store.url}/datasets/plants/training" and isinstance(remote.index, Location)
    same = ("rows", "classes", "splits", "classes_per_split", "licences", "drops", "batches", "reused_split_groups")
    assert {f: getattr(remote, f) for f in same} == {f: getattr(local, f) for f in same}
    assert {k: len(v) for k, v in remote.exports.items()} == {k: len(v) for k, v in local.exports.items()}

    # summary.json is the last object written: a reader that sees it sees a finished build.
    puts = [r["url"].split("?")[0] for r in requests if r["method"] in ("PUT", "POST") and "/training/" in r["url"]]
    puts = [u for u in puts if not u.endswith("/.lock")]
    assert puts[-1].endswith("/training/summary.json")
    # Photos were copied on the server (CopyObject), not downloaded and uploaded again.
    copies = [r for r in requests if r["method"] == "PUT" and "/imagefolder/" in r["url"]]
    assert len(copies) == sum(1 for k in objects if k.startswith("imagefolder/") and k.endswith(".jpg")) + 3  # + 3 metadata.jsonl
    # The build's local scratch is gone (its folder is removed with it), nothing is staged any more.
    assert not list((on_store.scratch / "training").iterdir()) and not list((on_store.scratch / "staging").iterdir())


def test_a_second_build_with_fewer_batches_deletes_what_it_no_longer_exports(on_store: OnStore, tmp_path: Path) -> None:
    build(on_store.store, on_store.world, OPTIONS)
    before = _keys(on_store.bucket, on_store.prefix)
    fewer = on_store.world.batches[:-2]
    second = build(on_store.store, on_store.world, OPTIONS, fewer)
    build(tmp_path / "local", on_store.world, OPTIONS, None)  # a local dataset rebuilt the same way
    local = build(tmp_path / "local", on_store.world, OPTIONS, fewer)

    after = store_files(on_store.bucket, on_store.prefix)
    disk = local_files(tmp_path / "local")
    disk.pop(".lock")
    assert set(after) == set(disk) and set(before) - set(after)  # photos and shards of the left-out batches went
    assert {k for k in disk if disk[k] != after[k]} <= {"dataset.parquet", "summary.json"} | {k for k in disk if k.startswith("plots/")}
    assert second.rows == local.rows < len(pq.read_table(io.BytesIO(_read(on_store.bucket, on_store.prefix + "dataset.parquet"))).column("path")) + 1
    assert second.reused_split_groups == local.reused_split_groups > 0  # splits read back from the index on the store


def test_a_photo_gone_from_the_store_fails_before_anything_is_replaced(on_store: OnStore) -> None:
    first = build(on_store.store, on_store.world, OPTIONS)
    before = {k: v["ETag"] for k, v in _keys(on_store.bucket, on_store.prefix).items()}
    index = pq.read_table(io.BytesIO(_read(on_store.bucket, on_store.prefix + "dataset.parquet")))
    victim = index.filter(pc.equal(index.column("split"), "test")).to_pylist()[-1]  # the last one an export would read
    boto3.client("s3").delete_object(Bucket=on_store.bucket, Key=victim["path"].split("/", 3)[3])
    with pytest.raises(TrainingDatasetError, match=rf"photo {victim['photo_id']} \(batch {victim['batch']}\).*re-materialize"):
        build(on_store.store, on_store.world, OPTIONS)
    assert {k: v["ETag"] for k, v in _keys(on_store.bucket, on_store.prefix).items()} == before
    assert load_result(on_store.store.training_dir("plants")).rows == first.rows


def test_resized_exports_and_dimensions_read_from_the_photos_on_the_store(s3_bucket: str, tmp_path: Path) -> None:
    world = make_world(tmp_path / "world", species=4, with_dimensions=False)
    store = DataStore.from_setting(f"s3://{s3_bucket}/inat", str(tmp_path / "scratch"))
    place_world(world, store)
    options = {"exports": {"webdataset": {"shard_max_bytes": 4000}, "imagefolder": {}, "resize": {"longest_side": 8}}}
    remote = build(store, world, options)
    local = build(tmp_path / "local", world, options)
    assert remote.dimensions_read_from_files == local.dimensions_read_from_files > 0
    disk, objects = local_files(tmp_path / "local"), store_files(s3_bucket, "inat/datasets/plants/training/")
    disk.pop(".lock")
    assert set(objects) == set(disk)
    assert {k for k in disk if disk[k] != objects[k]} <= {"dataset.parquet", "summary.json"} | {k for k in disk if k.startswith("plots/")}
    widths = pq.read_table(io.BytesIO(objects["dataset.parquet"])).column("width").to_pylist()
    assert widths == pq.read_table(tmp_path / "local" / "dataset.parquet").column("width").to_pylist() and None not in widths
    with tarfile.open(fileobj=io.BytesIO(objects[next(k for k in objects if k.endswith(".tar"))])) as tar:
        assert any(m.name.endswith(".jpg") for m in tar.getmembers())


def _graph(archive: Path, data_dir: str | Path, mirror: MirrorServer, scratch: Path) -> tuple[dict, str]:
    """The whole graph for plants, every image batch downloaded from the mirror, then the training
    dataset: its metadata, and the card as written."""
    plants = dataset_assets(dataset("plants", training=OPTIONS))
    resources = settings_for(
        archive, data_dir, photo_mirror=mirror.base_url(), allowed_hosts="127.0.0.1", batch_span=SPAN,  # type: ignore[arg-type]
        scratch_dir=str(scratch),
    )  # fmt: skip
    instance = DagsterInstance.ephemeral()
    materialize([*TABLE_ASSETS, *TABLE_CHECKS, plants.fetch_parquet, plants.check], resources=resources, instance=instance)
    for key in instance.get_dynamic_partitions(plants.partitions):
        materialize([plants.image_batches], partition_key=key, resources=resources, instance=instance)
    result = materialize([plants.training_dataset], resources=resources, instance=instance)
    return metadata(result, "plants/training_dataset"), load_result(DataStore.from_setting(str(data_dir)).training_dir("plants")).card.read_text()


def test_the_graph_on_a_store_downloads_then_builds_the_same_training_dataset_and_report_reads_it(
    sample_48: SampleArchiveInfo, s3_bucket: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"s3://{s3_bucket}/inat"
    with serve_mirror(("127.0.0.1",)) as mirror:
        meta, card = _graph(sample_48.path, url, mirror, tmp_path / "scratch")
        local_meta, local_card = _graph(sample_48.path, tmp_path / "local", mirror, tmp_path / "local-scratch")
    assert str(meta["path"]) == f"{url}/datasets/plants/training" and meta["dagster/row_count"] > 0
    same = ("dagster/row_count", "classes", "train_photos", "val_photos", "test_photos", "usable_photos", "drops", "licences", "exports")
    assert {k: meta[k] for k in same} == {k: local_meta[k] for k in same}
    assert str(meta["plot_split_sizes"]).startswith("![split_sizes](data:image/png;base64,")
    # The photos the download engine put on the store are the ones exported, byte for byte.
    prefix = "inat/datasets/plants/training/"
    objects, disk = store_files(s3_bucket, prefix), local_files(tmp_path / "local" / "datasets" / "plants" / "training")
    disk.pop(".lock")
    assert set(objects) == set(disk)
    assert {k for k in disk if disk[k] != objects[k]} <= {"dataset.parquet", "summary.json", "README.md"} | {
        k for k in disk if k.startswith("plots/")
    }
    assert card.split("## Selection")[1] == local_card.split("## Selection")[1]  # the archive's lines differ

    assert cli_main(["report", "plants", "--data-dir", url]) == 0
    out = capsys.readouterr().out
    assert out.strip() == summary_text(DataStore.from_setting(url).training_dir("plants")).strip()
    assert f"Training dataset in {url}/datasets/plants/training" in out and f"under {url}/datasets/plants/training/webdataset" in out
    recorded = load_result(DataStore.from_setting(url).training_dir("plants"))
    assert isinstance(recorded.attribution, Location)
    with io.StringIO(recorded.attribution.read_text()) as fh:
        assert len(list(csv.DictReader(fh))) == meta["dagster/row_count"]
    assert json.loads(_read(s3_bucket, prefix + "summary.json"))["rows"] == meta["dagster/row_count"]
