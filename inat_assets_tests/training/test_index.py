from __future__ import annotations

from collections import Counter
from pathlib import Path

import duckdb

from inat_assets.training import TrainingOptions, build_training_dataset, summary_text
from inat_assets_tests.training.conftest import build, index_rows
from inat_assets_tests.training.world import World, make_world

INDEX_COLUMNS = {
    "path", "photo_id", "observation_id", "label", "label_id", "kingdom", "phylum", "class", "order",
    "family", "genus", "species", "taxon_id", "width", "height", "bytes", "sha256", "license", "creator",
    "rights_holder", "observer_login", "observation_url", "event_date", "country_code", "split",
}  # fmt: skip


def _fetch_counts(world: World, where: str) -> int:
    with duckdb.connect() as con:
        return con.execute(
            f"""SELECT count(*) FROM read_parquet('{world.fetch}') AS f
            JOIN read_parquet('{world.manifests_dir}/*.parquet') AS m USING (photo_id)
            WHERE m.status = 'ok' AND {where}"""
        ).fetchone()[0]  # type: ignore[index]


def test_index_rows_equal_usable_photos_minus_each_counted_drop(world: World, tmp_path: Path) -> None:
    result = build(world, tmp_path / "ds")
    rows = index_rows(result)
    d = result.drops
    assert result.usable_photos == result.manifest_rows - len(world.failed_ids)
    assert len(rows) == result.rows == result.usable_photos - d.after_usable()
    assert d.download_failed == len(world.failed_ids) and d.not_downloaded == 0
    assert d.licence_not_allowed == _fetch_counts(world, "f.license NOT IN ('CC0', 'CC-BY')")
    assert d.hybrid == world.hybrids > 0
    assert d.rank_above_label == _fetch_counts(world, "f.license IN ('CC0', 'CC-BY') AND f.taxon_rank = 'genus'") > 0
    assert d.duplicate_sha256 == 1
    ids = {r["photo_id"] for r in rows}
    assert world.duplicate_ids[0] in ids and world.duplicate_ids[1] not in ids
    assert set(rows[0]) >= INDEX_COLUMNS
    assert {r["license"] for r in rows} <= {"CC0", "CC-BY"}
    assert all(r["width"] == 8 and r["observation_url"].endswith(str(r["observation_id"])) for r in rows)


def test_subspecies_and_varieties_roll_up_to_their_species(world: World, tmp_path: Path) -> None:
    rows = index_rows(build(world, tmp_path / "ds", {"licences": {"preset": "research", "share_alike": True}}))
    rolled = {(r["taxon_rank"], r["label"], r["species"]) for r in rows if r["taxon_rank"] != "species"}
    assert rolled == {("subspecies", "Quercus sp0", "Quercus sp0"), ("variety", "Acer sp1", "Acer sp1")}
    assert not any("\u00d7" in r["label"] for r in rows)


def test_hybrids_kept_with_their_own_label_when_asked(world: World, tmp_path: Path) -> None:
    result = build(world, tmp_path / "ds", {"include_hybrids": True})
    assert result.drops.hybrid == 0
    assert sum(r["label"] == "Quercus \u00d7 bebbiana" for r in index_rows(result)) == world.hybrids


def test_genus_labels_keep_genus_level_observations(world: World, tmp_path: Path) -> None:
    result = build(world, tmp_path / "ds", {"label_rank": "genus"})
    labels = Counter(r["label"] for r in index_rows(result))
    assert set(labels) == {"Quercus", "Acer", "Rosa"} and result.drops.rank_above_label == 0


def test_caps_hold_in_the_index_and_small_classes_are_dropped_and_listed(world: World, tmp_path: Path) -> None:
    caps = {"max_per_observation": 1, "max_per_observer_per_class": 2, "max_per_class": 6, "min_per_class": 4}
    result = build(world, tmp_path / "ds", {"caps": caps})
    rows = index_rows(result)
    d = result.drops
    assert d.per_observation_cap > 0 and d.per_observer_cap > 0 and d.per_class_cap > 0 and d.class_below_minimum > 0
    assert len(rows) == result.usable_photos - d.after_usable()
    assert max(Counter(r["observation_id"] for r in rows).values()) == 1
    assert max(Counter((r["label"], r["observer_login"]) for r in rows).values()) <= 2
    per_class = Counter(r["label"] for r in rows)
    assert min(per_class.values()) >= 4 and max(per_class.values()) <= 6
    dropped = dict(result.classes_below_minimum)
    assert dropped and not set(dropped) & set(per_class) and sum(dropped.values()) == d.class_below_minimum
    # The per-observation cap keeps an observation's first usable photo (lowest id, the archive's order).
    unusable = [*world.failed_ids, world.duplicate_ids[1]]
    with duckdb.connect() as con:
        first = dict(con.execute(
            f"""SELECT observation_id, min(photo_id) FROM read_parquet('{world.fetch}')
            WHERE license IN ('CC0', 'CC-BY') AND photo_id NOT IN ({", ".join(map(str, unusable))}) GROUP BY 1"""
        ).fetchall())
    assert all(r["photo_id"] == first[r["observation_id"]] for r in rows)


def test_partial_batches_cover_what_exists_and_report_the_rest_missing(world: World, tmp_path: Path) -> None:
    present = world.batches[:2]
    result = build(world, tmp_path / "ds", batches=present)
    with duckdb.connect() as con:
        absent = con.execute(
            f"SELECT count(*) FROM read_parquet('{world.fetch}') WHERE photo_id NOT IN "
            f"(SELECT photo_id FROM read_parquet({[str(p) for p in world.manifests(present)]}))"
        ).fetchone()[0]  # type: ignore[index]
    assert result.drops.not_downloaded == absent > 0
    assert {r["batch"] for r in index_rows(result)} <= set(present)
    assert [b.batch for b in result.batches] == present
    assert f"{absent:,} not downloaded yet" in summary_text(result.out_dir)


def test_no_manifests_yet_builds_an_empty_dataset_that_says_everything_is_missing(world: World, tmp_path: Path) -> None:
    empty = tmp_path / "no-manifests"
    empty.mkdir()
    with duckdb.connect() as con:
        options = TrainingOptions.model_validate({"mini_per_class": 5, "exports": {"webdataset": {}, "imagefolder": {}}})
        result = build_training_dataset(con, options, world.fetch, world.observations, empty, tmp_path / "ds")
    assert result.rows == 0 and result.drops.not_downloaded == result.fetch_rows > 0
    assert result.exports["webdataset"] == [] and len(result.exports["coco"]) == 4 and len(result.plots) == 5
    assert "100.0% missing" in summary_text(result)


def test_dimensions_missing_from_manifests_are_read_from_the_image_headers(tmp_path: Path) -> None:
    world = make_world(tmp_path / "w", species=3, with_dimensions=False)
    result = build(world, tmp_path / "ds")
    rows = index_rows(result)
    assert result.dimensions_read_from_files == len(rows) > 0
    assert all((r["width"], r["height"]) == (8, 8) for r in rows)
