"""The download engine: the description of a job, its results, and the in-process runner.

A download is one ``DownloadJob`` (tasks, destination, manifest, previous manifest, config, progress
interval, total). ``inat_assets.download.runner.run(job, on_progress)`` takes the job's lock and hands
it to a runner with that same signature: ``run_in_process`` here (one event loop) or
``inat_assets.download.processes.run_in_processes`` (worker processes, each running this module's
loop). This module imports neither of the others.

Per photo: the folder listing says whether it may be on file (``PhotoWriter.list_ids``, once per
folder); if so ``PhotoWriter.check`` validates it; otherwise ``Fetcher.fetch`` gets it (the body
hashed as it arrives) and ``PhotoWriter.write`` stores it, and one manifest row records it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from inat_assets.download.config import (
    CACHED,
    FAILED_PERMANENT,
    FAILED_TRANSIENT,
    OK,
    STATUSES,
    DownloadConfig,
    PhotoTask,
    parse_photo_id,
)
from inat_assets.download.manifest import ManifestRow, ManifestWriter, PreviousManifest
from inat_assets.download.writer import LocalWriter, PhotoWriter

if TYPE_CHECKING:
    import httpx

    from inat_assets.download.photo_fetcher import Fetcher

# The HTTP stack (httpx, aiohttp, httpcore: network.py, httpcore_transport.py, photo_fetcher.py) is
# imported by the event loops that fetch, not with this module: the parent of worker processes never
# fetches, and leaving it out keeps 31 MB out of its resident memory (bench/download.py measures
# the whole process tree).

log = logging.getLogger("inat_assets.download")

DestDir = Path | Callable[[int], Path]
ProgressCallback = Callable[["Progress"], None]


@dataclass(frozen=True)
class DownloadJob:
    """Everything one download run needs, in one value.

    ``tasks`` is consumed lazily by the process that runs the job and never pickled: worker
    processes get ``without_tasks()`` and receive their tasks in chunks. Everything else pickles
    (with ``processes > 1``, ``dest_dir`` must be a Path or ``BatchFolders``, not a lambda).
    """

    tasks: Iterable[PhotoTask]
    dest_dir: DestDir  # a folder, or photo id -> folder
    manifest_path: Path  # appears only when every task has settled
    config: DownloadConfig = field(default_factory=DownloadConfig)
    previous_manifest: Path | None = None  # adds a size check for photos already on disk
    progress_interval: float = 5.0  # seconds between on_progress calls
    total: int | None = None  # only for the progress ETA; len(tasks) when tasks has a length
    writer: PhotoWriter = field(default_factory=LocalWriter)  # where the photos go (writer.py)

    @property
    def lock_path(self) -> Path:
        """One run at a time per manifest: it guards the manifest and its temporary files."""
        return self.manifest_path.parent / f".{self.manifest_path.name}.lock"

    def expected_total(self) -> int | None:
        if self.total is None and hasattr(self.tasks, "__len__"):
            return len(self.tasks)  # type: ignore[arg-type]
        return self.total

    def without_tasks(self) -> DownloadJob:
        return replace(self, tasks=())


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


# Distinct photo ids remembered for spotting duplicates in the input: about 7 MB of Python ints and
# set slots. Exact for input sorted by photo id (fetch.parquet and every image batch are: repeats
# are then neighbours); in unsorted input a repeat further back than this is not recognised.
RECENT_IDS = 65_536
_INVALID_EXAMPLES = 5


class InputScreen:
    """Drops tasks whose photo id is unusable or already seen, and counts both (bounded memory).

    A photo listed twice must be fetched once and get one manifest row: two concurrent fetches
    into one file leave a manifest that disagrees with the disk. Both runners apply this in the
    process that reads the input, before any task is handed out.
    """

    def __init__(self, window: int = RECENT_IDS) -> None:
        self.window = window
        self.duplicates = 0
        self.invalid = 0
        self.invalid_examples: list[str] = []
        self.unsorted = False
        self._recent: set[int] = set()
        self._order: deque[int] = deque()
        self._highest = -1

    def __call__(self, tasks: Iterable[PhotoTask]) -> Iterator[PhotoTask]:
        recent, order = self._recent, self._order
        for position, task in enumerate(tasks):
            photo_id = parse_photo_id(task.photo_id)
            if photo_id is None:
                self.invalid += 1
                if len(self.invalid_examples) < _INVALID_EXAMPLES:
                    self.invalid_examples.append(f"task {position}: photo_id {task.photo_id!r}")
                continue
            if photo_id <= self._highest:  # cannot be new when the input is sorted
                if photo_id in recent:
                    self.duplicates += 1
                    continue
                self.unsorted = True
            else:
                self._highest = photo_id
            recent.add(photo_id)
            order.append(photo_id)
            if len(order) > self.window:
                recent.discard(order.popleft())
            yield task if type(task.photo_id) is int else PhotoTask(photo_id, task.url)

    def warnings(self) -> list[str]:
        notes = []
        if self.invalid:
            notes.append(f"{self.invalid:,} tasks with an unusable photo id were skipped: "
                         + "; ".join(self.invalid_examples))
        if self.unsorted:
            notes.append(f"the input is not sorted by photo id: repeats more than {self.window:,} photos "
                         "apart were not recognised as duplicates (sort the input to be sure)")
        return notes


@dataclass
class DownloadSummary:
    total: int  # tasks settled: one manifest row each
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
    duplicates: int = 0  # input tasks dropped because their photo id came earlier
    invalid: int = 0  # input tasks dropped because their photo id is unusable (not in the manifest)
    warnings: list[str] = field(default_factory=list)  # for the person running it (set-aside manifest, ...)

    @property
    def failed(self) -> int:
        return self.transient_failed + self.permanent_failed

    @classmethod
    def from_counts(
        cls, counts: Mapping[str, int], nbytes: int, seconds: float, top_errors: list[tuple[str, int]],
        manifest_path: Path, screen: InputScreen | None = None,
    ) -> DownloadSummary:
        """The summary of a run (or of several worker processes' runs added up)."""
        by_status = {s: counts.get(s, 0) for s in STATUSES}
        return cls(
            total=sum(by_status.values()), counts=by_status, bytes=nbytes, seconds=seconds,
            images_per_second=by_status[OK] / seconds if seconds > 0 else 0.0,
            top_errors=top_errors, manifest_path=manifest_path,
            transient_failed=by_status[FAILED_TRANSIENT], permanent_failed=by_status[FAILED_PERMANENT],
            ok=by_status[OK], cached=by_status[CACHED],
            duplicates=screen.duplicates if screen else 0, invalid=screen.invalid if screen else 0,
            warnings=screen.warnings() if screen else [],
        )


_LISTED_FOLDERS = 8  # folders whose file listing is kept (inputs sorted by photo id need one)

# Digits inside parentheses vary per photo ("received 20000 bytes"); drop them when grouping errors.
_VARIABLE_PART = re.compile(r"\s*\([^)]*\d[^)]*\)")


@dataclass
class _Run:
    config: DownloadConfig
    dest: DestDir
    previous: PreviousLookup
    writer: RowSink
    total: int | None
    counts: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    downloaded_bytes: int = 0
    started: float = field(default_factory=time.monotonic)
    note: str | None = None
    photos: PhotoWriter = field(default_factory=LocalWriter)
    clean_parts: bool = True  # False in worker processes: the parent cleans each folder once
    _folders: dict[Path, asyncio.Future[tuple[str, set[int]]]] = field(default_factory=dict)
    _ssl: ssl.SSLContext | None = None
    _shared: httpx.AsyncBaseTransport | None = None

    async def folder(self, photo_id: int) -> tuple[str, set[int]]:
        """The destination folder (the writer's form), and the ids of the photos there (listed on
        first use in this run, then kept up to date with this run's writes). Cleared of stale
        temporary files on first use. Not created here: the first photo written creates it, so a
        batch whose every photo failed leaves no empty folder behind."""
        path = self.dest(photo_id) if callable(self.dest) else self.dest
        known = self._folders.get(path)
        if known is None:
            # One listing per folder: workers that need it meanwhile wait for this same future.
            # Cleaning is safe here: it runs before any worker of this run writes into the folder
            # (they all wait for the listing), and one run at a time holds the lock.
            known = self._folders[path] = asyncio.get_running_loop().create_future()
            try:
                folder = self.photos.folder(path)
                if self.clean_parts:
                    clean_folder(self.photos, folder)
                known.set_result((folder, await self.photos.list_ids(folder)))
            except BaseException as exc:
                del self._folders[path]
                if isinstance(exc, asyncio.CancelledError):
                    known.cancel()
                else:
                    known.set_exception(exc)
                    known.exception()  # retrieved: the waiters, if any, get it raised
                raise
            if len(self._folders) > _LISTED_FOLDERS:
                # Bounded memory for runs over many folders. Forgetting is safe: a folder seen
                # again is listed again, and then also shows the files this run wrote there.
                del self._folders[next(iter(self._folders))]
        return await known

    def transport(self) -> tuple[httpx.AsyncBaseTransport, bool]:
        """The transport for a worker, and whether the worker owns it (and closes it when done):
        aiohttp's pool is shared by the whole run, httpcore's are per worker (see httpcore_transport.py)."""
        import httpx

        if self._ssl is None:  # one context for all workers: loading CA certificates takes ~20 ms
            ca = self.config.ca_file
            self._ssl = ssl.create_default_context(cafile=ca) if ca else httpx.create_ssl_context()
        cfg = self.config
        if cfg.uses_aiohttp:
            if self._shared is None:
                from inat_assets.download.network import AiohttpTransport

                self._shared = AiohttpTransport(self._ssl, max_connections=cfg.concurrency)
            return self._shared, False
        from inat_assets.download.httpcore_transport import make_transport

        return make_transport(self._ssl, http2=cfg.http2, fast=cfg.fast_network_backend), True

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


def clean_folder(photos: PhotoWriter, folder: str) -> None:
    removed = photos.clean(folder)
    if removed:
        log.info("removed %d stale .part files from %s", removed, folder)


async def _process(run: _Run, fetcher: Fetcher, task: PhotoTask, transport: httpx.AsyncBaseTransport) -> ManifestRow:
    started = time.monotonic()
    photo_id = int(task.photo_id)
    folder, present = await run.folder(photo_id)
    previous = run.previous.lookup(photo_id)
    if photo_id in present:
        existing = await run.photos.check(folder, photo_id, previous[0] if previous else None)
        if existing is not None:
            return ManifestRow(photo_id, task.url, existing.uri, CACHED, None, existing.size,
                               previous[1] if previous else None, None, 0, None, time.monotonic() - started,
                               existing.width, existing.height)
    result = await fetcher.fetch(task.url, transport)
    if result.status != OK or result.body is None:
        return ManifestRow(photo_id, result.url, None, result.status, result.http_status, None, None,
                           result.content_type, result.attempts, result.error, time.monotonic() - started)
    body = result.body
    try:
        # The body keeps its BodyBudget reservation until it is written: bodies waiting for the
        # writer count like bodies still arriving.
        uri = await run.photos.write(folder, photo_id, result.ext or "", body)
    finally:
        fetcher.release(result)
    present.add(photo_id)  # a repeat of this id that the input screen could not see finds the file
    run.downloaded_bytes += len(body)
    return ManifestRow(photo_id, result.url, uri, OK, 200, len(body), result.sha256,
                       result.content_type, result.attempts, None, time.monotonic() - started,
                       result.width, result.height)


async def _worker(run: _Run, fetcher: Fetcher, tasks: Iterator[PhotoTask]) -> None:
    transport: httpx.AsyncBaseTransport | None = None
    owned = False
    try:
        # Workers pull from one shared iterator: next() runs without an await, so no two workers
        # see the same item, and at most `concurrency` tasks are ever out of the input.
        for task in tasks:
            if transport is None:
                transport, owned = run.transport()
            run.settle(await _process(run, fetcher, task, transport))
    finally:
        if transport is not None and owned:
            await _close(transport)


async def _close(transport: httpx.AsyncBaseTransport) -> None:
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


class RowSink(Protocol):
    """Where settled rows go: a ManifestWriter, or a worker process's pipe to its parent."""

    def add(self, row: ManifestRow) -> None: ...


class PreviousLookup(Protocol):
    """``(bytes, sha256)`` a previous run recorded for a photo, or None (see PreviousManifest)."""

    def lookup(self, photo_id: int) -> tuple[int, str | None] | None: ...


async def _download(job: DownloadJob, on_progress: ProgressCallback | None, clean_parts: bool,
                    rows: RowSink | None, previous: PreviousLookup | None) -> tuple[_Run, float]:
    from inat_assets.download.photo_fetcher import Fetcher

    if previous is None:
        previous = PreviousManifest.load(job.previous_manifest)
    with contextlib.nullcontext(rows) if rows is not None else ManifestWriter(job.manifest_path) as writer:
        run = _Run(job.config, job.dest_dir, previous, writer, job.expected_total(), photos=job.writer,
                   clean_parts=clean_parts)
        fetcher = Fetcher(job.config, note=run.set_note)
        iterator = iter(job.tasks)
        reporter = (asyncio.create_task(_report(run, on_progress, job.progress_interval))
                    if on_progress else None)
        workers = [asyncio.create_task(_worker(run, fetcher, iterator)) for _ in range(job.config.concurrency)]
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()
            if reporter is not None:
                reporter.cancel()
            await asyncio.gather(*workers, *([reporter] if reporter else []), return_exceptions=True)
            fetcher.close()
            if run._shared is not None:
                await _close(run._shared)
            await run.photos.aclose()
    seconds = time.monotonic() - run.started
    if on_progress:
        _emit(run, on_progress)
    return run, seconds


def run_loop(job: DownloadJob, on_progress: ProgressCallback | None = None, *, clean_parts: bool = True,
             top_errors: int = 10, screen: InputScreen | None = None, rows: RowSink | None = None,
             previous: PreviousLookup | None = None) -> DownloadSummary:
    """Run ``job`` on one event loop, as is: no lock, no input screen (callers see to both).

    Blocks until done; safe to call from a thread that runs an event loop (it then runs in a thread
    of its own). Worker processes call this with ``clean_parts=False`` (their parent cleans), and
    with ``rows`` and ``previous`` from their parent instead of the job's manifest files.
    """
    coro = _download(job, on_progress, clean_parts, rows, previous)
    try:
        asyncio.get_running_loop()
        in_event_loop = True
    except RuntimeError:
        in_event_loop = False
    # Outside the except block: an engine error must not arrive chained to "no running event loop".
    if in_event_loop:
        with ThreadPoolExecutor(1, thread_name_prefix="inat-download") as pool:
            run, seconds = pool.submit(asyncio.run, coro).result()
    else:
        run, seconds = asyncio.run(coro)
    return DownloadSummary.from_counts(run.counts, run.downloaded_bytes, seconds,
                                       run.errors.most_common(top_errors), job.manifest_path, screen)


def run_in_process(job: DownloadJob, on_progress: ProgressCallback | None = None) -> DownloadSummary:
    """The in-process runner (``config.processes == 1``); ``runner.run`` calls it under the job's lock."""
    screen = InputScreen()
    job = replace(job, tasks=screen(job.tasks), total=job.expected_total())
    return run_loop(job, on_progress, screen=screen)
