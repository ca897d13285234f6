"""Issue 6, engine side: nothing lost, nothing unbounded (manifest atomicity, bad and repeated ids,
locks, actionable errors, no empty folders)."""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from inat_assets.download import BatchFolders, DownloadJob, PhotoTask, parse_photo_id, run, run_download
from inat_assets.download.engine import InputScreen
from inat_assets.download.manifest import ManifestRow, ManifestWriter, arrow_array, manifest_schema
from inat_assets.errors import StorageError
from inat_assets.locks import LockedError, acquire
from inat_assets.testing.mirror import MirrorServer
from inat_assets_tests.download.conftest import fast_config, files_in


def manifest_ids(path: Path) -> list[int]:
    return sorted(pq.read_table(path, columns=["photo_id"])["photo_id"].to_pylist())


def good_manifest(mirror: MirrorServer, folder: Path) -> Path:
    path = folder / "m.parquet"
    run_download([PhotoTask(pid, mirror.url(pid)) for pid in (1, 2)], folder, path, fast_config())
    return path


def hidden_parts(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*.part"))


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str = "1m") -> Iterator[Path]:
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root): {done.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(folder: Path) -> None:
    """Fill the file system of ``folder`` up to the last byte."""
    with open(folder / "filler", "ab", buffering=0) as fh, contextlib.suppress(OSError):
        while True:
            fh.write(b"\0" * 4096)


# --- Manifest writes are atomic in fact -------------------------------------------------------------------

def test_manifest_flush_failure_keeps_the_old_manifest(mirror: MirrorServer, tmp_path: Path) -> None:
    path = good_manifest(mirror, tmp_path)
    before = path.read_bytes()
    row = ManifestRow(2**63, None, None, "ok", None, None, None, None, 0, None, 0.0)  # beyond int64
    with pytest.raises((OverflowError, pa.ArrowInvalid)), ManifestWriter(path) as writer:
        writer.add(row)  # buffered: fails only at the last flush, in __exit__
    assert path.read_bytes() == before
    assert hidden_parts(tmp_path) == []


def test_manifest_columns_equal_pyarrows_own_conversion() -> None:
    rng = random.Random(7)
    words = ["", "ok", "naïve 🦉", "a\nb\"c,d", "x" * 3000]
    makers = {
        pa.string(): lambda: rng.choice(words),
        pa.int64(): lambda: rng.choice([0, -1, 2**63 - 1, -(2**63), rng.randrange(10**12)]),
        pa.int32(): lambda: rng.choice([0, 200, 2**31 - 1, -(2**31)]),
        pa.float64(): lambda: rng.choice([0.0, 1e-300, 0.1 + 0.2, -3.5, 7]),
    }
    for arrow_type, make in makers.items():
        for n, null_share in [(0, 0.0), (1, 0.0), (1, 1.0), (7, 0.5), (9, 0.0), (8192, 0.3), (100, 1.0)]:
            values = [None if rng.random() < null_share else make() for _ in range(n)]
            built = arrow_array(values, arrow_type)
            built.validate(full=True)
            assert built.equals(pa.array(values, arrow_type)), (arrow_type, n, null_share)
    with pytest.raises(OverflowError):
        arrow_array([2**31], pa.int32())


def test_writing_and_resuming_a_manifest_does_not_import_pandas(tmp_path: Path) -> None:
    # pyarrow imports pandas (54 MB, 0.3 s) on its first conversion of Python objects and in
    # pq.read_table; the manifest is written and read back without either (in a fresh interpreter:
    # this one has pandas already).
    code = (
        "import sys; from pathlib import Path\n"
        "from inat_assets.download.manifest import ManifestRow, ManifestWriter, PreviousManifest\n"
        f"path = Path({str(tmp_path / 'm.parquet')!r})\n"
        "with ManifestWriter(path) as w:\n"
        "    w.add(ManifestRow(1, 'http://x/1.jpg', '/p/1.jpg', 'ok', 200, 10, 'ab', 'image/jpeg', 1, None, 0.5, 3, 4))\n"
        "    w.add(ManifestRow(2, None, None, 'failed_permanent', None, None, None, None, 1, 'HTTP 404', 0.1))\n"
        "previous = PreviousManifest.load(path)\n"
        "print(len(previous), previous.lookup(1), previous.lookup(2), 'pandas' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "1 (10, 'ab') None False"
    table = pq.read_table(tmp_path / "m.parquet")
    assert table.schema == manifest_schema()
    assert table.to_pylist()[1] == {
        "photo_id": 2, "url": None, "path": None, "status": "failed_permanent", "http_status": None, "bytes": None,
        "sha256": None, "content_type": None, "attempts": 1, "error": "HTTP 404", "seconds": 0.1, "width": None,
        "height": None,
    }


def test_manifest_on_a_full_disk_keeps_the_old_manifest(mirror: MirrorServer, tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "small") as disk:
        path = good_manifest(mirror, disk)
        before = path.read_bytes()
        rows = [ManifestRow(pid, f"http://x/{os.urandom(32).hex()}", None, "failed_permanent", 404, None, None,
                            None, 1, "HTTP 404 Not Found", 0.1) for pid in range(2000)]
        full = rf"cannot write the manifest {path}: .*No space left on device"
        with pytest.raises(StorageError, match=full), ManifestWriter(path) as writer:
            fill(disk)  # the disk fills up during the run: the rows buffered so far meet it at the end
            for row in rows:
                writer.add(row)
        assert path.read_bytes() == before
        assert hidden_parts(disk) == []
        # Starting on a disk that is already full is the same error, and the same old manifest.
        fill(disk)
        with pytest.raises(StorageError, match="No space left on device"), ManifestWriter(path):
            pass
        assert path.read_bytes() == before and hidden_parts(disk) == []


def test_corrupt_manifest_is_set_aside_with_a_warning(mirror: MirrorServer, tmp_path: Path) -> None:
    path = good_manifest(mirror, tmp_path)
    path.write_bytes(path.read_bytes()[:-30])  # a truncated copy: no valid footer
    tasks = [PhotoTask(pid, mirror.url(pid)) for pid in (1, 2, 3)]
    summary = run_download(tasks, tmp_path, path, fast_config(), previous_manifest=path)
    assert summary.cached == 2 and summary.ok == 1  # the photos on disk still count
    assert manifest_ids(path) == [1, 2, 3]
    aside = list(tmp_path.glob("m.corrupt-*.parquet"))
    assert len(aside) == 1
    assert len(summary.warnings) == 1 and aside[0].name in summary.warnings[0] and "unreadable" in summary.warnings[0]


# --- Bad and repeated photo ids -----------------------------------------------------------------------------

def test_parse_photo_id_refuses_what_cannot_be_a_photo_id() -> None:
    import numpy as np

    for good, expected in [(5, 5), (np.int64(7), 7), (3.0, 3), ("42", 42), (" 9 ", 9), (2**63 - 1, 2**63 - 1)]:
        assert parse_photo_id(good) == expected
    for bad in ["foo", "", "4.5", 1.5, float("nan"), float("inf"), -1, 2**63, float(2**63), None, True, b"1", "²"]:
        assert parse_photo_id(bad) is None, bad


def test_bad_photo_ids_are_skipped_reported_and_the_rest_downloaded(mirror: MirrorServer, tmp_path: Path) -> None:
    tasks = [PhotoTask(1, mirror.url(1)), PhotoTask("foo", mirror.url(2)),  # type: ignore[arg-type]
             PhotoTask(1.5, mirror.url(3)), PhotoTask(-4, mirror.url(4)),  # type: ignore[arg-type]
             PhotoTask(2**63, mirror.url(5)), PhotoTask(6, mirror.url(6))]
    summary = run_download(tasks, tmp_path, tmp_path / "m.parquet", fast_config())
    assert summary.ok == 2 and summary.invalid == 4 and summary.total == 2
    assert manifest_ids(tmp_path / "m.parquet") == [1, 6]
    assert "task 1: photo_id 'foo'" in summary.warnings[0] and "task 4: photo_id 9223372036854775808" in summary.warnings[0]


@pytest.mark.parametrize("processes", [1, 2])
def test_duplicate_photo_ids_download_once_with_one_manifest_row(mirror: MirrorServer, tmp_path: Path,
                                                                 processes: int) -> None:
    ids = [1, 2, 2, 3, 3, 3, *range(4, 200), 199]
    tasks = (PhotoTask(pid, mirror.url(pid)) for pid in ids)
    summary = run_download(tasks, BatchFolders(tmp_path, 100), tmp_path / "m.parquet",
                           fast_config(processes=processes, concurrency=8))
    assert summary.ok == 199 and summary.duplicates == 4 and summary.total == 199
    assert manifest_ids(tmp_path / "m.parquet") == list(range(1, 200))
    assert all(mirror.hits(f"/photos/{pid}/original.jpg") == 1 for pid in range(1, 200))
    assert summary.warnings == []


def test_duplicate_detection_memory_is_bounded_and_says_so_for_unsorted_input() -> None:
    screen = InputScreen(window=3)
    ids = [5, 1, 5, 2, 3, 4, 1, 9, 9]  # unsorted; the second 1 is 5 distinct ids after the first
    kept = [t.photo_id for t in screen(PhotoTask(pid, "u") for pid in ids)]
    assert kept == [5, 1, 2, 3, 4, 1, 9]
    assert screen.duplicates == 2 and len(screen._recent) <= 3
    assert screen.unsorted and "not sorted by photo id" in screen.warnings()[0]


# --- Two runs on one output ---------------------------------------------------------------------------------

def test_second_run_on_the_same_manifest_is_refused_naming_the_holder(mirror: MirrorServer, tmp_path: Path) -> None:
    job = DownloadJob([PhotoTask(1, mirror.url(1))], tmp_path, tmp_path / "m.parquet", fast_config())
    held = acquire(job.lock_path, purpose="a test holding the manifest")
    try:
        with pytest.raises(LockedError, match=rf"another download is writing {job.manifest_path}: .*pid {os.getpid()}"):
            run(job)
    finally:
        held.release()
    assert mirror.total_hits == 0 and not job.manifest_path.exists()
    assert run(job).ok == 1  # free again


def test_runs_on_other_manifests_of_one_photo_folder_do_not_block_each_other(
    mirror: MirrorServer, tmp_path: Path
) -> None:
    # Issue 7 shares one photo folder between datasets, each with its own manifest: only the
    # manifest is exclusive.
    other = acquire(DownloadJob((), tmp_path, tmp_path / "other.parquet").lock_path, purpose="another dataset")
    try:
        assert run_download([PhotoTask(1, mirror.url(1))], tmp_path / "photos", tmp_path / "m.parquet",
                            fast_config()).ok == 1
    finally:
        other.release()


# --- Errors a person can act on -----------------------------------------------------------------------------

def test_unwritable_photo_folder_is_one_clear_error_not_chained(mirror: MirrorServer, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    with pytest.raises(StorageError) as caught:
        run_download([PhotoTask(1, mirror.url(1))], tmp_path / "a-file" / "photos", tmp_path / "m.parquet",
                     fast_config())
    assert str(caught.value) == f"cannot write {tmp_path}/a-file/photos/1.jpg: Not a directory"
    # No "no running event loop" RuntimeError (or anything else) shown chained before it.
    assert "During handling" not in "".join(traceback.format_exception(caught.value))
    assert "direct cause" not in "".join(traceback.format_exception(caught.value))
    assert not (tmp_path / "m.parquet").exists() and hidden_parts(tmp_path) == []


def test_full_disk_for_photos_fails_the_run_and_keeps_the_old_manifest(mirror: MirrorServer, tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "small") as disk:
        path = good_manifest(mirror, disk)
        before = path.read_bytes()
        fill(disk)
        with pytest.raises(StorageError, match="No space left on device"):
            run_download([PhotoTask(pid, mirror.url(pid)) for pid in range(3, 10)], disk, path, fast_config(),
                         previous_manifest=path)
        assert path.read_bytes() == before
        assert hidden_parts(disk) == []


# --- Smaller ------------------------------------------------------------------------------------------------

def test_empty_batch_folders_are_not_created_when_every_photo_fails(mirror: MirrorServer, tmp_path: Path) -> None:
    mirror.set_faults({150: ["404"], 151: ["404"]})
    tasks = [PhotoTask(150, mirror.url(150)), PhotoTask(151, mirror.url(151)),
             PhotoTask(250, "http://not-allowed.example/photos/250/original.jpg"), PhotoTask(350, mirror.url(350))]
    summary = run_download(tasks, BatchFolders(tmp_path, 100), tmp_path / "m.parquet",
                           fast_config(try_other_host=False))
    assert summary.ok == 1 and summary.permanent_failed == 3
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["batch-000003"]
    assert [p.name for p in files_in(tmp_path)] == ["350.jpg"]


def test_photo_write_survives_another_run_removing_its_temporary_file(
    mirror: MirrorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Runs with different manifests may share a photo folder; one run's first look at the folder
    # removes .part files it takes for stale, possibly another run's file being written right now.
    real_replace = os.replace
    removed: list[str] = []

    def replace_after_another_run_cleaned(src: str, dst: str) -> None:
        if str(src).endswith(".part") and not removed:
            removed.append(str(src))
            os.unlink(src)
        real_replace(src, dst)

    monkeypatch.setattr("inat_assets.storage.os.replace", replace_after_another_run_cleaned)
    summary = run_download([PhotoTask(1, mirror.url(1))], tmp_path / "photos", tmp_path / "m.parquet",
                           fast_config())
    assert removed and summary.ok == 1
    assert (tmp_path / "photos" / "1.jpg").stat().st_size > 0 and hidden_parts(tmp_path) == []
