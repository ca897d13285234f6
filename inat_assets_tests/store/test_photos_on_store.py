"""image_batches with the data directory on s3://: photos PUT from memory, manifests on the store,
skip-if-present from one listing of the batch's prefix, a rerun that fetches and rewrites nothing."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import boto3
import pytest
from dagster import DagsterInstance, materialize

from inat_assets.batches import batch_range
from inat_assets.storage import DataStore
from inat_assets.testing.mirror import MirrorServer, serve_mirror, served_bytes
from inat_assets.testing.s3 import S3Server
from inat_assets.testing.sample import SampleArchiveInfo
from inat_assets_tests.conftest import (
    TABLE_ASSETS,
    TABLE_CHECKS,
    dataset,
    dataset_assets,
    metadata,
    settings_for,
)

PLANTS = dataset_assets(dataset("plants"))
SPAN = 2_000


@pytest.fixture
def mirror():
    with serve_mirror(("127.0.0.1",)) as server:
        yield server


def _objects(bucket: str, prefix: str) -> dict[str, dict]:
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"]: o for page in pages for o in page.get("Contents", [])}


def _writes(requests: list[tuple[str, str]]) -> list[str]:
    return [f"{method} {path}" for method, path in requests if method in ("PUT", "POST", "DELETE")]


def test_batches_download_onto_the_store_and_a_rerun_fetches_and_rewrites_no_photo(
    sample_48: SampleArchiveInfo, s3_bucket: str, s3_env: S3Server, mirror: MirrorServer, tmp_path: Path
) -> None:
    url = f"s3://{s3_bucket}/inat"
    resources = settings_for(
        sample_48.path, url, photo_mirror=mirror.base_url(), allowed_hosts="127.0.0.1", batch_span=SPAN,
        scratch_dir=str(tmp_path / "scratch"),
    )  # fmt: skip
    instance = DagsterInstance.ephemeral()
    materialize([*TABLE_ASSETS, *TABLE_CHECKS, PLANTS.fetch_parquet, PLANTS.check], resources=resources, instance=instance)
    store = DataStore.from_setting(url)
    key = instance.get_dynamic_partitions(PLANTS.partitions)[0]
    lo, hi = batch_range(key, SPAN)
    with store.connect() as con:
        photos = con.execute(
            f"SELECT photo_id, url FROM '{store.fetch_list('plants')}' WHERE photo_id >= {lo} AND photo_id < {hi} ORDER BY 1"
        ).fetchall()
    assert photos

    first = metadata(materialize([PLANTS.image_batches], partition_key=key, resources=resources, instance=instance),
                     "plants/image_batches")  # fmt: skip
    assert first["ok"] == len(photos) and first["manifest"] == f"{url}/datasets/plants/manifests/{key}.parquet"
    assert first["images_dir"] == f"{url}/photos/original/{key}"
    stored = _objects(s3_bucket, f"inat/photos/original/{key}/")
    assert len(stored) == len(photos)
    s3 = boto3.client("s3")
    with store.connect() as con:
        manifest = con.execute(
            f"SELECT photo_id, status, path, bytes, width, height FROM '{first['manifest']}' ORDER BY 1"
        ).fetchall()
    for (photo_id, photo_url), (pid, status, path, size, width, height) in zip(photos, manifest, strict=True):
        size_name, ext = urlsplit(photo_url).path.rsplit("/", 1)[1].split(".")
        folder, name = path.rsplit("/", 1)  # the extension comes from the bytes, not the URL
        assert pid == photo_id and status == "ok" and folder == f"{url}/photos/original/{key}"
        assert name.split(".")[0] == str(photo_id)
        obj = s3.get_object(Bucket=s3_bucket, Key=path.split("/", 3)[3])
        assert obj["Body"].read() == served_bytes(photo_id, size_name, ext)
        assert obj["ContentLength"] == size and obj["Metadata"] == {"width": str(width), "height": str(height)}
    assert not [k for k in _objects(s3_bucket, "inat/") if "/locks/" in k or k.endswith(".lock")]  # leases released

    # The rerun: one listing of the batch's prefix, a HEAD per photo, no photo fetched or written.
    hits = mirror.total_hits
    s3_env.start_recording()
    again = metadata(materialize([PLANTS.image_batches], partition_key=key, resources=resources, instance=instance),
                     "plants/image_batches")  # fmt: skip
    requests = s3_env.stop_recording()
    assert again["already_on_disk"] == len(photos) and again["ok"] == 0
    assert mirror.total_hits == hits
    assert _objects(s3_bucket, f"inat/photos/original/{key}/") == stored  # same ETags and LastModified
    photo_writes = [w for w in _writes(requests) if "/photos/" in w]
    assert photo_writes == []
    listings = [p for m, p in requests if m == "GET" and "list-type=2" in p and f"prefix=inat/photos/original/{key}/" in p]
    assert len(listings) == 1  # that batch's prefix, once; never the whole bucket
    assert not [p for m, p in requests if m == "GET" and "list-type=2" in p and "prefix=&" in p + "&"]
    # Each stored photo costs one HEAD (size and pixel size from its metadata); none is downloaded.
    photo_requests = [(m, p.split("?")[0]) for m, p in requests if f"/photos/original/{key}/" in p.split("?")[0]]
    assert sorted(photo_requests) == sorted(("HEAD", f"{s3_bucket}/{k}") for k in stored)
    # What the rerun did write: the manifest (and the leases that guard it), nothing else.
    written = {w.split("?")[0] for w in _writes(requests)}
    assert {w for w in written if "manifests" in w and "lock" not in w} == {
        f"PUT {s3_bucket}/inat/datasets/plants/manifests/{key}.parquet"
    }
    assert all("locks/" in w or w.endswith(".lock") or "manifests" in w for w in written), written

    # Photos lost on the store are fetched again, and only those, also by worker processes (spawned:
    # each gets the writer pickled and opens its own connections).
    lost = list(stored)[:3]
    for gone in lost:
        s3.delete_object(Bucket=s3_bucket, Key=gone)
    third = metadata(
        materialize(
            [PLANTS.image_batches], partition_key=key, resources=resources, instance=instance,
            run_config={"ops": {"plants__image_batches": {"config": {"processes": 2}}}},
        ),
        "plants/image_batches",
    )  # fmt: skip
    assert third["ok"] == 3 and third["already_on_disk"] == len(photos) - 3
    assert set(_objects(s3_bucket, f"inat/photos/original/{key}/")) == set(stored)


def test_objects_copied_in_by_another_tool_are_checked_and_broken_ones_replaced(s3_bucket: str, tmp_path: Path) -> None:
    import asyncio

    from inat_assets.download.files import check_image
    from inat_assets.download.object_writer import ObjectWriter, photo_writer
    from inat_assets.download.writer import LocalWriter

    s3 = boto3.client("s3")
    good, other = served_bytes(11, "medium", "jpg"), served_bytes(12, "medium", "png")
    prefix = "inat/photos/medium/batch-000000"
    s3.put_object(Bucket=s3_bucket, Key=f"{prefix}/11.jpg", Body=good)  # no pixel-size metadata
    s3.put_object(Bucket=s3_bucket, Key=f"{prefix}/12.png", Body=other)
    s3.put_object(Bucket=s3_bucket, Key=f"{prefix}/13.jpg", Body=good[: len(good) // 2])  # cut short
    s3.put_object(Bucket=s3_bucket, Key=f"{prefix}/notes.txt", Body=b"not a photo")
    folder_location = DataStore.from_setting(f"s3://{s3_bucket}/inat").photos_dir("medium", "batch-000000")
    writer = photo_writer(folder_location)
    assert isinstance(writer, ObjectWriter) and isinstance(photo_writer(tmp_path), LocalWriter)
    folder = writer.folder(folder_location)

    async def run() -> tuple:
        ids = await writer.list_ids(folder)
        found = [await writer.check(folder, i, None) for i in (11, 12, 13)]
        wrong_size = await writer.check(folder, 12, len(other) + 1)
        await writer.aclose()
        return ids, found, wrong_size

    ids, (eleven, twelve, thirteen), wrong_size = asyncio.run(run())
    assert ids == {11, 12, 13}
    expected = check_image(good)
    assert eleven is not None and (eleven.uri, eleven.size, eleven.width, eleven.height) == (
        f"{folder}/11.jpg", len(good), expected.width, expected.height  # type: ignore[union-attr]
    )
    assert twelve is not None and twelve.ext == "png"
    assert thirteen is None and wrong_size is None  # both removed so that a download replaces them
    left = {o["Key"].rsplit("/", 1)[1] for o in s3.list_objects_v2(Bucket=s3_bucket, Prefix=prefix)["Contents"]}
    assert left == {"11.jpg", "notes.txt"}
