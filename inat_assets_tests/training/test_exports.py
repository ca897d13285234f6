from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tarfile
from collections import Counter
from pathlib import Path

import pytest

from inat_assets.errors import TrainingDatasetError
from inat_assets.training import TrainingDatasetResult, summary_text
from inat_assets_tests.training.conftest import build, index_rows
from inat_assets_tests.training.world import World, make_world

ALL_EXPORTS = {
    "mini_per_class": 2,
    "splits": {"min_val_per_class": 1, "min_test_per_class": 1},
    "exports": {"webdataset": {"shard_max_photos": 5}, "imagefolder": {}, "coco": True},
}


@pytest.fixture(scope="module")
def exported(world: World, tmp_path_factory: pytest.TempPathFactory) -> TrainingDatasetResult:
    return build(world, tmp_path_factory.mktemp("exported") / "plants", ALL_EXPORTS, plots=True)


def _shard_members(shard: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(shard) as tar:
        return tar.getmembers()


def test_every_exported_photo_is_in_attribution(exported: TrainingDatasetResult) -> None:
    with open(exported.attribution, newline="", encoding="utf-8") as fh:
        attribution = {int(r["photo_id"]): r for r in csv.DictReader(fh)}
    index = {r["photo_id"]: r for r in index_rows(exported)}
    assert set(attribution) == set(index)
    in_shards = {int(m.name.split(".")[0]) for s in exported.exports["webdataset"] for m in _shard_members(s)}
    in_folder = {int(p.stem) for p in (exported.out_dir / "imagefolder").rglob("*.jpg")}
    in_coco = {i["id"] for p in exported.exports["coco"] for i in json.loads(p.read_text())["images"]}
    assert in_shards | in_folder | in_coco <= set(attribution)
    assert in_shards == in_coco == set(index) and in_folder == set(index)
    for pid, row in attribution.items():
        assert row["creator"] and row["license"] == index[pid]["license"] and row["license_version"] == ("1.0" if row["license"] == "CC0" else "4.0")
        assert row["license_url"].startswith("http") and row["photo_url"] == index[pid]["photo_url"]
    assert exported.licences == dict(Counter(r["license"] for r in index.values()))


def test_webdataset_shards_round_trip_with_the_webdataset_package(exported: TrainingDatasetResult) -> None:
    import webdataset as wds

    index = {r["photo_id"]: r for r in index_rows(exported)}
    shards_dir = exported.out_dir / "webdataset"
    assert sorted(p.name for p in shards_dir.iterdir()) == ["test", "train", "train_mini", "val"]
    for split in ("train", "val", "test", "train_mini"):
        urls = sorted(str(p) for p in (shards_dir / split).glob("*.tar"))
        assert all(len(_shard_members(Path(u))) <= 3 * 5 for u in urls)
        samples = list(wds.WebDataset(urls, shardshuffle=False).decode())
        expected = [r for r in index.values() if (r["mini"] if split == "train_mini" else r["split"] == split)]
        assert sorted(int(s["__key__"]) for s in samples) == sorted(r["photo_id"] for r in expected)
        for s in samples:
            row = index[int(s["__key__"])]
            assert s["cls"] == row["label_id"]
            assert s["json"] == json.loads(json.dumps({k: v for k, v in row.items() if k != "path"}, default=str))
            assert s["jpg"] == Path(row["path"]).read_bytes()
    assert not list(shards_dir.glob(".*"))  # no temporary folders left


def test_webdataset_shards_stay_within_the_declared_byte_size(world: World, tmp_path: Path) -> None:
    limit = 8_000
    result = build(world, tmp_path / "ds", {"exports": {"webdataset": {"shard_max_bytes": limit}, "coco": False}})
    for shard in result.exports["webdataset"]:
        members = _shard_members(shard)
        payload = sum(m.size + 512 for m in members)
        assert payload <= limit or len(members) == 3
    assert len(result.exports["webdataset"]) > 3


def test_imagefolder_loads_with_hugging_face_datasets(
    exported: TrainingDatasetResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    from datasets import load_dataset

    loaded = load_dataset("imagefolder", data_dir=str(exported.out_dir / "imagefolder"), cache_dir=str(tmp_path / "cache"))
    index = {r["photo_id"]: r for r in index_rows(exported)}
    names = {"train": "train", "validation": "val", "test": "test"}
    assert set(loaded) == set(names)
    for hf_split, split in names.items():
        got = {row["photo_id"]: row for row in loaded[hf_split]}
        assert set(got) == {pid for pid, r in index.items() if r["split"] == split}
        for pid, row in got.items():
            assert (row["label"], row["label_id"]) == (index[pid]["label"], index[pid]["label_id"])
            assert row["image"].size == (8, 8)
    sample = next(iter(index.values()))
    linked = exported.out_dir / "imagefolder" / sample["split"] / sample["label"] / f"{sample['photo_id']}.jpg"
    assert os.stat(linked).st_ino == os.stat(sample["path"]).st_ino  # a hard link, not a copy


def test_coco_json_validates(exported: TrainingDatasetResult) -> None:
    index = index_rows(exported)
    labels = {r["label_id"]: r["label"] for r in index}
    categories = None
    for path in exported.exports["coco"]:
        doc = json.loads(path.read_text())
        image_ids = [i["id"] for i in doc["images"]]
        category_ids = [c["id"] for c in doc["categories"]]
        annotation_ids = [a["id"] for a in doc["annotations"]]
        licence_ids = {lic["id"] for lic in doc["licenses"]}
        assert len(set(image_ids)) == len(image_ids) and len(set(category_ids)) == len(category_ids)
        assert len(set(annotation_ids)) == len(annotation_ids) == len(image_ids)
        assert all(a["image_id"] in set(image_ids) and a["category_id"] in set(category_ids) for a in doc["annotations"])
        assert all(i["license"] in licence_ids and i["width"] == 8 and 45 <= i["latitude"] < 46 for i in doc["images"])
        assert {c["id"]: c["name"] for c in doc["categories"]} == labels
        assert all(c["kingdom"] == "Plantae" and c["family"] and c["specific_epithet"] for c in doc["categories"])
        assert categories in (None, doc["categories"])  # the same category list (and ids) in every split
        categories = doc["categories"]
        split = path.stem
        assert len(image_ids) == exported.splits[split]
        first = doc["images"][0]
        assert (exported.out_dir / first["file_name"]).exists()  # relative to the dataset folder


def test_resize_makes_smaller_copies_and_leaves_the_originals(tmp_path: Path) -> None:
    from PIL import Image

    world = make_world(tmp_path / "w", species=3)
    originals = {}
    for photo in (tmp_path / "w" / "photos").rglob("*.jpg"):
        buf = io.BytesIO()
        Image.new("RGB", (64, 48), (int(photo.stem) % 256, 90, 30)).save(buf, format="JPEG")
        photo.write_bytes(buf.getvalue())
        originals[photo] = hashlib.sha256(buf.getvalue()).hexdigest()
    options = {"exports": {"resize": {"longest_side": 16, "quality": 80}, "webdataset": {}, "imagefolder": {}}}
    result = build(world, tmp_path / "ds", options)
    for file in (result.out_dir / "imagefolder").rglob("*.jpg"):
        with Image.open(file) as image:
            assert image.size == (16, 12)
    with tarfile.open(result.exports["webdataset"][0]) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".jpg"))
        with Image.open(io.BytesIO(tar.extractfile(member).read())) as image:  # type: ignore[union-attr]
            assert image.size == (16, 12)
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in originals} == originals


def test_a_missing_photo_file_fails_and_keeps_the_previous_export(world: World, tmp_path: Path) -> None:
    copy = make_world(tmp_path / "w", species=3)
    options = {"exports": {"webdataset": {}, "coco": False}}
    first = build(copy, tmp_path / "ds", options)
    shards = {p: p.read_bytes() for p in first.exports["webdataset"]}
    victim = index_rows(first)[0]
    Path(victim["path"]).unlink()
    with pytest.raises(TrainingDatasetError, match=str(victim["photo_id"])):
        build(copy, tmp_path / "ds", options)
    assert {p: p.read_bytes() for p in shards} == shards
    assert not [p for p in (tmp_path / "ds" / "webdataset").iterdir() if p.name.startswith(".")]


def test_card_summary_and_plots_describe_the_dataset(exported: TrainingDatasetResult, world: World, tmp_path: Path) -> None:
    card = exported.card.read_text()
    for text in ('ETag: "abc"', "inaturalist.org/pages/terms", "creativecommons.org/licenses", "load_dataset(\"imagefolder\"",
                 "webdataset.WebDataset", "coco/<split>.json", '"kingdom": [', "download failed", f"{exported.rows:,} photos"):  # fmt: skip
        assert text in card
    assert "Warning" not in card
    for split, n in exported.splits.items():
        assert f"| {split} | {n:,} |" in card
    text = summary_text(exported.out_dir)
    assert f"{exported.rows:,} photos in {exported.classes:,} classes" in text and "train_mini" in text
    assert set(exported.plots) == {"photos_per_class", "split_sizes", "licences", "image_sizes", "download_success"}
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in exported.plots.values())
    research = build(world, tmp_path / "nc", {"licences": {"preset": "research"}})
    assert "Warning" in research.card.read_text() and "CC-BY-NC" in research.card.read_text()


def test_reading_one_split_skips_row_groups_of_other_splits(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from inat_assets.training.exports import _row_groups_of, iter_rows

    splits = ["train"] * 7 + ["val"] * 4 + ["test"] * 5
    table = pa.table({"photo_id": list(range(16)), "split": splits, "mini": [i < 2 for i in range(16)]})
    pq.write_table(table, tmp_path / "i.parquet", row_group_size=3)
    reader = pq.ParquetFile(tmp_path / "i.parquet")
    assert _row_groups_of(reader, "val") == [2, 3]  # rows 6-8 and 9-11
    for split in ("train", "val", "test"):
        assert [r["photo_id"] for r in iter_rows(tmp_path / "i.parquet", split)] == [
            i for i, s in enumerate(splits) if s == split
        ]
    assert [r["photo_id"] for r in iter_rows(tmp_path / "i.parquet", "train", mini=True)] == [0, 1]
