"""dwca_archive: local paths in place, URLs downloaded with resume and conditional requests, clear errors."""

from __future__ import annotations

import re
import socket
import zipfile
from pathlib import Path

import pytest

from inat_assets.dwca.archive import ArchiveError, inspect_archive, iter_member_bytes
from inat_assets.dwca.source import resolve_archive
from inat_assets.testing.sample import SampleArchiveInfo
from inat_assets_tests.archive_server import ArchiveServerState, serve_archive
from inat_assets_tests.conftest import metadata, run_graph


def test_local_archive_is_used_in_place(sample_48: SampleArchiveInfo, tmp_path: Path) -> None:
    result = run_graph(sample_48.path, tmp_path / "data", with_fetch=False)
    meta = metadata(result, "dwca_archive")
    assert meta["origin"] == "local" and meta["path"] == str(sample_48.path)
    assert not (tmp_path / "data" / "archive").exists()
    assert meta["observations_member"] == "observations.csv" and meta["media_member"] == "media.csv"
    assert "meta.xml" in meta["members"]


def test_url_download_resume_and_not_modified(sample_48: SampleArchiveInfo, tmp_path: Path) -> None:
    body = sample_48.path.read_bytes()
    state = ArchiveServerState(body=body, truncate_next=1)
    with serve_archive(state) as url:
        first = resolve_archive(url, tmp_path, backoff_seconds=0.01)
        # The first response was cut in half; the retry resumed with Range + If-Range.
        assert first.origin == "resumed" and first.path.read_bytes() == body
        assert state.statuses[:2] == [200, 206]
        assert state.requests[1]["Range"] == f"bytes={len(body) // 2}-" and state.requests[1]["If-Range"] == '"v1"'
        assert not list(tmp_path.glob("*.partial"))
        # Unchanged on the server: a conditional request, no body.
        again = resolve_archive(url, tmp_path)
        assert again.origin == "not-modified" and state.statuses[-1] == 304
        assert state.requests[-1]["If-None-Match"] == '"v1"'
        # Changed on the server: downloaded again.
        state.etag = '"v2"'
        assert resolve_archive(url, tmp_path).origin == "downloaded"


def test_busy_server_is_retried_and_a_complete_partial_is_finished_without_refetching(
    sample_48: SampleArchiveInfo, tmp_path: Path
) -> None:
    body = sample_48.path.read_bytes()
    state = ArchiveServerState(body=body, unavailable_next=2)
    with serve_archive(state) as url:
        assert resolve_archive(url, tmp_path / "a", backoff_seconds=0.01).path.read_bytes() == body
        assert state.statuses == [503, 503, 200]
        # A process killed after the last byte but before the rename left a complete .partial.
        final = tmp_path / "a" / "gbif-observations-dwca.zip"
        final.rename(tmp_path / "a" / "gbif-observations-dwca.zip.partial")
        (tmp_path / "a" / "gbif-observations-dwca.zip.json").rename(
            tmp_path / "a" / "gbif-observations-dwca.zip.partial.json"
        )
        requests = len(state.requests)
        again = resolve_archive(url, tmp_path / "a")
        assert again.origin == "resumed" and again.path.read_bytes() == body
        assert len(state.requests) == requests  # nothing was fetched again


def test_the_graph_downloads_a_url_source(sample_48: SampleArchiveInfo, tmp_path: Path) -> None:
    with serve_archive(ArchiveServerState(body=sample_48.path.read_bytes())) as url:
        result = run_graph(url, tmp_path / "data", with_fetch=False)
    meta = metadata(result, "dwca_archive")
    assert meta["origin"] == "downloaded" and meta["etag"] == '"v1"'
    assert (tmp_path / "data" / "archive" / "gbif-observations-dwca.zip").is_file()
    assert metadata(result, "observations_parquet")["dagster/row_count"] == sample_48.observations_valid


def test_truncated_download_that_never_completes_is_a_clear_error(sample_48: SampleArchiveInfo, tmp_path: Path) -> None:
    state = ArchiveServerState(body=sample_48.path.read_bytes(), truncate_next=100)
    with serve_archive(state) as url, pytest.raises(ArchiveError, match="rerun to resume"):
        resolve_archive(url, tmp_path, attempts=2, backoff_seconds=0.01)
    assert not (tmp_path / "gbif-observations-dwca.zip").exists()  # never a partial file under the final name


def test_unreachable_url_and_http_errors(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ArchiveError, match=re.escape(f"127.0.0.1:{port}")):
        resolve_archive(f"http://127.0.0.1:{port}/gbif-observations-dwca.zip", tmp_path, attempts=1)
    with serve_archive(ArchiveServerState(body=b"")) as url, pytest.raises(ArchiveError, match="HTTP 404"):
        resolve_archive(url.replace("gbif-observations-dwca.zip", "missing.zip"), tmp_path)


def test_not_a_zip_missing_member_and_missing_file(tmp_path: Path) -> None:
    html = tmp_path / "page.zip"
    html.write_text("<html>login required</html>")
    with pytest.raises(ArchiveError, match="not a valid zip"):
        inspect_archive(html)
    no_media = tmp_path / "no_media.zip"
    with zipfile.ZipFile(no_media, "w") as zf:
        zf.writestr("observations.csv", "id,taxonID,scientificName,kingdom\n1,2,x,Plantae\n")
    with pytest.raises(ArchiveError, match=r"no member 'media\.csv'"):
        inspect_archive(no_media)
    with pytest.raises(ArchiveError, match="no such file"):
        resolve_archive(str(tmp_path / "absent.zip"), tmp_path)


def test_failed_run_names_the_problem(tmp_path: Path) -> None:
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    result = run_graph(broken, tmp_path / "data", with_fetch=False, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "not a valid zip" in str(failure.event_specific_data.error)


@pytest.mark.parametrize("read_mode", ["stream", "extract"])
def test_damaged_member_is_detected(sample_48: SampleArchiveInfo, tmp_path: Path, read_mode: str) -> None:
    data = bytearray(sample_48.path.read_bytes())
    with zipfile.ZipFile(sample_48.path) as zf:
        info = zf.getinfo("observations.csv")
    middle = info.header_offset + 30 + len(info.filename) + info.compress_size // 2
    data[middle] ^= 0xFF
    damaged = tmp_path / "damaged.zip"
    damaged.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match="is damaged"):
        for _ in iter_member_bytes(damaged, "observations.csv"):
            pass
    result = run_graph(damaged, tmp_path / "data", with_fetch=False, raise_on_error=False, csv_read_mode=read_mode)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "is damaged" in str(failure.event_specific_data.error)
    assert not (tmp_path / "data" / "observations.parquet").exists()
    assert not list((tmp_path / "data" / "tmp").rglob("*.csv"))  # no pipe or extracted member left behind
