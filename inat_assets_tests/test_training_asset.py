"""<name>/training_dataset on the graph: partial and full downloads, exports, the report command, code versions."""

from __future__ import annotations

import csv
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from dagster import DagsterInstance, materialize

from inat_assets.cli.main import main as cli_main
from inat_assets.testing.mirror import serve_mirror
from inat_assets.testing.sample import SampleArchiveInfo
from inat_assets.training import summary_text
from inat_assets.training.report import load_result
from inat_assets_tests.conftest import (
    DatasetAssets,
    dataset,
    dataset_assets,
    metadata,
    query,
    run_graph,
    settings_for,
)

SPAN = 200  # sample_48's plant photos fall into several batches, so a partial download is possible
TRAINING = {
    "licences": {"preset": "research", "share_alike": True},
    "splits": {"min_val_per_class": 1, "min_test_per_class": 1},
    "caps": {"max_per_observation": 2},
    "exports": {"imagefolder": {}, "webdataset": {"shard_max_photos": 20}, "coco": True},
}


@dataclass(frozen=True)
class Built:
    data: Path
    assets: DatasetAssets
    partial: dict[str, Any]  # training_dataset metadata with only the first batch downloaded
    full: dict[str, Any]  # ... after every batch


def _usable_manifest_photos(data: Path) -> int:
    return query(
        f"SELECT count(DISTINCT photo_id) FROM '{data}/datasets/plants/manifests/*.parquet' WHERE status IN ('ok', 'cached')"
    )[0][0]


@pytest.fixture(scope="module")
def built(sample_48: SampleArchiveInfo, tmp_path_factory: pytest.TempPathFactory) -> Built:
    data = tmp_path_factory.mktemp("training-asset") / "data"
    plants = dataset_assets(dataset("plants", training=TRAINING))
    instance = DagsterInstance.ephemeral()
    with serve_mirror(("127.0.0.1",)) as mirror:
        resources = settings_for(sample_48.path, data, photo_mirror=mirror.base_url(), allowed_hosts="127.0.0.1", batch_span=SPAN)
        run_graph(sample_48.path, data, with_fetch=False, instance=instance)
        materialize([plants.fetch_parquet, plants.check], resources=resources, instance=instance)
        keys = instance.get_dynamic_partitions(plants.partitions)
        assert len(keys) > 1
        key = plants.training_dataset.key.to_user_string()

        def batch(partition: str) -> None:
            materialize([plants.image_batches], partition_key=partition, resources=resources, instance=instance)

        def training() -> dict[str, Any]:
            return metadata(materialize([plants.training_dataset], resources=resources, instance=instance), key)

        batch(keys[0])
        partial = training()
        assert partial["usable_photos"] == _usable_manifest_photos(data)  # measured before the other batches come in
        for partition in keys[1:]:
            batch(partition)
        return Built(data, plants, partial, training())


def test_index_rows_equal_the_usable_manifest_rows_minus_the_counted_drops(built: Built) -> None:
    result = load_result(built.data / "datasets" / "plants" / "training")
    index = pq.read_table(result.index).to_pylist()
    usable = _usable_manifest_photos(built.data)
    assert len(index) == result.rows == built.full["dagster/row_count"] == usable - result.drops.after_usable()
    assert result.drops.per_observation_cap > 0 and result.drops.rank_above_label > 0  # the drops are exercised
    assert built.full["usable_photos"] == usable and built.full["classes"] == result.classes == len({r["label"] for r in index})
    assert {s: built.full[f"{s}_photos"] for s in ("train", "val", "test")} == result.splits
    assert "| over the per-observation cap | " in built.full["drops"]
    # Only the first batch downloaded: the rest of the fetch list is reported missing, not an error.
    assert 0 < built.partial["dagster/row_count"] < built.full["dagster/row_count"]
    fetch_rows = built.full["fetch_list_photos"]
    assert built.partial["missing_fraction"] == pytest.approx(1 - built.partial["usable_photos"] / fetch_rows, abs=1e-4)
    assert built.full["missing_fraction"] == pytest.approx(1 - usable / fetch_rows, abs=1e-4)
    for name in ("photos_per_class", "split_sizes", "licences", "image_sizes", "download_success"):
        assert built.full[f"plot_{name}"].startswith(f"![{name}](data:image/png;base64,iVBORw0KGgo")  # a PNG inline
    assert Path(built.full["path"]) == built.data / "datasets" / "plants" / "training"
    card = result.card.read_text()
    # The archive (from dwca_archive's materialization in this instance) and the selection are named.
    assert card.startswith("# plants:") and "dwca.zip" in card and "- archive materialized: " in card and '"kingdom"' in card


def test_every_exported_photo_is_in_attribution(built: Built) -> None:
    out = built.data / "datasets" / "plants" / "training"
    with open(out / "ATTRIBUTION.csv", newline="", encoding="utf-8") as fh:
        attributed = {int(row["photo_id"]) for row in csv.DictReader(fh)}
    index = {r["photo_id"] for r in pq.read_table(out / "dataset.parquet").to_pylist()}
    in_folder = {int(p.stem) for p in (out / "imagefolder").rglob("*") if p.is_file() and p.name != "metadata.jsonl"}
    in_shards = set()
    for shard in (out / "webdataset").rglob("*.tar"):
        with tarfile.open(shard) as tar:
            in_shards |= {int(name.split(".")[0]) for name in tar.getnames()}
    in_coco = {image["id"] for path in (out / "coco").glob("*.json") for image in json.loads(path.read_text())["images"]}
    assert attributed == index
    assert in_folder == index and in_shards == index and in_coco == index


def test_the_imagefolder_loads_with_hugging_face_datasets(
    built: Built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    from datasets import load_dataset

    out = built.data / "datasets" / "plants" / "training"
    loaded = load_dataset("imagefolder", data_dir=str(out / "imagefolder"), cache_dir=str(tmp_path / "cache"))
    index = {r["photo_id"]: r for r in pq.read_table(out / "dataset.parquet").to_pylist()}
    for hf_split, split in (("train", "train"), ("validation", "val"), ("test", "test")):
        rows = list(loaded[hf_split])
        assert {row["photo_id"] for row in rows} == {pid for pid, r in index.items() if r["split"] == split}
        assert all(row["label"] == index[row["photo_id"]]["label"] and row["image"].size[0] > 0 for row in rows)


def test_the_report_command_prints_the_summary(built: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["report", "plants", "--data-dir", str(built.data)]) == 0
    out = capsys.readouterr().out
    assert out.strip() == summary_text(built.data / "datasets" / "plants" / "training").strip()
    assert "photos in" in out and "splits:   train" in out
    assert cli_main(["report", "plants", "--data-dir", str(tmp_path / "empty")]) == 1
    assert "not built there yet" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        cli_main(["report", "no_such_dataset", "--data-dir", str(built.data)])
    assert exited.value.code == 2 and "the declared datasets are: fungi_open, plants" in capsys.readouterr().err


def test_a_changed_training_section_changes_only_the_training_assets_code_version() -> None:
    def versions(**declaration: Any) -> dict[str, str | None]:
        built = dataset_assets(dataset("plants", **declaration))
        return {
            a.key.path[-1]: a.code_versions_by_key[a.key]
            for a in (built.fetch_parquet, built.image_batches, built.training_dataset)
        }

    base = versions(training=TRAINING)
    reseeded = versions(training={**TRAINING, "splits": {"seed": 1}})
    assert base["fetch_parquet"] == reseeded["fetch_parquet"] and base["image_batches"] == reseeded["image_batches"]
    assert base["training_dataset"] != reseeded["training_dataset"]
    # A changed selection changes the photos under the training dataset: all three are stale.
    fungi = versions(training=TRAINING, kingdom=["Fungi"])
    assert all(fungi[name] != base[name] for name in base)
