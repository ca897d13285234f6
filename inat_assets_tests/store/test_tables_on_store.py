"""The archive's tables, their rejects, the fetch lists, batches.json and outdated_batches.json on s3://."""

from __future__ import annotations

import json
import os
from pathlib import Path

import boto3
import duckdb
import pytest
from dagster import DagsterInstance

from inat_assets.storage import DataStore
from inat_assets.testing.sample import SampleArchiveInfo
from inat_assets_tests.conftest import checks, metadata, run_graph


def _keys(bucket: str, prefix: str) -> dict[str, dict]:
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"][len(prefix):]: o for page in pages for o in page.get("Contents", [])}


def _rows(con: duckdb.DuckDBPyConnection, location: object, order: str) -> list[tuple]:
    return con.execute(f"SELECT * FROM read_parquet('{location}') ORDER BY {order}").fetchall()


def test_tables_rejects_and_fetch_list_are_written_to_the_store_as_on_disk(
    sample_48: SampleArchiveInfo, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a store URL taken for a path would show up here as a folder named "s3:"
    url = f"s3://{s3_bucket}/inat"
    on_store = run_graph(sample_48.path, url, scratch_dir=str(tmp_path / "scratch"))
    local = run_graph(sample_48.path, tmp_path / "local")

    keys = _keys(s3_bucket, "inat/")
    assert {
        "observations.parquet", "media.parquet", "rejects/observations.parquet", "rejects/media.parquet",
        "batches.json", "datasets/plants/fetch.parquet", "datasets/plants/outdated_batches.json",
    } <= set(keys)  # fmt: skip
    # Nothing half-written on the store (staged files stay in local scratch), nothing local named like the URL.
    assert not [k for k in keys if k.endswith(".part") or "/." in k]
    assert not (tmp_path / "s3:").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["local", "scratch"]
    assert not list((tmp_path / "scratch" / "staging").iterdir())  # staged files are removed once uploaded

    for asset in ("observations_parquet", "media_parquet", "plants/fetch_parquet"):
        remote, disk = metadata(on_store, asset), metadata(local, asset)
        assert str(remote["path"]).startswith(f"{url}/") and remote["dagster/row_count"] == disk["dagster/row_count"]
        assert remote["dagster/column_schema"] == disk["dagster/column_schema"]
    assert checks(on_store) == checks(local)  # the same verdicts, read from the store
    assert metadata(on_store, "plants/fetch_parquet")["batches"] == metadata(local, "plants/fetch_parquet")["batches"]

    store = DataStore.from_setting(url)
    with store.connect() as con:
        for name, order in (("observations", "id"), ("media", "id, catalogNumber")):
            assert _rows(con, store.table(name), order) == _rows(con, tmp_path / "local" / f"{name}.parquet", order)
            assert _rows(con, store.rejects(name), "line") == _rows(con, tmp_path / "local" / "rejects" / f"{name}.parquet", "line")
        assert _rows(con, store.fetch_list("plants"), "photo_id") == _rows(
            con, tmp_path / "local" / "datasets" / "plants" / "fetch.parquet", "photo_id"
        )
    assert json.loads(store.batch_state().read_text()) == json.loads((tmp_path / "local" / "batches.json").read_text())


def test_a_second_fetch_list_keeps_the_stored_span_and_lists_no_outdated_batch(
    sample_48: SampleArchiveInfo, s3_bucket: str, tmp_path: Path
) -> None:
    url = f"s3://{s3_bucket}/inat"
    instance = DagsterInstance.ephemeral()
    first = metadata(
        run_graph(sample_48.path, url, batch_span=700, scratch_dir=str(tmp_path), instance=instance), "plants/fetch_parquet"
    )
    before = _keys(s3_bucket, "inat/")["batches.json"]
    second = metadata(run_graph(sample_48.path, url, scratch_dir=str(tmp_path), instance=instance), "plants/fetch_parquet")
    assert first["batch_span"] == second["batch_span"] == 700 and second["new_batches"] == 0
    assert second["outdated_batches"] == 0
    after = _keys(s3_bucket, "inat/")
    assert after["batches.json"]["ETag"] == before["ETag"]  # recorded once, never rewritten
    assert "locks/" not in "".join(after)  # the span's lease was released
    refused = run_graph(sample_48.path, url, batch_span=300, raise_on_error=False, scratch_dir=str(tmp_path))
    assert not refused.success
    assert "existing image batches use span 700" in os.linesep.join(
        e.event_specific_data.error.to_string() for e in refused.all_events if e.is_step_failure  # type: ignore[union-attr]
    )
