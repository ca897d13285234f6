"""The loaded Definitions: every asset key, group, kinds, partitions and deps users rely on."""

from dagster import AssetKey

from inat_assets.definitions import defs

# What `dagster dev` shows for the shipped declarations (plants, fungi_open). A new declared
# dataset or a renamed asset must change this list on purpose.
EXPECTED_GRAPH = [
    ("dwca_archive", "archive", ["http", "zip"], None, ["dwca_source"]),
    ("dwca_source", "archive", ["file", "http"], None, []),
    ("fungi_open/fetch_parquet", "fungi_open", ["duckdb", "parquet"], None, ["media_parquet", "observations_parquet"]),
    ("fungi_open/image_batches", "fungi_open", ["parquet", "python"], "fungi_open_image_batches", ["fungi_open/fetch_parquet"]),
    ("fungi_open/training_dataset", "fungi_open", ["duckdb", "parquet"], None,
     ["fungi_open/fetch_parquet", "fungi_open/image_batches", "observations_parquet"]),
    ("media_parquet", "tables", ["duckdb", "parquet"], None, ["dwca_archive"]),
    ("observations_parquet", "tables", ["duckdb", "parquet"], None, ["dwca_archive"]),
    ("plants/fetch_parquet", "plants", ["duckdb", "parquet"], None, ["media_parquet", "observations_parquet"]),
    ("plants/image_batches", "plants", ["parquet", "python"], "plants_image_batches", ["plants/fetch_parquet"]),
    ("plants/training_dataset", "plants", ["duckdb", "parquet"], None,
     ["observations_parquet", "plants/fetch_parquet", "plants/image_batches"]),
]  # fmt: skip


def test_loaded_definitions_match_the_asset_graph_snapshot() -> None:
    graph = defs.resolve_asset_graph()
    actual = []
    for key in sorted(graph.get_all_asset_keys()):
        node = graph.get(key)
        partitions = getattr(node.partitions_def, "name", None)
        parents = sorted(p.to_user_string() for p in node.parent_keys)
        actual.append((key.to_user_string(), node.group_name, sorted(node.kinds), partitions, parents))
    assert actual == EXPECTED_GRAPH


def test_every_asset_has_group_kinds_and_a_description_without_html() -> None:
    for spec in defs.resolve_all_asset_specs():
        assert spec.group_name and spec.group_name != "default", spec.key
        assert spec.kinds, spec.key
        assert spec.description and len(spec.description) > 40, spec.key
        # The UI renders descriptions as HTML: <batch> would vanish, &lt; would show as is.
        assert not any(c in spec.description for c in "<>&"), spec.key


def test_dataset_assets_carry_the_declaration_hash_and_column_schema() -> None:
    graph = defs.resolve_asset_graph()
    plants = graph.get(AssetKey(["plants", "fetch_parquet"]))
    fungi = graph.get(AssetKey(["fungi_open", "fetch_parquet"]))
    assert plants.code_version and fungi.code_version and plants.code_version != fungi.code_version
    assert graph.get(AssetKey(["plants", "image_batches"])).code_version == plants.code_version
    # The training dataset's code version is its own (the training section's hash), per dataset.
    plants_training = graph.get(AssetKey(["plants", "training_dataset"])).code_version
    fungi_training = graph.get(AssetKey(["fungi_open", "training_dataset"])).code_version
    assert plants_training and fungi_training and len({plants_training, fungi_training, plants.code_version}) == 3
    spec = next(s for s in defs.resolve_all_asset_specs() if s.key == AssetKey(["plants", "fetch_parquet"]))
    columns = [c.name for c in spec.metadata["dagster/column_schema"].columns]
    assert columns[:3] == ["photo_id", "observation_id", "url"]


def test_jobs_checks_and_resources_are_defined() -> None:
    assert defs.resolve_job_def("tables_job") is not None
    assert defs.resolve_job_def("plants_image_batches_job") is not None
    assert defs.resolve_job_def("fungi_open_image_batches_job") is not None
    check_keys = {(k.asset_key.to_user_string(), k.name) for k in defs.resolve_asset_graph().asset_check_keys}
    assert ("observations_parquet", "unique_observation_ids") in check_keys
    assert ("plants/fetch_parquet", "unique_photo_ids_with_http_urls") in check_keys
    assert ("fungi_open/fetch_parquet", "unique_photo_ids_with_http_urls") in check_keys
    assert ("media_parquet", "rejected_lines_under_share") in check_keys
    assert set(defs.resources or {}) == {"store", "dwca", "duckdb", "downloader"}
