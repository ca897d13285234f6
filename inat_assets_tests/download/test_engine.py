"""The engine against the mirror: recoverable faults, permanent failures, fallback, reruns."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

from inat_assets.download import DownloadConfig, HostLimits, PhotoTask, batch_key, run_download
from inat_assets.download.photo_fetcher import parse_retry_after
from inat_assets.download.request_clock import RequestClock
from inat_assets.errors import DownloadError
from inat_assets.testing.mirror import MirrorServer, served_bytes
from inat_assets_tests.download.conftest import ANY_PORT_A, HOST_A, HOST_B, IMAGE_BYTES, fast_config, files_in


def manifest_rows(path: Path) -> dict[int, dict[str, object]]:
    return {row["photo_id"]: row for row in pq.read_table(path).to_pylist()}


def test_recoverable_faults_end_with_exactly_the_served_bytes(mirror: MirrorServer, tmp_path: Path) -> None:
    mirror.set_faults({
        17: ["429:1", "ok"],
        18: ["503", "503", "ok"],
        19: ["reset", "ok"],
        20: ["truncate", "ok"],
        21: ["close", "ok"],
        22: ["stall", "ok"],  # half a body, then silence: the read timeout must end it
        23: ["slow:0.2", "ok"],
        24: ["nolength"],  # no Content-Length: accepted, delimited by the connection closing
        25: ["500", "ok"],
    })
    # A redirect inside the allowlist (host A -> host B), as a host-specific fault.
    mirror.set_faults({26: [f"redirect:{mirror.url(26, host=HOST_B)}"]}, host=HOST_A)
    ids = list(range(10, 31))
    tasks = [PhotoTask(pid, mirror.url(pid, ext="png" if pid == 30 else "jpg")) for pid in ids]
    summary = run_download(tasks, tmp_path, tmp_path / "manifest.parquet",
                           fast_config(read_timeout=0.5, retry_after_max=0.1))

    assert summary.counts == {"ok": len(ids), "cached": 0, "failed_permanent": 0, "failed_transient": 0}
    rows = manifest_rows(tmp_path / "manifest.parquet")
    assert set(rows) == set(ids)
    for pid in ids:
        ext = "png" if pid == 30 else "jpg"
        expected = served_bytes(pid, "original", ext, IMAGE_BYTES)
        path = tmp_path / f"{pid}.{ext}"
        assert path.read_bytes() == expected, pid
        assert rows[pid]["path"] == str(path.resolve())
        assert rows[pid]["bytes"] == len(expected)
        assert rows[pid]["status"] == "ok" and rows[pid]["http_status"] == 200
    assert rows[18]["attempts"] == 3 and rows[19]["attempts"] == 2 and rows[10]["attempts"] == 1
    # Nothing but the finished images: no .part files, no stray names.
    assert [p.name for p in files_in(tmp_path)] == sorted(f"{pid}.{'png' if pid == 30 else 'jpg'}" for pid in ids)


def test_permanent_failures_are_recorded_with_their_reason(mirror: MirrorServer, tmp_path: Path) -> None:
    mirror.set_faults({
        40: ["404"], 41: ["403"], 42: ["html"], 43: ["xml"], 44: ["410"],
        45: ["redirect:http://evil.example/photos/45/original.jpg"],
        46: ["xml429"],  # throttled forever: transient, gives up after the retries
    })
    base = mirror.base_url(HOST_A)
    tasks = [PhotoTask(pid, mirror.url(pid)) for pid in range(40, 47)] + [
        PhotoTask(47, "http://evil.example/photos/47/original.jpg"),
        PhotoTask(48, f"ftp://{HOST_A}/photos/48/original.jpg"),
        PhotoTask(49, "file:///etc/passwd"),
        PhotoTask(50, f"{base}/photos/50/original.jpg"),  # the one good photo
    ]
    summary = run_download(tasks, tmp_path, tmp_path / "m.parquet", fast_config(try_other_host=False))
    rows = manifest_rows(tmp_path / "m.parquet")

    allow_hint = "allow it with --allow-host or INAT_ALLOWED_HOSTS"
    expected = {
        40: "HTTP 404 Not Found",
        41: "HTTP 403 Forbidden",
        42: "not an image: an HTML page (text/html)",
        43: "not an image: an XML document (application/xml)",
        44: "HTTP 410 Gone",
        45: f"redirect refused: host not allowed: evil.example; {allow_hint}",
        47: f"host not allowed: evil.example; {allow_hint}",
        48: "unsupported URL scheme 'ftp': only http and https",
        49: "unsupported URL scheme 'file': only http and https",
    }
    for pid, reason in expected.items():
        assert rows[pid]["status"] == "failed_permanent", pid
        assert rows[pid]["error"] == reason, pid
        assert rows[pid]["path"] is None and rows[pid]["bytes"] is None
    assert rows[46]["status"] == "failed_transient" and rows[46]["http_status"] == 429
    assert rows[46]["attempts"] == 4  # 1 + retries
    assert mirror.hits("/photos/40/original.jpg") == 1  # permanent: asked once, not again
    assert mirror.total_hits == 6 + 4 + 1  # 40-45 once, 46 four times, 50 once; nothing for 47-49
    assert summary.permanent_failed == 9 and summary.transient_failed == 1 and summary.ok == 1
    assert [p.name for p in files_in(tmp_path)] == ["50.jpg"]


def test_request_deadline_ends_a_stalled_response(mirror: MirrorServer, tmp_path: Path) -> None:
    # Half a body and then silence, with a read timeout longer than the deadline: the deadline
    # must end each attempt, and the run must end with the photo settled.
    mirror.set_faults({55: ["stall"]})
    started = time.monotonic()
    summary = run_download([PhotoTask(55, mirror.url(55))], tmp_path, tmp_path / "m.parquet",
                           fast_config(read_timeout=30, request_deadline=0.3, retries=1))
    assert time.monotonic() - started < 5
    assert summary.transient_failed == 1
    assert summary.top_errors == [("request deadline exceeded", 1)]
    assert manifest_rows(tmp_path / "m.parquet")[55]["error"] == "request deadline exceeded (0.3 s)"
    assert files_in(tmp_path) == []


@pytest.mark.parametrize("transport", ["aiohttp", "httpcore"])
def test_read_timeout_ends_a_silent_response(mirror: MirrorServer, tmp_path: Path, transport: str) -> None:
    # Half a body and then silence, with a long deadline: the read timeout ends the attempt.
    mirror.set_faults({56: ["stall"]})
    started = time.monotonic()
    summary = run_download([PhotoTask(56, mirror.url(56))], tmp_path, tmp_path / "m.parquet",
                           fast_config(read_timeout=0.3, request_deadline=30, retries=0, transport=transport))
    assert time.monotonic() - started < 3
    assert manifest_rows(tmp_path / "m.parquet")[56]["error"] == "ReadTimeout"
    assert summary.transient_failed == 1


def test_request_limits_keep_an_outside_cancellation_a_cancellation() -> None:
    async def main() -> None:
        clock = RequestClock()

        async def held(seconds: float, limit_s: float) -> str:
            async with clock.limit(limit_s, 60.0):
                await asyncio.sleep(seconds)
            return "done"

        with pytest.raises(TimeoutError):
            await held(5, 0.05)
        quiet = asyncio.create_task(held(5, 60))
        await asyncio.sleep(0.05)
        quiet.cancel()
        with pytest.raises(asyncio.CancelledError):
            await quiet
        assert await held(0.01, 60) == "done"
        assert not clock._limits  # nothing left behind to sweep

    asyncio.run(main())


def test_request_limits_count_silence_only_while_waiting_for_the_server() -> None:
    async def main() -> None:
        clock = RequestClock()
        async with clock.limit(60.0, 0.2) as limit:
            limit.hold()  # waiting for the body budget: not the server's silence
            await asyncio.sleep(0.6)
            limit.heard()
            for _ in range(15):  # bytes every 0.02 s: never 0.2 s of silence
                await asyncio.sleep(0.02)
                limit.heard()
        with pytest.raises(httpx.ReadTimeout, match=r"no bytes received for 0\.2 s"):
            async with clock.limit(60.0, 0.2):
                await asyncio.sleep(5)

    asyncio.run(main())


def test_size_cap(mirror: MirrorServer, tmp_path: Path) -> None:
    mirror.set_faults({61: ["nolength"]})
    tasks = [PhotoTask(60, mirror.url(60)), PhotoTask(61, mirror.url(61))]
    run_download(tasks, tmp_path, tmp_path / "m.parquet", fast_config(max_bytes=1000))
    rows = manifest_rows(tmp_path / "m.parquet")
    assert rows[60]["error"] == "too large: Content-Length over max_bytes (1000)"
    assert rows[61]["error"] == "too large: body over max_bytes (1000)"
    assert files_in(tmp_path) == []


def test_other_host_fallback(mirror: MirrorServer, tmp_path: Path) -> None:
    mirror.set_faults({70: ["404"], 71: ["403"], 72: ["404"]}, host=HOST_A)
    mirror.set_faults({72: ["404"]}, host=HOST_B)
    tasks = [PhotoTask(pid, mirror.url(pid, "medium", host=HOST_A)) for pid in (70, 71, 72)]
    run_download(tasks, tmp_path, tmp_path / "m.parquet", fast_config())
    rows = manifest_rows(tmp_path / "m.parquet")
    for pid in (70, 71):
        assert rows[pid]["status"] == "ok"
        assert rows[pid]["url"] == mirror.url(pid, "medium", host=HOST_B)
        assert (tmp_path / f"{pid}.jpg").read_bytes() == served_bytes(pid, "medium", "jpg", IMAGE_BYTES)
        assert mirror.hits(f"/photos/{pid}/medium.jpg", HOST_B) == 1
    assert rows[72]["status"] == "failed_permanent"
    assert rows[72]["error"] == "HTTP 404 Not Found; other host: HTTP 404 Not Found"


def test_no_fallback_to_a_host_that_is_not_allowed(mirror: MirrorServer, tmp_path: Path) -> None:
    mirror.set_faults({73: ["404"]}, host=HOST_A)
    run_download([PhotoTask(73, mirror.url(73))], tmp_path, tmp_path / "m.parquet",
                 fast_config(allowed_hosts=(ANY_PORT_A,)))
    assert manifest_rows(tmp_path / "m.parquet")[73]["error"] == "HTTP 404 Not Found"
    assert mirror.hits("/photos/73/original.jpg", HOST_B) == 0


def test_rerun_touches_the_network_for_nothing_already_done(mirror: MirrorServer, tmp_path: Path) -> None:
    mirror.set_faults({85: ["404"]})
    tasks = [PhotoTask(pid, mirror.url(pid)) for pid in range(80, 90)]
    dest = lambda pid: tmp_path / batch_key(pid, 5)  # noqa: E731 -- two batch folders
    first = run_download(tasks, dest, tmp_path / "m.parquet", fast_config(try_other_host=False))
    assert first.ok == 9 and first.permanent_failed == 1
    hits = mirror.total_hits

    second = run_download(tasks, dest, tmp_path / "m2.parquet", fast_config(try_other_host=False),
                          previous_manifest=tmp_path / "m.parquet")
    assert second.cached == 9 and second.ok == 0
    assert mirror.total_hits == hits + 1  # only the failed photo is asked again
    rows = manifest_rows(tmp_path / "m2.parquet")
    assert rows[81]["status"] == "cached" and rows[81]["attempts"] == 0
    assert rows[81]["sha256"] == manifest_rows(tmp_path / "m.parquet")[81]["sha256"]

    # A file cut short (size differs from the manifest) and one that is not an image are refetched.
    short = tmp_path / "batch-000016" / "81.jpg"
    short.write_bytes(short.read_bytes()[:100])
    bogus = tmp_path / "batch-000016" / "82.jpg"
    bogus.write_bytes(b"<?xml version='1.0'?><Error/>")
    third = run_download(tasks, dest, tmp_path / "m3.parquet", fast_config(try_other_host=False),
                         previous_manifest=tmp_path / "m.parquet")
    assert third.ok == 2 and third.cached == 7
    assert short.read_bytes() == served_bytes(81, "original", "jpg", IMAGE_BYTES)
    assert bogus.read_bytes() == served_bytes(82, "original", "jpg", IMAGE_BYTES)


def test_stale_part_files_are_removed_and_manifests_beside_them_kept(mirror: MirrorServer, tmp_path: Path) -> None:
    (tmp_path / ".90.jpg.abc123.part").write_bytes(b"half")
    other_manifest_tmp = tmp_path / ".other.parquet.xyz.part"  # another run's manifest in progress
    other_manifest_tmp.write_bytes(b"...")
    run_download([PhotoTask(90, mirror.url(90))], tmp_path, tmp_path / "m.parquet", fast_config())
    assert not (tmp_path / ".90.jpg.abc123.part").exists()
    assert other_manifest_tmp.exists()
    assert (tmp_path / "90.jpg").exists()


def test_retry_after_is_honoured_and_pauses_the_whole_host(mirror: MirrorServer, tmp_path: Path) -> None:
    mirror.set_faults({100: ["429:1", "ok"]})
    tasks = [PhotoTask(100, mirror.url(100))] + [PhotoTask(pid, mirror.url(pid)) for pid in range(101, 121)]
    started = time.monotonic()
    summary = run_download(tasks, tmp_path, tmp_path / "m.parquet", fast_config(concurrency=1, retry_after_max=5))
    elapsed = time.monotonic() - started
    assert summary.ok == 21
    assert elapsed >= 1.0
    # With one worker the order is strict anyway; the point is that the pause held the host:
    rows = manifest_rows(tmp_path / "m.parquet")
    assert rows[100]["attempts"] == 2 and rows[100]["seconds"] >= 1.0


def test_parse_retry_after() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    in_a_minute = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 60))
    assert 55 <= (parse_retry_after(in_a_minute) or 0) <= 61
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


def test_request_rate_limit_spaces_requests(mirror: MirrorServer, tmp_path: Path) -> None:
    config = fast_config(host_limits={HOST_A: HostLimits(requests_per_second=20)})
    started = time.monotonic()
    run_download([PhotoTask(pid, mirror.url(pid)) for pid in range(130, 140)], tmp_path, tmp_path / "m.parquet", config)
    assert time.monotonic() - started >= 9 / 20 - 0.01


def test_progress_reports_and_lazy_input(mirror: MirrorServer, tmp_path: Path) -> None:
    pulled: list[int] = []

    def tasks():  # a generator: the engine must never hold more than `concurrency` of it
        for pid in range(150, 190):
            pulled.append(pid)
            yield PhotoTask(pid, mirror.url(pid))

    seen = []

    def on_progress(p):  # called at the end at least
        seen.append(p)
        assert len(pulled) - p.done <= 4

    summary = run_download(tasks(), tmp_path, tmp_path / "m.parquet", fast_config(concurrency=4),
                           on_progress=on_progress, progress_interval=0.05, total=40)
    assert summary.ok == 40
    assert seen and seen[-1].done == 40 and seen[-1].total == 40 and seen[-1].eta_seconds == 0


def test_manifest_only_appears_when_the_run_completes(mirror: MirrorServer, tmp_path: Path) -> None:
    def tasks():
        yield PhotoTask(200, mirror.url(200))
        raise RuntimeError("input broke")

    with pytest.raises(RuntimeError, match="input broke"):
        run_download(tasks(), tmp_path, tmp_path / "m.parquet", fast_config(concurrency=2))
    assert not (tmp_path / "m.parquet").exists()
    assert not list(tmp_path.glob(".*.part"))


def test_default_config_keeps_static_under_the_media_budget() -> None:
    config = DownloadConfig()
    static = config.limits_for("static.inaturalist.org")
    assert static.bytes_per_hour is not None and static.bytes_per_hour < 5_000_000_000
    assert static.bytes_per_day is not None and static.bytes_per_day < 24_000_000_000
    assert static.requests_per_second is not None
    assert config.limits_for("inaturalist-open-data.s3.amazonaws.com").unlimited
    assert config.allowed_hosts == ("inaturalist-open-data.s3.amazonaws.com", "static.inaturalist.org")
    assert config.user_agent.startswith("inat-assets/")
    assert "me@example.org" in DownloadConfig(contact="me@example.org").user_agent
    with pytest.raises(DownloadError, match="must be printable ASCII"):
        DownloadConfig(contact="zoë@example.org")  # refused when configured, not on the first request
