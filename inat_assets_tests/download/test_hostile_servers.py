"""Servers that attack the downloader's memory: bombs, endless bodies, odd encodings.

The memory cases run the download in a fresh subprocess and read its peak RSS (VmHWM from
/proc/self/status: ru_maxrss of a child started with fork/vfork + exec can report the parent's
size) while the mirror runs in a process of its own, so neither the test runner nor the mirror
counts against the bound.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from inat_assets.testing.mirror import served_bytes
from inat_assets_tests.download.conftest import IMAGE_BYTES

REPO = Path(__file__).resolve().parents[2]
RSS_BOUND_MB = 500
# 32 bodies of 20 MB held at once (what the engine did before the body budget) are 640 MB; the
# default 50 MB only makes the test move more bytes.
MAX_BYTES = 20_000_000

# Runs in a fresh interpreter: download ``ids`` from the mirror at ``base`` and print the summary
# and the peak resident set size.
_CHILD = """
import json, sys
from pathlib import Path
from urllib.parse import urlsplit
from inat_assets.download import DownloadConfig, PhotoTask, run_download

base, out, ids, MAX_BYTES = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4])
config = DownloadConfig(concurrency=32, allowed_hosts=(urlsplit(base).netloc,), retries=0,
                        request_deadline=60.0, read_timeout=10.0, max_bytes=MAX_BYTES)
summary = run_download([PhotoTask(i, f"{base}/photos/{i}/original.jpg") for i in ids], out,
                       out / "manifest.parquet", config)
status = Path("/proc/self/status").read_text()
peak_kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))
print(json.dumps({"peak_mb": peak_kb / 1024, "counts": summary.counts}))
"""


@contextmanager
def mirror_process(faults: dict[int, list[str]]) -> Iterator[str]:
    """A mirror in its own process (its memory must not count against the downloader's)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "inat_assets.testing.mirror", "--faults", json.dumps(faults),
         "--image-bytes", str(IMAGE_BYTES)],
        stdout=subprocess.PIPE, text=True, cwd=REPO,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.startswith("serving "), line
        yield line.split()[1]
    finally:
        proc.terminate()
        proc.wait(10)


def download_in_subprocess(base: str, out: Path, ids: list[int]) -> dict:
    done = subprocess.run([sys.executable, "-c", _CHILD, base, str(out), json.dumps(ids), str(MAX_BYTES)],
                          capture_output=True, text=True, timeout=240, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def manifest_rows(path: Path) -> dict[int, dict[str, object]]:
    return {row["photo_id"]: row for row in pq.read_table(path).to_pylist()}


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmHWM from /proc")
def test_gzip_bomb_and_endless_bodies_keep_memory_bounded(tmp_path: Path) -> None:
    # One stacked-gzip bomb (2.4 KB inflating to 1,000 MB), 32 endless bodies at concurrency 32,
    # and a few good photos that must still arrive.
    faults = {1: ["gzipbomb"], **{pid: ["endless"] for pid in range(2, 34)}}
    ids = list(range(1, 40))
    with mirror_process(faults) as base:
        result = download_in_subprocess(base, tmp_path, ids)
    rows = manifest_rows(tmp_path / "manifest.parquet")

    assert result["peak_mb"] < RSS_BOUND_MB, result
    assert rows[1]["status"] == "failed_permanent"
    assert rows[1]["error"] == "unsupported Content-Encoding 'gzip, gzip' (stacked encodings are refused)"
    for pid in range(2, 34):
        assert rows[pid]["status"] == "failed_permanent", rows[pid]
        assert rows[pid]["error"] == f"too large: body over max_bytes ({MAX_BYTES})"
    for pid in range(34, 40):
        assert rows[pid]["status"] == "ok"
        assert (tmp_path / f"{pid}.jpg").read_bytes() == served_bytes(pid, "original", "jpg", IMAGE_BYTES)
    assert result["counts"]["ok"] == 6
