"""`inat-assets demo` with INAT_DATA_DIR=s3://bucket/prefix against the moto server, twice.

The issue's end-to-end test: every asset of the demo graph (archive, tables, fetch lists, every image
batch of both datasets, the training datasets) reads and writes the store, nothing lands in a local
folder named after the URL, and a second run downloads and rewrites no photo (counted on the server's
request log and by the objects' ETag and LastModified).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import boto3

import inat_assets
from inat_assets.storage import DataStore
from inat_assets.testing.s3 import S3Server
from inat_assets.training.report import load_result


def _objects(bucket: str, prefix: str) -> dict[str, tuple[str, object]]:
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"]: (o["ETag"], o["LastModified"]) for page in pages for o in page.get("Contents", [])}


def test_the_demo_runs_on_s3_and_a_second_run_rewrites_no_photo(
    s3_bucket: str, s3_env: S3Server, tmp_path: Path
) -> None:
    url = f"s3://{s3_bucket}/demo"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = {**os.environ, **s3_env.environment(), "INAT_DATA_DIR": url, "INAT_SCRATCH_DIR": str(tmp_path / "scratch"),
           # This checkout's package, whichever checkout the venv was installed from.
           "PYTHONPATH": str(Path(inat_assets.__file__).resolve().parents[1])}
    command = [str(Path(sys.executable).with_name("inat-assets")), "demo"]
    first = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    assert f"writing to {url}" in first.stdout and not list(cwd.iterdir())  # no local "s3:" folder
    check_lines = [line for line in first.stdout.splitlines() if line.startswith("check ")]
    assert len(check_lines) >= 5 and all(": passed" in line for line in check_lines), check_lines

    store = DataStore.from_setting(url)
    with store.connect() as con:
        plants = con.execute(f"SELECT count(*) FROM '{store.fetch_list('plants')}'").fetchone()[0]  # type: ignore[index]
        fungi = con.execute(f"SELECT count(*) FROM '{store.fetch_list('fungi_open')}'").fetchone()[0]  # type: ignore[index]
        statuses = dict(con.execute(
            f"SELECT status, count(*) FROM read_parquet('{url}/datasets/*/manifests/*.parquet') GROUP BY 1"
        ).fetchall())  # fmt: skip
    photos = _objects(s3_bucket, "demo/photos/")
    assert plants > 0 and fungi > 0
    assert len([k for k in photos if "/original/" in k]) == plants - 1  # one plant photo 404s on purpose
    assert len([k for k in photos if "/medium/" in k]) == fungi
    assert statuses == {"ok": plants + fungi - 1, "failed_permanent": 1}
    for name in ("plants", "fungi_open"):
        training = load_result(store.training_dir(name))
        assert training.rows > 0 and all(training.splits[s] > 0 for s in ("train", "val", "test")), name
    everything = _objects(s3_bucket, "demo/")
    assert not [k for k in everything if k.endswith(".part") or "/locks/" in k or k.endswith(".lock")]

    s3_env.start_recording()
    again = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    requests = s3_env.stop_recording()
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    assert "images: cached" in again.stdout and "images: ok" not in again.stdout
    assert _objects(s3_bucket, "demo/photos/") == photos  # same objects, same ETags, same LastModified
    writes = [f"{m} {p.split('?')[0]}" for m, p in requests if m in ("PUT", "POST", "DELETE")]
    assert writes and not [w for w in writes if "/photos/" in w]
    # (What a rerun of a batch reads from the store, one listing and a HEAD per photo, is pinned in
    # test_photos_on_store.py; here the training builds also read the photos for their exports.)
    assert not list(cwd.iterdir())
