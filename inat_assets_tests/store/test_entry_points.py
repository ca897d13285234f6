"""One seam for INAT_DATA_DIR: every entry point parses it through DataStore.from_setting / store_path.

Before it, `inat-assets demo` with INAT_DATA_DIR=s3://bucket/prefix wrote a local folder named `s3:`
and exited 0. Each test runs in an empty working directory and checks that no such folder appears:
a URL is either used as a store or refused with a message that says what to do.
"""

from __future__ import annotations

import io
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from inat_assets.cli import download_images
from inat_assets.cli.main import main
from inat_assets.cli.ui import demo_environment
from inat_assets.errors import StorageError
from inat_assets.instance import default_dagster_home
from inat_assets.resources import DataStoreResource
from inat_assets.storage import DataStore, store_path
from inat_assets.store import Location
from inat_assets.testing.mirror import serve_mirror, served_bytes


@pytest.fixture
def empty_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    for name in ("INAT_DATA_DIR", "DAGSTER_HOME", "INAT_SCRATCH_DIR"):
        monkeypatch.delenv(name, raising=False)
    return cwd


def _nothing_local(cwd: Path) -> None:
    assert not list(cwd.iterdir()), f"an entry point wrote into the working directory: {list(cwd.iterdir())}"


def test_the_one_parse_gives_locations_for_urls_paths_for_folders_and_refuses_the_rest(empty_cwd: Path, s3_env) -> None:
    store = DataStore.from_setting("s3://some-bucket/a/prefix/")
    assert isinstance(store.root, Location) and store.url == "s3://some-bucket/a/prefix" and store.is_remote
    assert str(store.fetch_list("plants")) == "s3://some-bucket/a/prefix/datasets/plants/fetch.parquet"
    assert str(store.manifest("plants", "batch-000001")).endswith("/datasets/plants/manifests/batch-000001.parquet")
    assert store.scratch_dir("duckdb").is_dir() and not str(store.scratch_dir()).startswith(str(empty_cwd))
    assert DataStore.from_setting("file:///tmp/x").root == Path("/tmp/x")
    assert DataStore.from_setting("rel").root == empty_cwd / "rel"
    with pytest.raises(TypeError):  # a Location is never silently taken for a local path
        open(store.table("media"), "rb")  # type: ignore[call-overload]  # noqa: SIM115
    for bad, why in (("https://example.org/data", "read-only"), ("s3://", "names no bucket"),
                     ("nosuchproto://b/p", "no filesystem for nosuchproto://")):  # fmt: skip
        with pytest.raises(StorageError, match=why):
            DataStore.from_setting(bad)
    with pytest.raises(StorageError, match="read-only"):
        DataStoreResource(data_dir="http://example.org/x").get()
    assert isinstance(DataStoreResource(data_dir="s3://b/p").get().root, Location)
    _nothing_local(empty_cwd)


def test_demo_with_a_store_url_uses_it_or_refuses_never_a_local_s3_folder(
    empty_cwd: Path, s3_env, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("INAT_DATA_DIR", "s3://no-such-bucket-here/prefix")
    assert main(["demo"]) == 2
    err = capsys.readouterr().err
    assert "bucket 'no-such-bucket-here' cannot be used" in err and "AWS_ENDPOINT_URL" in err
    assert main(["demo", "--data-dir", "https://example.org/x"]) == 2
    assert "read-only" in capsys.readouterr().err
    _nothing_local(empty_cwd)


def test_env_ui_and_batches_say_dagster_home_must_be_set_for_a_store(
    empty_cwd: Path, s3_bucket: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    url = f"s3://{s3_bucket}/inat"
    monkeypatch.setenv("INAT_DATA_DIR", url)
    for argv in (["env"], ["ui", "--demo", "--port", "1"], ["batches"]):
        assert main(argv) == 2, argv
        assert "set DAGSTER_HOME" in capsys.readouterr().err
    with pytest.raises(StorageError, match="set DAGSTER_HOME"):
        default_dagster_home({"INAT_DATA_DIR": url})
    _nothing_local(empty_cwd)
    # With DAGSTER_HOME given, the UI's demo environment keeps the URL as a URL.
    home = tmp_path / "home"
    with demo_environment({"INAT_DATA_DIR": url + "/", "DAGSTER_HOME": str(home), "INAT_PHOTO_MIRROR": "http://127.0.0.1:9"}) as env:
        assert env["INAT_DATA_DIR"] == url and env["DAGSTER_HOME"] == str(home)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    assert main(["env"]) == 0 and str(home) in capsys.readouterr().out
    assert main(["batches"]) == 0 and "no batches yet" in capsys.readouterr().out
    _nothing_local(empty_cwd)


def test_photos_and_report_read_the_store(
    empty_cwd: Path, s3_bucket: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"s3://{s3_bucket}/inat"
    s3 = boto3.client("s3")
    s3.put_object(Bucket=s3_bucket, Key="inat/photos/medium/batch-000000/17.jpg", Body=b"\xff\xd8\xff" + b"0" * 97)
    assert main(["photos", "unused", "--data-dir", url]) == 0
    out = capsys.readouterr().out
    assert "photos/medium: 1 unused photos" in out and f"in {url}/photos" in out
    assert main(["photos", "unused", "--data-dir", url, "--delete"]) == 0 and "deleted 1 photos" in capsys.readouterr().out
    assert "Contents" not in s3.list_objects_v2(Bucket=s3_bucket, Prefix="inat/photos/")
    monkeypatch.setenv("INAT_DATA_DIR", url)
    assert main(["report", "plants"]) == 1
    assert f"{url}/datasets/plants/training has no summary.json" in capsys.readouterr().err
    _nothing_local(empty_cwd)


def test_download_images_reads_and_writes_the_store(
    empty_cwd: Path, s3_bucket: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s3 = boto3.client("s3")
    with serve_mirror(("127.0.0.1",)) as mirror:
        ids = [1_000_001, 1_000_002, 2_500_003]
        table = pa.table({"photo_id": ids, "url": [mirror.url(i) for i in ids]})
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        s3.put_object(Bucket=s3_bucket, Key="lists/fetch.parquet", Body=buffer.getvalue())
        fetch, out = f"s3://{s3_bucket}/lists/fetch.parquet", f"s3://{s3_bucket}/photos"
        argv = ["--parquet", fetch, "--output", out, "--batch-span", "1000000", "--allow-host", "127.0.0.1:*", "--quiet"]
        assert download_images.main(argv) == 0
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket, Prefix="photos/")["Contents"]}
        assert keys == {"photos/batches.json", "photos/manifest.parquet", "photos/batch-000001/1000001.jpg",
                        "photos/batch-000001/1000002.jpg", "photos/batch-000002/2500003.jpg"}  # fmt: skip
        assert s3.get_object(Bucket=s3_bucket, Key="photos/batch-000002/2500003.jpg")["Body"].read() == served_bytes(
            2_500_003, "original", "jpg"
        )
        hits = mirror.total_hits
        assert download_images.main(argv) == 0 and mirror.total_hits == hits  # the rerun finds them on the store
    assert "cached 3" in capsys.readouterr().err
    assert download_images.main(["--parquet", f"s3://{s3_bucket}/lists/nothing.parquet", "--output", str(tmp_path)]) == 2
    assert "nothing.parquet: no such file" in capsys.readouterr().err
    assert download_images.main(["--parquet", fetch, "--output", "https://example.org/x"]) == 2
    assert "read-only" in capsys.readouterr().err
    assert isinstance(store_path(fetch), Location)
    _nothing_local(empty_cwd)
