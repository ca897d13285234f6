"""The archive downloaded from a URL lives on the store: uploaded once, reused by other machines."""

from __future__ import annotations

from pathlib import Path

import boto3

from inat_assets.testing.sample import SampleArchiveInfo
from inat_assets_tests.archive_server import ArchiveServerState, serve_archive
from inat_assets_tests.conftest import metadata, run_graph

ZIP = "gbif-observations-dwca.zip"


def _stored(bucket: str) -> dict[str, str]:
    objects = boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix="inat/archive/").get("Contents", [])
    return {o["Key"].rsplit("/", 1)[1]: o["ETag"] for o in objects}


def test_a_downloaded_archive_is_stored_once_and_a_second_machine_copies_it_from_the_store(
    sample_48: SampleArchiveInfo, s3_bucket: str, tmp_path: Path
) -> None:
    url = f"s3://{s3_bucket}/inat"
    state = ArchiveServerState(body=sample_48.path.read_bytes())
    with serve_archive(state) as source:
        first = run_graph(source, url, with_fetch=False, scratch_dir=str(tmp_path / "machine-a"))
        assert metadata(first, "dwca_archive")["origin"] == "downloaded"
        assert metadata(first, "dwca_archive")["path"] == f"{url}/archive/{ZIP}"
        stored = _stored(s3_bucket)
        assert set(stored) == {ZIP, f"{ZIP}.json"}  # no .partial, no lease left behind
        assert boto3.client("s3").get_object(Bucket=s3_bucket, Key=f"inat/archive/{ZIP}")["Body"].read() == state.body

        # Another machine (an empty scratch): the zip comes from the store, iNaturalist answers 304.
        requests = len(state.requests)
        second = run_graph(source, url, with_fetch=False, scratch_dir=str(tmp_path / "machine-b"))
        assert metadata(second, "dwca_archive")["origin"] == "not-modified"
        assert state.statuses[requests:] == [304] and state.requests[-1]["If-None-Match"] == '"v1"'
        assert _stored(s3_bucket) == stored  # nothing uploaded again
        assert (tmp_path / "machine-b" / "archive" / ZIP).read_bytes() == state.body
        rows = metadata(second, "observations_parquet")["dagster/row_count"]
        assert rows == metadata(first, "observations_parquet")["dagster/row_count"] == sample_48.observations_valid

        # A new version on the server replaces the stored one.
        state.etag = '"v2"'
        third = run_graph(source, url, with_fetch=False, scratch_dir=str(tmp_path / "machine-b"))
        assert metadata(third, "dwca_archive")["origin"] == "downloaded"
        assert _stored(s3_bucket)[f"{ZIP}.json"] != stored[f"{ZIP}.json"]
