"""DownloadConfig.processes > 1: the same results, spread over worker processes."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from inat_assets.download import BatchFolders, HostLimits, PhotoTask, run_download
from inat_assets.download.processes import child_config
from inat_assets.testing.mirror import MirrorServer, served_bytes
from inat_assets_tests.download.conftest import HOST_A, IMAGE_BYTES, fast_config, files_in


def test_two_processes_download_everything_once(mirror: MirrorServer, tmp_path: Path) -> None:
    mirror.set_faults({7: ["404"], 8: ["503", "ok"]})
    ids = range(1, 301)
    tasks = (PhotoTask(pid, mirror.url(pid)) for pid in ids)
    seen = []
    summary = run_download(tasks, BatchFolders(tmp_path, 100), tmp_path / "m.parquet",
                           fast_config(processes=2, try_other_host=False), on_progress=seen.append,
                           progress_interval=0.1, total=300)
    assert summary.ok == 299 and summary.permanent_failed == 1 and summary.total == 300
    assert summary.top_errors == [("HTTP 404 Not Found", 1)]
    rows = pq.read_table(tmp_path / "m.parquet").to_pylist()
    assert sorted(r["photo_id"] for r in rows) == list(ids)
    assert all(mirror.hits(f"/photos/{pid}/original.jpg") == 1 for pid in ids if pid != 8)
    assert (tmp_path / "batch-000002" / "250.jpg").read_bytes() == served_bytes(250, "original", "jpg", IMAGE_BYTES)
    assert len(files_in(tmp_path)) == 299  # no part manifests or .part files left
    assert seen[-1].done == 300

    again = run_download([PhotoTask(pid, mirror.url(pid)) for pid in ids], BatchFolders(tmp_path, 100),
                         tmp_path / "m2.parquet", fast_config(processes=2, try_other_host=False),
                         previous_manifest=tmp_path / "m.parquet")
    assert again.cached == 299


def test_processes_need_a_picklable_destination(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="BatchFolders"):
        run_download([], lambda pid: tmp_path, tmp_path / "m.parquet", fast_config(processes=2))


def test_limits_are_shared_between_processes() -> None:
    config = fast_config(processes=4, concurrency=64, host_limits={HOST_A: HostLimits(8.0, 4000, None)})
    child = child_config(config)
    assert child.processes == 1 and child.concurrency == 16
    assert child.limits_for(HOST_A) == HostLimits(2.0, 1000, None)


def test_stale_parts_are_cleaned_by_the_parent_not_by_each_child(mirror: MirrorServer, tmp_path: Path) -> None:
    folder = tmp_path / "batch-000000"
    folder.mkdir()
    (folder / ".5.jpg.abcdef.part").write_bytes(b"half")
    ids = range(1, 401)
    summary = run_download([PhotoTask(pid, mirror.url(pid)) for pid in ids], BatchFolders(tmp_path, 1000),
                           tmp_path / "m.parquet", fast_config(processes=2, concurrency=16))
    assert summary.ok == 400
    assert [p.name for p in files_in(tmp_path)] == sorted(f"{pid}.jpg" for pid in ids)
