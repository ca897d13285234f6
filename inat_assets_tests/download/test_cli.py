"""``download-images``: inputs, size rewrite, exit codes, and a SIGKILL in the middle of a batch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from inat_assets.cli.download_images import main, with_size
from inat_assets.testing.mirror import MirrorServer, serve_mirror, served_bytes
from inat_assets_tests.download.conftest import HOST_A, HOST_B, IMAGE_BYTES, files_in

REPO = Path(__file__).resolve().parents[2]


def fetch_list(path: Path, mirror: MirrorServer, ids: range) -> Path:
    pq.write_table(pa.table({"photo_id": list(ids), "url": [mirror.url(pid) for pid in ids],
                             "license": ["CC0"] * len(ids)}), path)
    return path


def cli_args(parquet: Path, output: Path, *extra: str) -> list[str]:
    return ["--parquet", str(parquet), "--output", str(output), "--allow-host", HOST_A, "--allow-host", HOST_B,
            "--quiet", "--retries", "1", *extra]


def test_fetch_list_download_and_rerun(mirror: MirrorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INAT_ALLOWED_HOSTS", raising=False)
    parquet = fetch_list(tmp_path / "fetch.parquet", mirror, range(99_990, 100_010))
    out = tmp_path / "images"
    assert main(cli_args(parquet, out, "--batch-span", "50000")) == 0
    # Batch folders by photo id // span.
    assert sorted(p.name for p in out.iterdir()) == ["batch-000001", "batch-000002", "batches.json", "manifest.parquet"]
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
    assert "host not allowed: 127.0.0.1; allow it with --allow-host or INAT_ALLOWED_HOSTS" in capsys.readouterr().err
    assert mirror.total_hits == 0
    monkeypatch.setenv("INAT_ALLOWED_HOSTS", HOST_A)
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
