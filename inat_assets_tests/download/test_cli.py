"""``download-images``: inputs, size rewrite, exit codes, and a SIGKILL in the middle of a batch."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from inat_assets.cli.download_images import main, with_size
from inat_assets.locks import is_held
from inat_assets.testing.mirror import MirrorServer, serve_mirror, served_bytes
from inat_assets_tests.download.conftest import ANY_PORT_A, ANY_PORT_B, HOST_A, IMAGE_BYTES, files_in

REPO = Path(__file__).resolve().parents[2]


def fetch_list(path: Path, mirror: MirrorServer, ids: range) -> Path:
    pq.write_table(pa.table({"photo_id": list(ids), "url": [mirror.url(pid) for pid in ids],
                             "license": ["CC0"] * len(ids)}), path)
    return path


def cli_args(parquet: Path, output: Path, *extra: str) -> list[str]:
    return ["--parquet", str(parquet), "--output", str(output), "--allow-host", ANY_PORT_A, "--allow-host", ANY_PORT_B,
            "--quiet", "--retries", "1", *extra]


def test_fetch_list_download_and_rerun(mirror: MirrorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INAT_ALLOWED_HOSTS", raising=False)
    parquet = fetch_list(tmp_path / "fetch.parquet", mirror, range(99_990, 100_010))
    out = tmp_path / "images"
    assert main(cli_args(parquet, out, "--batch-span", "50000")) == 0
    # Batch folders by photo id // span (and the manifest's lock file, which stays: see locks.py).
    assert sorted(p.name for p in out.iterdir()) == [".manifest.parquet.lock", "batch-000001", "batch-000002", "batches.json",
                                                     "manifest.parquet"]
    assert (out / "batch-000002" / "100005.jpg").read_bytes() == served_bytes(100_005, "original", "jpg", IMAGE_BYTES)
    hits = mirror.total_hits
    assert main(cli_args(parquet, out)) == 0
    assert mirror.total_hits == hits
    manifest = pq.read_table(out / "manifest.parquet").to_pylist()
    assert len(manifest) == 20 and {r["status"] for r in manifest} == {"cached"}


def test_original_workflow_columns_size_rewrite_and_exit_code(mirror: MirrorServer, tmp_path: Path) -> None:
    mirror.set_faults({5: ["404"]})
    ids = list(range(1, 8))
    table = pa.table({
        "id": [1000 + i for i in [*ids, 8]],  # observation ids: not the photo id
        "identifier": [mirror.url(pid, ext="jpeg") for pid in ids] + [mirror.url(8)],
        "foo": [*ids, 8],
        "format": ["image/jpeg"] * len(ids) + ["audio/mpeg"],
    })
    pq.write_table(table, tmp_path / "original.parquet")
    code = main(cli_args(tmp_path / "original.parquet", tmp_path / "out", "--size", "medium"))
    assert code == 1  # photo 5 is missing everywhere
    assert mirror.hits("/photos/3/medium.jpeg") == 1 and mirror.hits("/photos/3/original.jpeg") == 0
    assert mirror.hits("/photos/8/medium.jpg") == 0  # the sound row was skipped
    assert (tmp_path / "out" / "batch-000000" / "3.jpg").read_bytes() == served_bytes(3, "medium", "jpeg", IMAGE_BYTES)
    rows = {r["photo_id"]: r for r in pq.read_table(tmp_path / "out" / "manifest.parquet").to_pylist()}
    assert rows[5]["status"] == "failed_permanent" and 1005 not in rows and 8 not in rows


def test_input_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--parquet", str(tmp_path / "nope.parquet"), "--output", str(tmp_path / "o")]) == 2
    assert "no such file" in capsys.readouterr().err
    pq.write_table(pa.table({"photo": [1], "link": ["x"]}), tmp_path / "bad.parquet")
    assert main(["--parquet", str(tmp_path / "bad.parquet"), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "(photo_id, url) or (foo, identifier)" in err and "found: link, photo" in err
    (tmp_path / "text.parquet").write_text("not parquet")
    assert main(["--parquet", str(tmp_path / "text.parquet"), "--output", str(tmp_path / "o")]) == 2
    assert "not a readable Parquet file" in capsys.readouterr().err


def test_host_not_allowed_without_allow_host(mirror: MirrorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("INAT_ALLOWED_HOSTS", raising=False)
    parquet = fetch_list(tmp_path / "f.parquet", mirror, range(1, 3))
    assert main(["--parquet", str(parquet), "--output", str(tmp_path / "o"), "--quiet"]) == 1
    port = mirror.addresses[0][1]
    assert f"host not allowed: {HOST_A}:{port}; allow it with --allow-host or INAT_ALLOWED_HOSTS" in capsys.readouterr().err
    assert mirror.total_hits == 0
    monkeypatch.setenv("INAT_ALLOWED_HOSTS", f"{HOST_A}:{port}")
    assert main(["--parquet", str(parquet), "--output", str(tmp_path / "o"), "--quiet"]) == 0


def test_with_size() -> None:
    url = "https://inaturalist-open-data.s3.amazonaws.com/photos/50027543/original.jpeg"
    assert with_size(url, "medium") == "https://inaturalist-open-data.s3.amazonaws.com/photos/50027543/medium.jpeg"
    assert with_size(url + "?1567", "small").endswith("/small.jpeg?1567")
    assert with_size("https://x.org/original/photos/1/original.JPG", "thumb") == "https://x.org/original/photos/1/thumb.JPG"
    assert with_size("https://farm.example/abc_original.jpg", "large") == "https://farm.example/abc_original.jpg"


def test_sigkill_mid_batch_then_rerun(tmp_path: Path) -> None:
    ids = range(1, 121)
    with serve_mirror((HOST_A,), image_bytes=IMAGE_BYTES, latency_ms=100) as mirror:
        parquet = fetch_list(tmp_path / "fetch.parquet", mirror, ids)
        out = tmp_path / "out"
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        cmd = [sys.executable, "-m", "inat_assets.cli.download_images",
               *cli_args(parquet, out, "--concurrency", "8", "--batch-span", "1000")]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        folder = out / "batch-000000"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(list(folder.glob("*.jpg")) if folder.exists() else []) < 20:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert proc.returncode == -signal.SIGKILL

        finished = sorted(folder.glob("*.jpg"))
        assert 20 <= len(finished) < len(ids), "the kill should land mid-batch"
        for path in finished:  # whatever has a final name is complete
            assert path.read_bytes() == served_bytes(int(path.stem), "original", "jpg", IMAGE_BYTES)
        assert not (out / "manifest.parquet").exists()
        hits_before = {p.stem: mirror.hits(f"/photos/{p.stem}/original.jpg") for p in finished}

        assert main(cli_args(parquet, out, "--concurrency", "16", "--batch-span", "1000")) == 0
        for stem, hits in hits_before.items():  # nothing finished was fetched again
            assert mirror.hits(f"/photos/{stem}/original.jpg") == hits == 1
    names = [p.name for p in files_in(out)]
    assert names == sorted(f"{pid}.jpg" for pid in ids)  # and no .part files left behind
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    assert sum(r["status"] == "cached" for r in rows) == len(finished)
    assert sum(r["status"] == "ok" for r in rows) == len(ids) - len(finished)


def test_progress_lines_and_summary(mirror: MirrorServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parquet = fetch_list(tmp_path / "f.parquet", mirror, range(1, 31))
    args = [a for a in cli_args(parquet, tmp_path / "o") if a != "--quiet"]
    assert main([*args, "--progress-interval", "0.01"]) == 0
    err = capsys.readouterr().err
    assert "30/30" in err and "ok 30" in err  # the last progress line (stderr is not a terminal here)
    assert "done in 0:00:0" in err and "30 photos, ok 30, cached 0" in err


# --- Issue 6 ------------------------------------------------------------------------------------------------

def start_cli(parquet: Path, out: Path, *extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "inat_assets.cli.download_images", *cli_args(parquet, out, *extra)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_for(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited; only its exit status waits to be collected


def children_of(pid: int) -> list[int]:
    tasks = Path(f"/proc/{pid}/task")
    return [int(c) for task in tasks.iterdir() for c in (task / "children").read_text().split()]


@pytest.mark.parametrize(
    ("ids", "bad_examples"),
    [
        (pa.array(["1", "foo", "3", None, "5"]), ["row 2: 'foo'", "row 4: None"]),
        (pa.array([1.0, 2.5, 3.0, float("nan"), 5.0]), ["row 2: 2.5", "row 4: nan"]),
        (pa.array([1, -2, 3, None, 5], pa.int64()), ["row 2: -2", "row 4: None"]),
        (pa.array([1, 2**63, 3, 2**64 - 1, 5], pa.uint64()), ["row 2: 9223372036854775808",
                                                               "row 4: 18446744073709551615"]),
    ],
    ids=["text", "float", "negative-null", "beyond-int64"],
)
def test_bad_ids_in_the_input_are_reported_and_the_good_rows_downloaded(
    mirror: MirrorServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], ids: pa.Array, bad_examples: list[str]
) -> None:
    urls = [mirror.url(pid) for pid in range(1, 6)]
    pq.write_table(pa.table({"foo": ids, "identifier": urls}), tmp_path / "in.parquet")
    assert main(cli_args(tmp_path / "in.parquet", tmp_path / "out")) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"2 input rows have an unusable photo id and were not downloaded (first: {'; '.join(bad_examples)})" in err
    rows = pq.read_table(tmp_path / "out" / "manifest.parquet").to_pylist()
    assert sorted(r["photo_id"] for r in rows) == [1, 3, 5] and {r["status"] for r in rows} == {"ok"}


def test_duplicate_photo_ids_in_the_input_download_once(mirror: MirrorServer, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    ids = [1, 2, 2, 3, 4, 4, 4, 5]
    pq.write_table(pa.table({"photo_id": ids, "url": [mirror.url(pid) for pid in ids]}), tmp_path / "in.parquet")
    assert main(cli_args(tmp_path / "in.parquet", tmp_path / "out", "--processes", "2")) == 0
    assert "3 input rows repeat an earlier photo id (fetched once)" in capsys.readouterr().err
    rows = pq.read_table(tmp_path / "out" / "manifest.parquet").to_pylist()
    assert sorted(r["photo_id"] for r in rows) == [1, 2, 3, 4, 5]
    assert all(mirror.hits(f"/photos/{pid}/original.jpg") == 1 for pid in range(1, 6))


def test_format_filter_is_case_insensitive(mirror: MirrorServer, tmp_path: Path) -> None:
    table = pa.table({"foo": [1, 2, 3], "identifier": [mirror.url(pid) for pid in (1, 2, 3)],
                      "format": ["IMAGE/JPEG", "Image/png", "AUDIO/MPEG"]})
    pq.write_table(table, tmp_path / "in.parquet")
    assert main(cli_args(tmp_path / "in.parquet", tmp_path / "out")) == 0
    rows = pq.read_table(tmp_path / "out" / "manifest.parquet").to_pylist()
    assert sorted(r["photo_id"] for r in rows) == [1, 2] and mirror.total_hits == 2


def test_unwritable_output_is_one_line_and_exit_2(mirror: MirrorServer, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    parquet = fetch_list(tmp_path / "f.parquet", mirror, range(1, 3))
    (tmp_path / "a-file").write_text("")
    assert main(cli_args(parquet, tmp_path / "a-file" / "out")) == 2
    err = capsys.readouterr().err
    assert err == f"download-images: cannot create the output folder {tmp_path}/a-file/out: Not a directory\n"
    assert mirror.total_hits == 0


def test_full_disk_is_one_line_exit_2_and_keeps_the_old_manifest(mirror: MirrorServer, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from inat_assets_tests.download.test_run_safety import fill, small_tmpfs

    with small_tmpfs(tmp_path / "small") as out:
        assert main(cli_args(fetch_list(tmp_path / "f1.parquet", mirror, range(1, 3)), out)) == 0
        before = (out / "manifest.parquet").read_bytes()
        capsys.readouterr()
        fill(out)
        assert main(cli_args(fetch_list(tmp_path / "f2.parquet", mirror, range(1, 30)), out)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("download-images: cannot write ")
        assert err[0].endswith(": No space left on device")
        assert (out / "manifest.parquet").read_bytes() == before
        assert list(out.rglob(".*.part")) == []


def test_second_run_on_the_same_output_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with serve_mirror((HOST_A,), image_bytes=IMAGE_BYTES, latency_ms=100) as mirror:
        parquet = fetch_list(tmp_path / "fetch.parquet", mirror, range(1, 41))
        out = tmp_path / "out"
        first = start_cli(parquet, out, "--concurrency", "4")
        try:
            assert wait_for(lambda: is_held(out / ".manifest.parquet.lock"), 20)
            assert main(cli_args(parquet, out)) == 2
            err = capsys.readouterr().err
            assert err.startswith(f"download-images: another download is writing {out}/manifest.parquet: ")
            assert f"pid {first.pid} " in err and "Traceback" not in err
            assert first.wait(60) == 0  # the first run was not disturbed
        finally:
            first.kill()
            first.wait()
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    assert len(rows) == 40 and {r["status"] for r in rows} == {"ok"}


def test_worker_processes_die_with_their_parent(tmp_path: Path) -> None:
    with serve_mirror((HOST_A,), image_bytes=IMAGE_BYTES, latency_ms=300) as mirror:
        parquet = fetch_list(tmp_path / "fetch.parquet", mirror, range(1, 2001))
        proc = start_cli(parquet, tmp_path / "out", "--processes", "2", "--concurrency", "8")
        children: list[int] = []
        try:
            # Both workers are up once they have fetched something.
            assert wait_for(lambda: mirror.total_hits >= 8, 30), proc.stderr.read() if proc.poll() else ""
            children = children_of(proc.pid)
            assert len(children) >= 2  # two workers (and multiprocessing's resource tracker)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            assert wait_for(lambda: not any(alive(pid) for pid in children), 5), [
                pid for pid in children if alive(pid)]
        finally:
            proc.kill()
            proc.wait()
            for pid in children:  # when the test fails: leave no orphans behind
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
