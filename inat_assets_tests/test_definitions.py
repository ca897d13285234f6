"""The Definitions load, with the asset keys, groups, kinds and lineage users rely on."""

from dagster import AssetKey

from inat_assets.definitions import defs


def test_definitions_load_with_expected_assets_and_lineage() -> None:
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert {"dwca_archive", "observations_parquet", "media_parquet", "fetch_parquet"} <= keys
    assert graph.get(AssetKey("observations_parquet")).parent_keys == {AssetKey("dwca_archive")}
    assert graph.get(AssetKey("media_parquet")).parent_keys == {AssetKey("dwca_archive")}
    assert graph.get(AssetKey("fetch_parquet")).parent_keys == {
        AssetKey("observations_parquet"),
        AssetKey("media_parquet"),
    }


def test_every_asset_has_group_kinds_and_description() -> None:
    for spec in defs.resolve_all_asset_specs():
        assert spec.group_name and spec.group_name != "default", spec.key
        assert spec.kinds, spec.key
        assert spec.description and len(spec.description) > 40, spec.key


def test_jobs_and_checks_are_defined() -> None:
    assert defs.resolve_job_def("fetch_list_job") is not None
    check_keys = {(k.asset_key.to_user_string(), k.name) for k in defs.resolve_asset_graph().asset_check_keys}
    assert ("observations_parquet", "unique_observation_ids") in check_keys
    assert ("fetch_parquet", "unique_photo_ids_with_http_urls") in check_keys
    assert ("media_parquet", "rejected_lines_under_share") in check_keys
