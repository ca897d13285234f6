"""DownloadConfig.processes > 1: the same results, spread over worker processes."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from inat_assets.download import (
    BatchFolders,
    DownloadConfig,
    DownloadJob,
    HostLimits,
    PhotoTask,
    run_download,
)
from inat_assets.download.config import (
    MAX_AUTO_PROCESSES,
    SMALL_RUN,
    available_cores,
    body_budget,
    cgroup_cpu_quota,
)
from inat_assets.download.processes import child_config
from inat_assets.download.runner import with_processes
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


def test_children_get_a_share_of_the_body_budget() -> None:
    config = fast_config(processes=4, concurrency=256, max_bytes=10_000_000)
    assert body_budget(config) == 192_000_000
    assert body_budget(child_config(config)) == 48_000_000  # together no more than one process had
    assert body_budget(child_config(fast_config(processes=4, max_bytes=60_000_000))) == 60_000_000  # one body fits


def test_worker_processes_default_to_the_available_cores_and_an_explicit_value_wins(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("inat_assets.download.config.available_cores", lambda: 8)
    auto = DownloadConfig()
    assert auto.processes is None and auto.worker_processes(None) == MAX_AUTO_PROCESSES
    assert auto.worker_processes(SMALL_RUN - 1) == 1  # not worth starting interpreters for
    assert DownloadConfig(concurrency=2).worker_processes(None) == 2  # at least one request each
    assert DownloadConfig(processes=3).worker_processes(10) == 3
    monkeypatch.setattr("inat_assets.download.config.available_cores", lambda: 1)
    assert auto.worker_processes(None) == 1


def test_automatic_processes_fall_back_to_one_for_an_unpicklable_destination(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("inat_assets.download.config.available_cores", lambda: 2)
    job = DownloadJob(iter([]), lambda pid: tmp_path, tmp_path / "m.parquet", fast_config(), total=None)
    assert with_processes(job).config.processes == 1
    job = DownloadJob(iter([]), BatchFolders(tmp_path, 10), tmp_path / "m.parquet", fast_config(), total=None)
    assert with_processes(job).config.processes == 2


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_cpu_quota_v2_takes_the_tightest_of_the_cgroup_and_its_parents(tmp_path: Path) -> None:
    _write(tmp_path / "proc", "0::/box/job\n")
    _write(tmp_path / "cg/cpu.max", "max 100000\n")
    _write(tmp_path / "cg/box/cpu.max", "150000 100000\n")
    _write(tmp_path / "cg/box/job/cpu.max", "max 100000\n")
    assert cgroup_cpu_quota(str(tmp_path / "cg"), str(tmp_path / "proc")) == 1.5
    assert available_cores(str(tmp_path / "cg"), str(tmp_path / "proc")) == min(2, len(os.sched_getaffinity(0)))
    _write(tmp_path / "cg/box/cpu.max", "max 100000\n")
    assert cgroup_cpu_quota(str(tmp_path / "cg"), str(tmp_path / "proc")) is None


def test_cgroup_cpu_quota_v1(tmp_path: Path) -> None:
    _write(tmp_path / "proc", "4:memory:/x\n3:cpu,cpuacct:/x\n")
    _write(tmp_path / "cg/cpu,cpuacct/x/cpu.cfs_quota_us", "50000\n")
    _write(tmp_path / "cg/cpu,cpuacct/x/cpu.cfs_period_us", "100000\n")
    _write(tmp_path / "cg/cpu,cpuacct/cpu.cfs_quota_us", "-1\n")
    _write(tmp_path / "cg/cpu,cpuacct/cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_quota(str(tmp_path / "cg"), str(tmp_path / "proc")) == 0.5
    assert available_cores(str(tmp_path / "cg"), str(tmp_path / "proc")) == 1
    assert cgroup_cpu_quota(str(tmp_path / "cg"), str(tmp_path / "missing")) is None
