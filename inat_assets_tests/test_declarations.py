"""Dataset declarations: every mistake fails at load time naming the dataset and the field."""

from __future__ import annotations

import pytest
from dagster import AssetKey

from inat_assets.components import InatDataset, dataset_definitions

GOOD = """
name: {name}
kingdom: [Fungi]
license: [CC0, cc-by]
photo_size: medium
event_date_from: "2020-01-01"
event_date_to: "2024-12-31"
where: o.coordinateUncertaintyInMeters < 100
training:
  label_rank: genus
  splits:
    train: 0.7
    val: 0.2
    test: 0.1
  exports:
    webdataset:
      shard_max_photos: 100
"""


def test_a_valid_declaration_resolves_to_the_fetch_filters() -> None:
    declared = InatDataset.resolve_from_yaml(GOOD.format(name="fungi_cc"))
    filters = declared.filters()
    assert filters.kingdom == ["Fungi"] and filters.photo_size == "medium" and filters.license == ["CC0", "cc-by"]
    assert (filters.event_date_from, filters.event_date_to) == ("2020-01-01", "2024-12-31")
    assert declared.training.label_rank == "genus" and declared.training.splits.val == 0.2
    assert declared.training.exports.webdataset is not None and declared.training.exports.webdataset.shard_max_photos == 100
    built = dataset_definitions(declared)
    assert {a.key for a in built.assets or []} == {  # type: ignore[union-attr]
        AssetKey(["fungi_cc", "fetch_parquet"]),
        AssetKey(["fungi_cc", "image_batches"]),
        AssetKey(["fungi_cc", "training_dataset"]),
    }


@pytest.mark.parametrize(
    ("field", "yaml_value", "message"),
    [
        ("kingdom", "[Plantea]", "kingdom.0"),
        ("event_date_from", '"2020-13-01"', "event_date_from"),
        ("event_date_to", '"01/02/2020"', "event_date_to"),
        ("photo_size", "huge", "photo_size"),
        ("where", '"1=1; DROP TABLE x"', "where"),
        ("where", '"o.a = (SELECT 1)"', "where"),
        ("license", "[all rights reserved]", "license"),
        ("country_code", "[FRA]", "country_code"),
        ("captive", "zoo", "captive"),
        ("taxon_rank", "[specie]", "taxon_rank.0"),
        ("taxon_id", "[not-a-number]", "taxon_id"),
        ("training", "{splits: {val: 0.9}}", "training.splits: .*train \\+ val \\+ test must be 1"),
        ("training", "{exports: {tfrecord: {}}}", "training.exports.tfrecord"),
        ("training", "{label_rank: subspecies}", "training.label_rank"),
        ("training", "{caps: {min_per_class: 0}}", "training.caps.min_per_class"),
        ("training", "{licences: {preset: anything}}", "training.licences.preset"),
    ],
)
def test_an_invalid_field_fails_naming_the_dataset_and_the_field(field: str, yaml_value: str, message: str) -> None:
    with pytest.raises(Exception, match=r"(?s)dataset 'broken'.*" + message):
        InatDataset.resolve_from_yaml(f"name: broken\n{field}: {yaml_value}\n")


def test_dates_out_of_order_and_bad_names_are_refused() -> None:
    with pytest.raises(Exception, match=r"dataset 'late'.*event_date_from 2024-01-01 is after"):
        InatDataset(name="late", event_date_from="2024-01-01", event_date_to="2020-01-01")
    with pytest.raises(Exception, match=r"dataset 'Plants-2'.*name"):
        InatDataset(name="Plants-2")


def test_an_unknown_key_is_refused() -> None:
    with pytest.raises(Exception, match="kingdon"):
        InatDataset.resolve_from_yaml("name: typo\nkingdon: [Plantae]\n")


def test_the_code_version_follows_the_selection_not_the_description_or_training() -> None:
    base = InatDataset(name="d", kingdom=["Plantae"])
    assert InatDataset(name="d", kingdom=["Plantae"], description="x").selection_version() == base.selection_version()
    reseeded = InatDataset(name="d", kingdom=["Plantae"], training={"splits": {"seed": 3}})
    assert reseeded.selection_version() == base.selection_version()
    assert reseeded.training_version() != base.training_version()
    assert InatDataset(name="d", kingdom=["Fungi"]).selection_version() != base.selection_version()
    assert InatDataset(name="d", kingdom=["Plantae"], photo_size="small").selection_version() != base.selection_version()
