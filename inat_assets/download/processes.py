"""Running the engine in several worker processes (``DownloadConfig.processes > 1``).

One event loop tops out at one core: HTTP parsing (h11), the atomic file writes and hashing all
hold the GIL for part of their time. With N processes the parent only reads the input and hands
out chunks of tasks through one shared queue (so a slow process never holds up the others), each
child runs the ordinary single-process engine into its own part manifest, and the parent merges
the parts into the final manifest at the end. Memory stays bounded: at most a few chunks per
process are ever queued.

Per-host limits are divided by N, since each child keeps its own budget counters.
"""

from __future__ import annotations

import multiprocessing as mp
import pickle
import queue
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from inat_assets.download.config import (
    CACHED,
    FAILED_PERMANENT,
    FAILED_TRANSIENT,
    OK,
    DownloadConfig,
    HostLimits,
    PhotoTask,
)
from inat_assets.download.engine import DownloadSummary, Progress, _run_sync, clean_folder
from inat_assets.download.files import remove_stale_manifest_parts
from inat_assets.download.manifest import ManifestWriter
from inat_assets.photos import BatchFolders  # noqa: F401 -- re-exported: the folder rule lives in inat_assets.photos

_CHUNK = 64  # tasks per queue message: big enough to make pickling cheap, small enough to balance
_POLL = 0.2


def _share(limits: HostLimits, n: int) -> HostLimits:
    """One process's share of a host's limits."""
    rps, hour, day = limits.requests_per_second, limits.bytes_per_hour, limits.bytes_per_day
    return HostLimits(
        None if rps is None else rps / n, None if hour is None else hour // n, None if day is None else day // n
    )


def child_config(config: DownloadConfig) -> DownloadConfig:
    n = config.processes
    return replace(
        config,
        processes=1,
        concurrency=max(1, config.concurrency // n),
        host_limits={host: _share(lim, n) for host, lim in config.host_limits.items()},
        other_hosts=dict(config.other_hosts),  # plain dicts: MappingProxyType does not pickle
        default_limits=_share(config.default_limits, n),
    )


def _child_main(index: int, tasks_q: Any, results_q: Any, dest_dir: Any, part: Path, config: DownloadConfig,
                previous_manifest: Path | None, interval: float) -> None:
    def tasks() -> Iterable[PhotoTask]:
        while True:
            chunk = tasks_q.get()
            if chunk is None:
                return
            for photo_id, url in chunk:
                yield PhotoTask(photo_id, url)

    def progress(p: Progress) -> None:
        results_q.put(("progress", index, (p.ok, p.failed, p.skipped, p.bytes, p.note)))

    try:
        summary = _run_sync(tasks(), dest_dir, part, config, previous_manifest, progress, interval, None, 100,
                            clean_parts=False)
        results_q.put(("done", index, (summary.counts, summary.bytes, summary.top_errors)))
    except BaseException:
        results_q.put(("error", index, traceback.format_exc()))
        raise


def run_in_processes(
    tasks: Iterable[PhotoTask],
    dest_dir: Path | Callable[[int], Path],
    manifest_path: Path,
    config: DownloadConfig,
    previous_manifest: Path | None,
    on_progress: Callable[[Progress], None] | None,
    progress_interval: float,
    total: int | None,
) -> DownloadSummary:
    try:
        pickle.dumps(dest_dir)
    except Exception as exc:
        raise TypeError(
            "with processes > 1, dest_dir must be picklable (a Path, or BatchFolders instead of a lambda)"
        ) from exc
    n = config.processes
    remove_stale_manifest_parts(manifest_path)
    ctx = mp.get_context("spawn")  # fork is unsafe in a process that may run other threads (Dagster)
    tasks_q = ctx.Queue(maxsize=4 * n)
    results_q = ctx.Queue()
    # Named so that a crashed run's parts are removed by remove_stale_manifest_parts next time.
    parts = [manifest_path.parent / f".{manifest_path.name}.proc{i}.part" for i in range(n)]
    cfg = child_config(config)
    children = [
        ctx.Process(target=_child_main, name=f"inat-download-{i}", daemon=True,
                    args=(i, tasks_q, results_q, dest_dir, parts[i], cfg, previous_manifest, progress_interval))
        for i in range(n)
    ]
    started = time.monotonic()
    for child in children:
        child.start()

    stop = threading.Event()
    feed_error: list[BaseException] = []

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                tasks_q.put(item, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    cleaned: set[Path] = set()

    def feed() -> None:
        try:
            chunk: list[tuple[int, str]] = []
            for task in tasks:
                photo_id = int(task.photo_id)
                # Stale .part files are removed here, once per folder, before any task for that
                # folder is handed out: a child doing it could delete another child's live files.
                folder = dest_dir(photo_id) if callable(dest_dir) else dest_dir
                if folder not in cleaned:
                    cleaned.add(folder)
                    if folder.is_dir():
                        clean_folder(folder)
                chunk.append((photo_id, task.url))
                if len(chunk) >= _CHUNK:
                    if not put(chunk):
                        return
                    chunk = []
            if chunk:
                put(chunk)
        except BaseException as exc:  # handed to the main thread, which raises it
            feed_error.append(exc)
        finally:
            for _ in range(n):
                put(None)

    feeder = threading.Thread(target=feed, name="inat-download-feed", daemon=True)
    feeder.start()

    latest: dict[int, tuple[Any, ...]] = {}
    finished: dict[int, tuple[Any, ...]] = {}
    errors: list[str] = []
    last_report = time.monotonic()
    try:
        while len(finished) < n and not errors:
            try:
                kind, index, payload = results_q.get(timeout=_POLL)
            except queue.Empty:
                if any(c.exitcode not in (None, 0) for c in children) and results_q.empty():
                    errors.append("a download process died: " + ", ".join(
                        f"{c.name} exit code {c.exitcode}" for c in children if c.exitcode not in (None, 0)))
                kind = ""
            if kind == "progress":
                latest[index] = payload
            elif kind == "done":
                finished[index] = payload
            elif kind == "error":
                errors.append(payload)
            if on_progress and time.monotonic() - last_report >= progress_interval:
                last_report = time.monotonic()
                on_progress(_progress(latest, finished, started, total))
        if errors or feed_error:
            raise feed_error[0] if feed_error else RuntimeError("download process failed:\n" + errors[0])
        for child in children:
            child.join()
        with ManifestWriter(manifest_path) as writer:  # merge the parts, one row group at a time
            for part in parts:
                for batch in pq.ParquetFile(part).iter_batches():
                    writer.write_batch(batch)
    finally:
        stop.set()
        for child in children:
            if child.is_alive():
                child.terminate()
            child.join(5)
        for part in parts:
            part.unlink(missing_ok=True)

    seconds = time.monotonic() - started
    counts: Counter[str] = Counter()
    errors_by_reason: Counter[str] = Counter()
    downloaded = 0
    for child_counts, child_bytes, child_errors in finished.values():
        counts.update(child_counts)
        downloaded += child_bytes
        errors_by_reason.update(dict(child_errors))
    if on_progress:
        on_progress(_progress({}, finished, started, total))
    return DownloadSummary.from_counts(counts, downloaded, seconds, errors_by_reason.most_common(10), manifest_path)


def _progress(latest: dict[int, tuple[Any, ...]], finished: dict[int, tuple[Any, ...]], started: float,
              total: int | None) -> Progress:
    ok = failed = skipped = nbytes = 0
    notes = []
    for index, (p_ok, p_failed, p_skipped, p_bytes, note) in latest.items():
        if index in finished:
            continue
        ok, failed, skipped, nbytes = ok + p_ok, failed + p_failed, skipped + p_skipped, nbytes + p_bytes
        if note:
            notes.append(note)
    for counts, child_bytes, _ in finished.values():
        ok += counts[OK]
        failed += counts[FAILED_PERMANENT] + counts[FAILED_TRANSIENT]
        skipped += counts[CACHED]
        nbytes += child_bytes
    elapsed = time.monotonic() - started
    done = ok + failed + skipped
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = max((total - done) / rate, 0.0) if total is not None and rate > 0 else None
    return Progress(done=done, total=total, ok=ok, failed=failed, skipped=skipped, bytes=nbytes,
                         rate=rate, eta_seconds=eta, elapsed=elapsed, note=notes[0] if notes else None)
