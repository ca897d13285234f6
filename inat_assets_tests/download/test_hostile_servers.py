"""Servers that attack the downloader's memory: bombs, endless bodies, odd encodings.

The memory cases run the download in a fresh subprocess and read its peak RSS (VmHWM from
/proc/self/status: ru_maxrss of a child started with fork/vfork + exec can report the parent's
size) while the mirror runs in a process of its own, so neither the test runner nor the mirror
counts against the bound.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import subprocess
import sys
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from inat_assets.download import DownloadConfig, PhotoTask, run_download
from inat_assets.download.network import BodyBudget, BodyTooLarge, CappedDecoder
from inat_assets.download.photo_fetcher import Fetcher, HostAllowlist, _fields
from inat_assets.errors import DownloadError
from inat_assets.testing.mirror import MirrorServer, gzip_bomb, served_bytes
from inat_assets_tests.download.conftest import HOST_A, HOST_B, IMAGE_BYTES, fast_config, manifest_rows

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
                        request_deadline=60.0, read_timeout=10.0, max_bytes=MAX_BYTES, transport=sys.argv[5])
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
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:  # still streaming endless bodies to the closed client: seen in CI
            proc.kill()
            proc.wait(10)


def download_in_subprocess(base: str, out: Path, ids: list[int], transport: str) -> dict:
    done = subprocess.run([sys.executable, "-c", _CHILD, base, str(out), json.dumps(ids), str(MAX_BYTES), transport],
                          capture_output=True, text=True, timeout=240, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmHWM from /proc")
@pytest.mark.parametrize("transport", ["aiohttp", "httpcore"])
def test_gzip_bomb_and_endless_bodies_keep_memory_bounded(tmp_path: Path, transport: str) -> None:
    # One stacked-gzip bomb (2.4 KB inflating to 1,000 MB), 32 endless bodies at concurrency 32,
    # and a few good photos that must still arrive.
    faults = {1: ["gzipbomb"], **{pid: ["endless"] for pid in range(2, 34)}}
    ids = list(range(1, 40))
    with mirror_process(faults) as base:
        result = download_in_subprocess(base, tmp_path, ids, transport)
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


# --- The pieces, in process ---------------------------------------------------------------------

def test_body_budget_serves_waiters_in_order_and_gets_back_what_a_cancelled_waiter_held() -> None:
    async def scenario() -> list[str]:
        budget = BodyBudget(100)
        order: list[str] = []
        assert await budget.reserve(70) == 70

        async def take(name: str, nbytes: int) -> None:
            await budget.reserve(nbytes)
            order.append(name)

        big = asyncio.create_task(take("big", 90))
        await asyncio.sleep(0)
        small = asyncio.create_task(take("small", 10))  # fits now, but must not overtake "big"
        doomed = asyncio.create_task(take("doomed", 50))
        await asyncio.sleep(0.01)
        assert order == [] and budget.available == 30
        doomed.cancel()
        budget.release(70)
        await asyncio.gather(big, small, doomed, return_exceptions=True)
        assert budget.available == 0  # 90 + 10 held; the cancelled waiter took nothing
        return order

    assert asyncio.run(scenario()) == ["big", "small"]


def test_capped_decoder_stops_a_bomb_at_the_limit() -> None:
    inner = gzip.decompress(gzip_bomb(50))  # one layer left: 50 MiB of zeros in about 50 KB
    decoder = CappedDecoder("gzip", 1_000_000)
    produced = 0
    with pytest.raises(BodyTooLarge):
        for start in range(0, len(inner), 16_384):
            produced += len(decoder.decode(inner[start : start + 16_384]))
    assert produced <= 1_000_001


def test_raw_deflate_is_decoded_like_zlib_deflate() -> None:
    data = served_bytes(3)
    for wbits in (zlib.MAX_WBITS, -zlib.MAX_WBITS):
        packer = zlib.compressobj(6, zlib.DEFLATED, wbits)
        decoder = CappedDecoder("deflate", len(data))
        assert decoder.decode(packer.compress(data) + packer.flush()) + decoder.finish() == data


def test_allowlist_ports() -> None:
    allow = HostAllowlist(("photos.example", "mirror.example:8443", "127.0.0.1:*", "[::1]:8080"))
    assert allow.allows("https", "photos.example", None) and allow.allows("http", "photos.example", 80)
    assert allow.allows("https", "photos.example", 443)
    assert not allow.allows("http", "photos.example", 443)  # the default port of the URL's scheme only
    assert not allow.allows("https", "photos.example", 22)
    assert allow.allows("https", "mirror.example", 8443) and not allow.allows("https", "mirror.example", None)
    assert allow.allows("http", "127.0.0.1", 6379) and allow.allows("http", "::1", 8080)
    assert not allow.allows("http", "::1", None)
    assert HostAllowlist.describe("http", "::1", 8080) == "[::1]:8080"
    assert HostAllowlist.describe("https", "photos.example", 443) == "photos.example"
    for bad in ("photos.example:http", "photos.example/photos", "user@photos.example", ":8080"):
        with pytest.raises(DownloadError, match="is not a host name, host:port or host:"):
            DownloadConfig(allowed_hosts=(bad,))  # refused when the run is configured, not when it starts


def test_url_rules_of_one_parse() -> None:
    fetcher = Fetcher(DownloadConfig(allowed_hosts=("photos.example", "127.0.0.1:*", "[::1]:8080")))
    hint = "; allow it with --allow-host or INAT_ALLOWED_HOSTS"
    cases = {
        "https://photos.example/photos/1/medium.jpg": ("photos.example", None),
        "HTTPS://PHOTOS.Example:443/photos/1/medium.jpg": ("photos.example", None),  # case, default port
        "http://photos.example:443/photos/1/medium.jpg": ("", "host not allowed: photos.example:443" + hint),
        "http://127.0.0.1:6379/x": ("127.0.0.1", None),
        "http://[::1]:8080/x": ("::1", None),
        "http://[::1]/x": ("", "host not allowed: [::1]" + hint),
        "http://evil.example/x": ("", "host not allowed: evil.example" + hint),
        "ftp://photos.example/x": ("", "unsupported URL scheme 'ftp': only http and https"),
        "photos.example/x": ("", "unsupported URL scheme 'none': only http and https"),
        "http:///photos/1/medium.jpg": ("", "URL has no host"),
        "http://photos.example:99999/x": ("", "invalid URL"),
        "http://photos.example:abc/x": ("", "invalid URL"),
        "http://[::1/x": ("", "invalid URL"),
    }
    for url, expected in cases.items():
        assert fetcher.check_url(url) == expected, url


def test_response_fields_read_as_httpx_reads_them() -> None:
    cases = [
        [(b"Content-Type", b"image/jpeg"), (b"Content-Length", b"40000"), (b"ETag", b'"x"')],
        [(b"content-length", b"5"), (b"CONTENT-LENGTH", b"5"), (b"Retry-After", b"2")],  # repeats joined
        [(b"Content-Type", "image/jpeg; name=é".encode()), (b"Content-Encoding", b"gzip")],  # not ASCII
        [(b"Content-Type", "bild/jpég".encode("latin-1"))],
        [],
    ]
    for raw in cases:
        response = httpx.Response(200, headers=raw)
        expected = {name: response.headers[name] for name in
                    ("content-type", "content-length", "content-encoding", "retry-after") if name in response.headers}
        assert _fields(response) == expected, raw


def test_redirect_to_another_port_of_an_allowed_host_is_refused(mirror: MirrorServer, tmp_path: Path) -> None:
    port = mirror.addresses[0][1]
    mirror.set_faults({1: [f"redirect:http://{HOST_A}:1/photos/1/original.jpg"], 2: ["404"]}, host=HOST_A)
    config = fast_config(allowed_hosts=(f"{HOST_A}:{port}", HOST_B))  # B only on port 80: no fallback
    run_download([PhotoTask(pid, mirror.url(pid)) for pid in (1, 2, 3)], tmp_path, tmp_path / "m.parquet", config)
    rows = manifest_rows(tmp_path / "m.parquet")
    allow_hint = "allow it with --allow-host or INAT_ALLOWED_HOSTS"
    assert rows[1]["error"] == f"redirect refused: host not allowed: {HOST_A}:1; {allow_hint}"
    assert rows[2]["error"] == "HTTP 404 Not Found" and mirror.hits("/photos/2/original.jpg", HOST_B) == 0
    assert rows[3]["status"] == "ok"
