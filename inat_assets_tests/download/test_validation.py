"""What the downloader accepts as a photo: complete images only, with their dimensions recorded."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from inat_assets.download import PhotoTask, run_download
from inat_assets.download.files import ImageDefect, ImageInfo, check_image, find_existing
from inat_assets.testing.mirror import MirrorServer, served_bytes
from inat_assets_tests.download.conftest import (
    HOST_A,
    HOST_B,
    IMAGE_BYTES,
    fast_config,
    files_in,
    manifest_rows,
)

IMAGES = Path(__file__).resolve().parents[1] / "fixtures" / "images"
REAL_FILES = ("base.jpg", "prog.jpg", "a.png", "a.gif", "lossy.webp", "lossless.webp", "alpha.webp")


@pytest.mark.parametrize("name", REAL_FILES)
def test_real_encoders_output_is_complete_with_its_dimensions(name: str) -> None:
    data = (IMAGES / name).read_bytes()
    assert check_image(data) == ImageInfo(name.rsplit(".", 1)[1], 37, 21)


@pytest.mark.parametrize("name", REAL_FILES)
def test_every_truncation_of_a_real_file_is_refused(name: str) -> None:
    data = (IMAGES / name).read_bytes()
    for cut in range(len(data)):
        result = check_image(data[:cut])
        assert result is None or (isinstance(result, ImageDefect) and result.truncated), (cut, result)


@pytest.mark.parametrize("name", ("base.jpg", "a.png", "a.gif"))
def test_trailing_zero_padding_is_accepted_other_trailing_bytes_are_not(name: str) -> None:
    data = (IMAGES / name).read_bytes()
    assert isinstance(check_image(data + bytes(1000)), ImageInfo)
    assert isinstance(check_image(data + b"\x01"), ImageDefect)


def test_three_byte_jpeg_signature_is_an_incomplete_jpeg() -> None:
    assert check_image(b"\xff\xd8\xff") == ImageDefect("incomplete JPEG: ends before its end-of-image marker", True)


def test_jpeg_header_then_garbage_is_corrupt() -> None:
    data = (IMAGES / "base.jpg").read_bytes()
    garbage = data[:20] + bytes(range(256)) * 4 + b"\xff\xd9"  # even with an end marker
    result = check_image(garbage)
    assert isinstance(result, ImageDefect) and not result.truncated
    assert result.reason.startswith("corrupt JPEG")


def test_webp_with_bytes_after_its_riff_container_is_corrupt() -> None:
    result = check_image((IMAGES / "lossy.webp").read_bytes() + b"junk")
    assert result == ImageDefect("corrupt WebP: 4 bytes after the RIFF container", False)


def test_png_whose_first_chunk_is_not_ihdr_is_corrupt() -> None:
    data = bytearray((IMAGES / "a.png").read_bytes())
    data[12:16] = b"tEXt"
    assert check_image(bytes(data)) == ImageDefect("corrupt PNG: the first chunk is not IHDR", False)


def test_incomplete_or_garbage_bodies_are_not_stored_as_ok(mirror: MirrorServer, tmp_path: Path) -> None:
    mirror.set_faults({1: ["stub"], 2: ["garbage"], 3: ["cut"], 4: ["cut", "ok"]})
    tasks = [PhotoTask(pid, mirror.url(pid)) for pid in (1, 2, 3, 4, 5)]
    summary = run_download(tasks, tmp_path, tmp_path / "m.parquet", fast_config(retries=2, try_other_host=False))
    rows = manifest_rows(tmp_path / "m.parquet")

    # Bytes that end early are retried (a cut transfer is the usual cause) and stay transient.
    assert rows[1]["status"] == "failed_transient" and rows[1]["attempts"] == 3
    assert rows[1]["error"] == "incomplete JPEG: ends before its end-of-image marker"
    assert rows[3]["status"] == "failed_transient"
    assert rows[3]["error"] == "incomplete JPEG: ends before its end-of-image marker"
    # A signature followed by garbage will not improve on a retry.
    assert rows[2]["status"] == "failed_permanent" and rows[2]["attempts"] == 1
    assert str(rows[2]["error"]).startswith("corrupt JPEG")
    assert rows[4]["status"] == "ok" and rows[4]["attempts"] == 2
    assert summary.ok == 2
    assert [p.name for p in files_in(tmp_path)] == ["4.jpg", "5.jpg"]
    for pid in (1, 2, 3):
        assert rows[pid]["width"] is None and rows[pid]["height"] is None and rows[pid]["path"] is None


def test_manifest_records_width_and_height_for_downloaded_and_cached_photos(
    mirror: MirrorServer, tmp_path: Path
) -> None:
    # The mirror's JPEGs are 8x8 pixels, its PNGs and GIFs 1x1.
    tasks = [PhotoTask(1, mirror.url(1)), PhotoTask(2, mirror.url(2, ext="png")),
             PhotoTask(3, mirror.url(3, ext="gif")), PhotoTask(4, mirror.url(4))]
    mirror.set_faults({4: ["404"]})
    run_download(tasks, tmp_path, tmp_path / "m.parquet", fast_config(try_other_host=False))
    rows = manifest_rows(tmp_path / "m.parquet")
    assert [(rows[p]["width"], rows[p]["height"]) for p in (1, 2, 3, 4)] == [(8, 8), (1, 1), (1, 1), (None, None)]

    run_download(tasks, tmp_path, tmp_path / "m2.parquet", fast_config(try_other_host=False),
                 previous_manifest=tmp_path / "m.parquet")
    again = manifest_rows(tmp_path / "m2.parquet")
    assert [again[p]["status"] for p in (1, 2, 3)] == ["cached"] * 3
    assert [(again[p]["width"], again[p]["height"]) for p in (1, 2, 3)] == [(8, 8), (1, 1), (1, 1)]


def test_rerun_refetches_a_truncated_file(mirror: MirrorServer, tmp_path: Path) -> None:
    tasks = [PhotoTask(pid, mirror.url(pid)) for pid in (1, 2, 3)]
    run_download(tasks, tmp_path, tmp_path / "m.parquet", fast_config())
    full = {pid: served_bytes(pid, "original", "jpg", IMAGE_BYTES) for pid in (2, 3)}
    half = len(full[2]) // 2
    (tmp_path / "2.jpg").write_bytes(full[2][:half])  # cut short, e.g. by a power loss

    summary = run_download(tasks, tmp_path, tmp_path / "m2.parquet", fast_config())  # no previous manifest
    assert (summary.cached, summary.ok) == (2, 1)
    assert (tmp_path / "2.jpg").read_bytes() == full[2]

    # The size the manifest recorded, but the end never reached the disk (zeros after a crash).
    (tmp_path / "3.jpg").write_bytes(full[3][:half] + bytes(len(full[3]) - half))
    summary = run_download(tasks, tmp_path, tmp_path / "m3.parquet", fast_config(),
                           previous_manifest=tmp_path / "m.parquet")
    assert (summary.cached, summary.ok) == (2, 1)
    assert (tmp_path / "3.jpg").read_bytes() == full[3]


def test_find_existing_reads_segments_beyond_its_first_read(tmp_path: Path) -> None:
    # The mirror's 200 KB JPEG has its frame header after 200 KB of comments: found with pread.
    data = served_bytes(7, "original", "jpg", 200_000)
    (tmp_path / "7.jpg").write_bytes(data)
    found = find_existing(str(tmp_path), 7, len(data))
    assert found is not None and (found.size, found.width, found.height) == (len(data), 8, 8)
    (tmp_path / "7.jpg").write_bytes(data[:-1])
    assert find_existing(str(tmp_path), 7) is None
    assert not (tmp_path / "7.jpg").exists()  # removed, so the download replaces it


def test_a_single_gzip_layer_is_decoded_and_stored(mirror: MirrorServer, tmp_path: Path) -> None:
    mirror.set_faults({1: ["gzip"], 2: ["encoded:br"], 3: ["encoded:gzip, gzip"]})
    tasks = [PhotoTask(pid, mirror.url(pid)) for pid in (1, 2, 3)]
    run_download(tasks, tmp_path, tmp_path / "m.parquet", fast_config(try_other_host=False))
    rows = manifest_rows(tmp_path / "m.parquet")
    assert rows[1]["status"] == "ok"
    assert (tmp_path / "1.jpg").read_bytes() == served_bytes(1, "original", "jpg", IMAGE_BYTES)
    assert rows[2]["status"] == "failed_permanent"
    assert rows[2]["error"] == "unsupported Content-Encoding 'br' (only gzip and deflate are decoded)"
    assert rows[3]["error"] == "unsupported Content-Encoding 'gzip, gzip' (stacked encodings are refused)"


def test_manifest_url_after_a_redirect_is_where_the_bytes_came_from(mirror: MirrorServer, tmp_path: Path) -> None:
    mirror.set_faults({5: [f"redirect:{mirror.url(5, host=HOST_B)}"]}, host=HOST_A)
    run_download([PhotoTask(5, mirror.url(5))], tmp_path, tmp_path / "m.parquet", fast_config())
    row = manifest_rows(tmp_path / "m.parquet")[5]
    assert row["status"] == "ok" and row["url"] == mirror.url(5, host=HOST_B)


@pytest.fixture
def umask() -> Iterator[None]:
    old = os.umask(0o027)
    yield
    os.umask(old)


def test_photos_and_manifest_follow_the_umask(mirror: MirrorServer, tmp_path: Path, umask: None) -> None:
    run_download([PhotoTask(1, mirror.url(1))], tmp_path, tmp_path / "m.parquet", fast_config())
    assert (tmp_path / "1.jpg").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "m.parquet").stat().st_mode & 0o777 == 0o640
