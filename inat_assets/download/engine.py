"""``run_download``: stream tasks through a pool of workers, write files and the manifest."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import ssl
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from inat_assets.download.config import (
    CACHED,
    FAILED_PERMANENT,
    FAILED_TRANSIENT,
    OK,
    STATUSES,
    DownloadConfig,
    PhotoTask,
)
from inat_assets.download.files import (
    find_existing,
    photo_ids_in,
    remove_stale_manifest_parts,
    remove_stale_photo_parts,
)
from inat_assets.download.manifest import ManifestRow, ManifestWriter, PreviousManifest
from inat_assets.download.network import make_transport
from inat_assets.download.photo_fetcher import Fetcher
from inat_assets.storage import atomic_write_bytes

log = logging.getLogger("inat_assets.download")

DestDir = Path | Callable[[int], Path]


@dataclass
class Progress:
    """A snapshot handed to ``on_progress``; ``total`` and ``eta_seconds`` are None when unknown."""

    done: int
    total: int | None
    ok: int
    failed: int
    skipped: int  # already on disk and valid ("cached")
    bytes: int  # downloaded in this run
    rate: float  # photos settled per second, this run
    eta_seconds: float | None
    elapsed: float
    note: str | None = None  # e.g. a host waiting for its byte budget


@dataclass
class DownloadSummary:
    total: int
    counts: dict[str, int]  # by status: ok, cached, failed_permanent, failed_transient
    bytes: int  # downloaded in this run
    seconds: float
    images_per_second: float  # photos downloaded (status ok) per second
    top_errors: list[tuple[str, int]]
    manifest_path: Path
    transient_failed: int = 0
    permanent_failed: int = 0
    ok: int = 0
    cached: int = 0

    @property
    def failed(self) -> int:
        return self.transient_failed + self.permanent_failed

    @classmethod
    def from_counts(
        cls, counts: Mapping[str, int], nbytes: int, seconds: float, top_errors: list[tuple[str, int]],
        manifest_path: Path,
    ) -> DownloadSummary:
        """The summary of a run (or of several worker processes' runs added up)."""
        by_status = {s: counts.get(s, 0) for s in STATUSES}
        return cls(
            total=sum(by_status.values()), counts=by_status, bytes=nbytes, seconds=seconds,
            images_per_second=by_status[OK] / seconds if seconds > 0 else 0.0,
            top_errors=top_errors, manifest_path=manifest_path,
            transient_failed=by_status[FAILED_TRANSIENT], permanent_failed=by_status[FAILED_PERMANENT],
            ok=by_status[OK], cached=by_status[CACHED],
        )


_LISTED_FOLDERS = 8  # folders whose file listing is kept (inputs sorted by photo id need one)

# Digits inside parentheses vary per photo ("received 20000 bytes"); drop them when grouping errors.
_VARIABLE_PART = re.compile(r"\s*\([^)]*\d[^)]*\)")


@dataclass
class _Run:
    config: DownloadConfig
    dest: DestDir
    previous: PreviousManifest
    writer: ManifestWriter
    total: int | None
    counts: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    downloaded_bytes: int = 0
    started: float = field(default_factory=time.monotonic)
    note: str | None = None
    clean_parts: bool = True  # False in worker processes: the parent cleans each folder once
    _folders: dict[Path, tuple[str, set[int]]] = field(default_factory=dict)
    _ssl: ssl.SSLContext | None = None

    def folder(self, photo_id: int) -> tuple[str, set[int]]:
        """The destination folder as a string, and the photo ids that had files there when it was
        first used in this run. Created, and cleared of stale .part files, on first use."""
        path = self.dest(photo_id) if callable(self.dest) else self.dest
        known = self._folders.get(path)
        if known is None:
            path.mkdir(parents=True, exist_ok=True)
            # Safe here: this runs before any worker of this run writes into the folder (no await
            # between the check and the removal), and a folder is written by one run at a time.
            if self.clean_parts:
                clean_folder(path)
            known = self._folders[path] = (str(path.resolve()), photo_ids_in(path))
            if len(self._folders) > _LISTED_FOLDERS:
                # Bounded memory for runs over many folders. Forgetting is safe: a folder seen
                # again is listed again, and then also shows the files this run wrote there.
                del self._folders[next(iter(self._folders))]
        return known

    def transport(self) -> httpx.AsyncHTTPTransport:
        if self._ssl is None:  # one context for all workers: loading CA certificates takes ~20 ms
            ca = self.config.ca_file
            self._ssl = ssl.create_default_context(cafile=ca) if ca else httpx.create_ssl_context()
        cfg = self.config
        return make_transport(self._ssl, http2=cfg.http2, fast=cfg.fast_network_backend)

    def set_note(self, note: str | None) -> None:
        self.note = note

    def settle(self, row: ManifestRow) -> None:
        self.writer.add(row)
        self.counts[row.status] += 1
        if row.error:
            self.errors[_VARIABLE_PART.sub("", row.error)] += 1

    def progress(self) -> Progress:
        elapsed = time.monotonic() - self.started
        c = self.counts
        done = sum(c.values())
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if self.total is not None and rate > 0 else None
        return Progress(
            done=done, total=self.total, ok=c[OK], failed=c[FAILED_PERMANENT] + c[FAILED_TRANSIENT],
            skipped=c[CACHED], bytes=self.downloaded_bytes, rate=rate,
            eta_seconds=max(eta, 0.0) if eta is not None else None, elapsed=elapsed, note=self.note,
        )


def clean_folder(path: Path) -> None:
    removed = remove_stale_photo_parts(path)
    if removed:
        log.info("removed %d stale .part files from %s", removed, path)


async def _process(run: _Run, fetcher: Fetcher, task: PhotoTask, transport: httpx.AsyncBaseTransport) -> ManifestRow:
    started = time.monotonic()
    photo_id = int(task.photo_id)
    folder, present = run.folder(photo_id)
    previous = run.previous.lookup(photo_id)
    existing = find_existing(folder, photo_id, previous[0] if previous else None) if photo_id in present else None
    if existing is not None:
        path, _, size, width, height = existing
        return ManifestRow(photo_id, task.url, path, CACHED, None, size, previous[1] if previous else None,
                           None, 0, None, time.monotonic() - started, width, height)
    result = await fetcher.fetch(task.url, transport)
    if result.status != OK or result.body is None:
        return ManifestRow(photo_id, result.url, None, result.status, result.http_status, None, None,
                           result.content_type, result.attempts, result.error, time.monotonic() - started)
    body = result.body
    path = f"{folder}/{photo_id}.{result.ext}"
    # Inline on purpose. Creating, writing and renaming a small file costs 0.3-0.5 ms of CPU on ext4
    # here, as much as the HTTP exchange, but both alternatives measured slower: a thread pool
    # (GIL hand-offs cost more than they saved) and a helper process fed through a pipe (copying
    # and context switches). DownloadConfig.processes is the way to use more cores.
    digest = _store(path, body)
    run.downloaded_bytes += len(body)
    return ManifestRow(photo_id, result.url, path, OK, 200, len(body), digest,
                       result.content_type, result.attempts, None, time.monotonic() - started,
                       result.width, result.height)


def _store(path: str, body: bytes) -> str:
    # Temporary name then rename: a crash never leaves a partial file under the final name. No
    # fsync: after a power loss a file may be empty or short, and a rerun's magic-byte and size
    # checks catch that and fetch it again.
    atomic_write_bytes(Path(path), body)
    return hashlib.sha256(body).hexdigest()


async def _worker(run: _Run, fetcher: Fetcher, tasks: Iterator[PhotoTask]) -> None:
    transport: httpx.AsyncHTTPTransport | None = None
    try:
        # Workers pull from one shared iterator: next() runs without an await, so no two workers
        # see the same item, and at most `concurrency` tasks are ever out of the input.
        for task in tasks:
            if transport is None:
                transport = run.transport()  # per worker: its pool never has two requests at once
            run.settle(await _process(run, fetcher, task, transport))
    finally:
        if transport is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await transport.aclose()


async def _report(run: _Run, on_progress: Callable[[Progress], None], interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        _emit(run, on_progress)


def _emit(run: _Run, on_progress: Callable[[Progress], None]) -> None:
    try:
        on_progress(run.progress())
    except Exception:  # a broken progress display must not stop a long download
        log.exception("on_progress failed")


async def _download(
    tasks: Iterable[PhotoTask],
    dest_dir: DestDir,
    manifest_path: Path,
    config: DownloadConfig,
    previous_manifest: Path | None,
    on_progress: Callable[[Progress], None] | None,
    progress_interval: float,
    total: int | None,
    top_errors: int = 10,
    clean_parts: bool = True,
) -> DownloadSummary:
    previous = PreviousManifest.load(previous_manifest)
    remove_stale_manifest_parts(manifest_path)
    if total is None and hasattr(tasks, "__len__"):
        total = len(tasks)  # type: ignore[arg-type]
    with ManifestWriter(manifest_path) as writer:
        run = _Run(config, dest_dir, previous, writer, total, clean_parts=clean_parts)
        fetcher = Fetcher(config, note=run.set_note)
        iterator = iter(tasks)
        reporter = asyncio.create_task(_report(run, on_progress, progress_interval)) if on_progress else None
        workers = [asyncio.create_task(_worker(run, fetcher, iterator)) for _ in range(config.concurrency)]
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()
            if reporter is not None:
                reporter.cancel()
            await asyncio.gather(*workers, *([reporter] if reporter else []), return_exceptions=True)
    seconds = time.monotonic() - run.started
    if on_progress:
        _emit(run, on_progress)
    return DownloadSummary.from_counts(
        run.counts, run.downloaded_bytes, seconds, run.errors.most_common(top_errors), manifest_path
    )


def run_download(
    tasks: Iterable[PhotoTask],
    dest_dir: DestDir,
    manifest_path: Path,
    config: DownloadConfig | None = None,
    *,
    previous_manifest: Path | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    progress_interval: float = 5.0,
    total: int | None = None,
) -> DownloadSummary:
    """Download every task's photo to ``dest_dir`` and write one manifest row per task.

    ``tasks`` is consumed lazily, at most ``config.concurrency`` at a time. ``dest_dir`` is a folder
    or a function from photo id to folder (e.g. batch folders). Files are named
    ``<photo_id>.<ext>`` with the extension taken from the bytes. A photo already on disk and valid
    is not fetched again (status "cached"); ``previous_manifest`` adds a size check for those.
    The manifest appears at ``manifest_path`` only when every task has settled. ``total`` (or
    ``len(tasks)``) only feeds the progress ETA. Blocks until done; safe to call from a thread that
    runs an event loop (it then runs in a thread of its own).
    """
    config = config or DownloadConfig()
    if config.processes > 1:
        from inat_assets.download.processes import run_in_processes

        return run_in_processes(tasks, dest_dir, manifest_path, config, previous_manifest, on_progress,
                                progress_interval, total)
    return _run_sync(tasks, dest_dir, manifest_path, config, previous_manifest, on_progress, progress_interval, total)


def _run_sync(
    tasks: Iterable[PhotoTask],
    dest_dir: DestDir,
    manifest_path: Path,
    config: DownloadConfig,
    previous_manifest: Path | None,
    on_progress: Callable[[Progress], None] | None,
    progress_interval: float,
    total: int | None,
    top_errors: int = 10,
    clean_parts: bool = True,
) -> DownloadSummary:
    coro = _download(tasks, dest_dir, manifest_path, config, previous_manifest, on_progress, progress_interval,
                     total, top_errors, clean_parts)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(1, thread_name_prefix="inat-download") as pool:
        return pool.submit(asyncio.run, coro).result()
