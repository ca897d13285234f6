"""inat_assets.photos: one size rewrite for Python and SQL, one batch key rule, one batch folder rule."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from inat_assets.batches import nice_span, plan_batches
from inat_assets.cli.download_images import build_parser, main
from inat_assets.download.config import batch_key as config_batch_key
from inat_assets.download.processes import BatchFolders as ProcessesBatchFolders
from inat_assets.dwca.fetch_list import PHOTO_SIZES as FETCH_LIST_SIZES
from inat_assets.errors import BatchError
from inat_assets.photos import (
    PHOTO_SIZES,
    BatchFolders,
    PhotoSize,
    batch_key,
    batch_range,
    with_size,
    with_size_sql,
)
from inat_assets.testing.mirror import MirrorServer
from inat_assets_tests.download.conftest import ANY_PORT_A, ANY_PORT_B, files_in

# (URL, the URL at size medium). The SQL rewrite before photos.py left the query-string cases alone.
TRICKY_URLS = [
    ("https://a.org/photos/1/original.jpg", "https://a.org/photos/1/medium.jpg"),
    ("https://a.org/photos/1/original.jpeg?1567", "https://a.org/photos/1/medium.jpeg?1567"),
    ("https://a.org/photos/1/original.JPG#frag", "https://a.org/photos/1/medium.JPG#frag"),
    ("https://a.org/photos/1/original.png?x=1#y", "https://a.org/photos/1/medium.png?x=1#y"),
    ("https://x.org/original/photos/1/original.JPG", "https://x.org/original/photos/1/medium.JPG"),
    ("https://a.org/photos/1/original.jpg?next=/photos/2/original.png",
     "https://a.org/photos/1/medium.jpg?next=/photos/2/original.png"),
    ("https://a.org/p/original.jpg#/original.png", "https://a.org/p/medium.jpg#/original.png"),
    ("https://a.org/%C3%A9/original.jpg", "https://a.org/%C3%A9/medium.jpg"),
    ("https://a.org/é/original.jpg?é", "https://a.org/é/medium.jpg?é"),
    # Left alone: not a path segment "original.<ext>" at the end of the path.
    ("https://farm.example/abc_original.jpg", "https://farm.example/abc_original.jpg"),
    ("https://a.org/photos/1/original?x=.jpg", "https://a.org/photos/1/original?x=.jpg"),
    ("https://a.org/photos/1/original.jpg/more", "https://a.org/photos/1/original.jpg/more"),
    ("https://a.org/photos/1/ORIGINAL.jpg", "https://a.org/photos/1/ORIGINAL.jpg"),
    ("https://a.org/p/original.tar.gz", "https://a.org/p/original.tar.gz"),
    ("https://a.org/p/original.jpg\nx", "https://a.org/p/original.jpg\nx"),
    ("https://a.org/p/original.jpg\n", "https://a.org/p/original.jpg\n"),
    ("https://a.org/p/x?q=/original.png", "https://a.org/p/x?q=/original.png"),
    ("https://a.org/p/x#/original.png", "https://a.org/p/x#/original.png"),
    ("https://a.org/p/original.jpg?a\nb", "https://a.org/p/medium.jpg?a\nb"),
    ("", ""),
]  # fmt: skip


def test_size_rewrite_python_and_sql_agree_on_tricky_urls() -> None:
    with duckdb.connect() as con:
        con.execute("CREATE TABLE u AS SELECT * FROM (VALUES " + ", ".join(["(?, ?)"] * len(TRICKY_URLS)) + ") t(i, url)",
                    [v for i, (url, _) in enumerate(TRICKY_URLS) for v in (i, url)])
        for size in PhotoSize:
            sql = dict(con.execute(f"SELECT i, {with_size_sql('url', size)} FROM u").fetchall())
            for i, (url, medium) in enumerate(TRICKY_URLS):
                expected = url if size is PhotoSize.ORIGINAL else medium.replace("/medium.", f"/{size}.", 1)
                if url == medium:  # not rewritable: unchanged at every size
                    expected = url
                assert with_size(url, size) == expected, (url, size)
                assert sql[i] == expected, (url, size)


def test_photo_sizes_are_listed_once() -> None:
    assert PHOTO_SIZES == ("original", "large", "medium", "small", "thumb", "square")
    assert FETCH_LIST_SIZES is PHOTO_SIZES
    size_choices = next(a.choices for a in build_parser()._actions if a.dest == "size")
    assert tuple(size_choices) == PHOTO_SIZES
    with pytest.raises(ValueError, match="original, large, medium, small, thumb, square"):
        with_size("https://a.org/photos/1/original.jpg", "huge")


def test_batch_key_and_range_are_one_rule() -> None:
    assert batch_key(50027543, 50_000) == "batch-001000" == config_batch_key(50027543, 50_000)
    assert batch_range("batch-001000", 50_000) == (50_000_000, 50_050_000)
    for photo_id in (0, 1, 49_999, 50_000, 123_456_789):
        lo, hi = batch_range(batch_key(photo_id, 2_000), 2_000)
        assert lo <= photo_id < hi
    assert batch_key(10**9 * 7, 1) == "batch-7000000000"  # more than six digits still parse
    assert batch_range("batch-7000000000", 1) == (7 * 10**9, 7 * 10**9 + 1)
    for bad in ("batch-12", "batch-00001x", "images/batch-000001", "batch-000001/"):
        with pytest.raises(BatchError):
            batch_range(bad, 10)
    assert ProcessesBatchFolders is BatchFolders
    assert BatchFolders(Path("/r"), 100)(250) == Path("/r/batch-000002")


def _fetch_list(path: Path, mirror: MirrorServer, ids: list[int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"photo_id": ids, "url": [mirror.url(pid) for pid in ids]}), path)
    return path


def _args(parquet: Path, output: Path, *extra: str) -> list[str]:
    return ["--parquet", str(parquet), "--output", str(output), "--allow-host", ANY_PORT_A, "--allow-host", ANY_PORT_B,
            "--quiet", "--retries", "1", *extra]


def test_download_images_and_image_batches_use_the_same_batch_folders(
    mirror: MirrorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: download-images used 50,000 ids per folder whatever the data dir's batches.json said,
    so one photo landed in different folders depending on the tool."""
    monkeypatch.delenv("INAT_ALLOWED_HOSTS", raising=False)
    ids = [5, 1_999, 2_000, 4_100, 9_999, 150_001]
    data = tmp_path / "data"
    fetch = _fetch_list(data / "datasets" / "plants" / "fetch.parquet", mirror, ids)  # a dataset's list
    with duckdb.connect() as con:
        plan = plan_batches(con, fetch, data / "batches.json", requested_span=2_000)
    out = tmp_path / "out"
    assert main(_args(fetch, out)) == 0
    folders = sorted({p.parent.name for p in files_in(out)})
    assert folders == plan.keys == sorted({batch_key(pid, 2_000) for pid in ids})
    assert json.loads((out / "batches.json").read_text()) == {"span": 2_000}
    # A later run on the same output keeps its span, and refuses a different one (exit 2).
    assert main(_args(fetch, out, "--batch-span", "2000")) == 0
    assert main(_args(fetch, out, "--batch-span", "5000")) == 2


def test_download_images_default_span_is_recorded(mirror: MirrorServer, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """No batches.json anywhere: about 50,000 photos per folder (the image_batches default), recorded."""
    monkeypatch.delenv("INAT_ALLOWED_HOSTS", raising=False)
    ids = [10, 20, 30]
    fetch = _fetch_list(tmp_path / "in" / "list.parquet", mirror, ids)
    out = tmp_path / "out"
    assert main(_args(fetch, out)) == 0
    span = json.loads((out / "batches.json").read_text())["span"]
    assert span == nice_span(3, 10, 30)  # the same default as image_batches
    assert sorted({p.parent.name for p in files_in(out)}) == ["batch-000000"]
