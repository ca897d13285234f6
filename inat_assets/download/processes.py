"""The multi-process runner (``DownloadConfig.processes > 1``): ``run_in_processes(job, on_progress)``.

One event loop tops out at one core: HTTP parsing, the atomic file writes and hashing all hold
the GIL for part of their time. With N processes the parent reads the input, looks each photo up
in the previous manifest, and hands out chunks of tasks through one shared queue (so a slow
process never holds up the others); each child runs the ordinary single-process engine and sends
its manifest rows back in batches, which the parent writes into the one manifest. Children never
load pyarrow or NumPy (about 60 MB each): a child's resident memory is the interpreter, httpx and
aiohttp. Memory stays bounded: at most a few chunks per process are ever queued.

Per-host limits are divided by N, since each child keeps its own budget counters, unless the
config names a shared ledger (``host_budget``), which all children draw on; the memory budget for
response bodies (``config.body_budget``) and the concurrency are always divided by N.

Children die with their parent: each watches its parent's pid and leaves within a second or so of
the parent's death (a SIGKILLed parent cannot tell them to stop, and they would otherwise wait on
the task queue forever). The parent's lock on the manifest covers the children's part manifests.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue
import threading
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from inat_assets.download.config import (
    CACHED,
    FAILED_PERMANENT,
    FAILED_TRANSIENT,
    OK,
    DownloadConfig,
    HostLimits,
    PhotoTask,
    body_budget,
)
from inat_assets.download.engine import (
    DownloadJob,
    DownloadSummary,
    InputScreen,
    Progress,
    ProgressCallback,
    clean_folder,
    run_loop,
)
from inat_assets.download.manifest import ManifestRow, ManifestWriter, PreviousManifest
from inat_assets.errors import InatAssetsError
from inat_assets.photos import BatchFolders  # noqa: F401 -- re-exported: the folder rule lives in inat_assets.photos

_CHUNK = 64  # tasks per queue message: big enough to make pickling cheap, small enough to balance
_ROWS = 256  # manifest rows per message from a child
_POLL = 0.2
_ORPHAN_CHECK = 0.5  # seconds between a child's looks at whether its parent still lives


def _share(limits: HostLimits, n: int) -> HostLimits:
    """One process's share of a host's limits."""
    rps, hour, day = limits.requests_per_second, limits.bytes_per_hour, limits.bytes_per_day
    return HostLimits(
        None if rps is None else rps / n, None if hour is None else hour // n, None if day is None else day // n
    )


def child_config(config: DownloadConfig) -> DownloadConfig:
    n = config.processes or 1
    # With a shared ledger (host_budget) the children draw on one budget: each keeps the whole limits.
    limits_n = 1 if config.host_budget else n
    return replace(
        config,
        processes=1,
        concurrency=max(1, config.concurrency // n),
        body_budget=max(config.max_bytes, body_budget(config) // n),  # the run's bound holds for all together
        host_limits={host: _share(lim, limits_n) for host, lim in config.host_limits.items()},
        other_hosts=dict(config.other_hosts),  # plain dicts: MappingProxyType does not pickle
        default_limits=_share(config.default_limits, limits_n),
    )


def _exit_with_parent(parent_pid: int) -> None:
    """In a child: end this process as soon as the parent is gone (its pid is no longer our parent's).

    A thread, not the task queue: a child busy with requests (up to request_deadline each) does not
    read the queue for a while. os._exit because nobody is left to write the manifest; photo
    files are written atomically, so at most .part files remain, which the next run removes.
    """
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(_ORPHAN_CHECK)
        os._exit(3)

    threading.Thread(target=watch, name="inat-download-orphan-watch", daemon=True).start()


class _Previous:
    """In a child: what the parent found in the previous manifest for the tasks handed out."""

    def __init__(self) -> None:
        self.found: dict[int, tuple[int, str | None]] = {}

    def lookup(self, photo_id: int) -> tuple[int, str | None] | None:
        return self.found.pop(photo_id, None)  # asked once per task: memory stays with the tasks in flight


class _RowsToParent:
    """In a child: manifest rows, sent to the parent in batches of _ROWS."""

    def __init__(self, index: int, results_q: Any) -> None:
        self.index, self.results_q = index, results_q
        self.rows: list[tuple[Any, ...]] = []

    def add(self, row: ManifestRow) -> None:
        self.rows.append(tuple(row))  # a plain tuple pickles without the class
        if len(self.rows) >= _ROWS:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self.results_q.put(("rows", self.index, self.rows))
            self.rows = []


def _queued_tasks(tasks_q: Any, previous: _Previous) -> Iterator[PhotoTask]:
    while (chunk := tasks_q.get()) is not None:
        for photo_id, url, before in chunk:
            if before is not None:
                previous.found[photo_id] = before
            yield PhotoTask(photo_id, url)


def _child_main(index: int, parent_pid: int, job: DownloadJob, tasks_q: Any, results_q: Any) -> None:
    _exit_with_parent(parent_pid)

    def progress(p: Progress) -> None:
        results_q.put(("progress", index, (p.ok, p.failed, p.skipped, p.bytes, p.note)))

    try:
        previous, rows = _Previous(), _RowsToParent(index, results_q)
        child_job = replace(job, tasks=_queued_tasks(tasks_q, previous))
        summary = run_loop(child_job, progress, clean_parts=False, top_errors=100, rows=rows, previous=previous)
        rows.flush()
        results_q.put(("done", index, (summary.counts, summary.bytes, summary.top_errors)))
    except BaseException as exc:
        # Our own errors (a full disk, ...) travel as themselves, so the parent raises the same message.
        error = exc if isinstance(exc, InatAssetsError) else None
        results_q.put(("error", index, (error, traceback.format_exc())))
        raise


class _Feeder(threading.Thread):
    """Reads the input in the parent (screened for bad and repeated ids) and queues it in chunks.

    Stale .part files are removed here, once per folder, before any task for that folder is handed
    out: a child doing it could delete another child's live files.
    """

    def __init__(self, job: DownloadJob, screen: InputScreen, previous: PreviousManifest, tasks_q: Any,
                 children: int) -> None:
        super().__init__(name="inat-download-feed", daemon=True)
        self.job, self.screen, self.previous, self.tasks_q, self.children = job, screen, previous, tasks_q, children
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def put(self, item: Any) -> bool:
        while not self.stop.is_set():
            try:
                self.tasks_q.put(item, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    def run(self) -> None:
        dest, cleaned = self.job.dest_dir, set()
        try:
            chunk: list[tuple[int, str, tuple[int, str | None] | None]] = []
            lookup = self.previous.lookup
            for task in self.screen(self.job.tasks):
                folder = dest(task.photo_id) if callable(dest) else dest
                if folder not in cleaned:
                    cleaned.add(folder)
                    clean_folder(self.job.writer, self.job.writer.folder(folder))
                chunk.append((task.photo_id, task.url, lookup(task.photo_id)))
                if len(chunk) >= _CHUNK:
                    if not self.put(chunk):
                        return
                    chunk = []
            if chunk:
                self.put(chunk)
        except BaseException as exc:  # handed to the main thread, which raises it
            self.error = exc
        finally:
            for _ in range(self.children):
                self.put(None)


def run_in_processes(job: DownloadJob, on_progress: ProgressCallback | None = None) -> DownloadSummary:
    """The multi-process runner; ``runner.run`` calls it under the job's lock."""
    # Children read neither manifest: the parent looks up previous rows and writes the manifest.
    child_job = replace(job.without_tasks(), config=child_config(job.config), total=None, previous_manifest=None)
    try:
        pickle.dumps(child_job)
    except Exception as exc:
        raise TypeError(
            "with processes > 1, dest_dir must be picklable (a Path, or BatchFolders instead of a lambda)"
        ) from exc
    n = job.config.processes or 1
    total = job.expected_total()
    ctx = mp.get_context("spawn")  # fork is unsafe in a process that may run other threads (Dagster)
    tasks_q = ctx.Queue(maxsize=4 * n)
    results_q = ctx.Queue()
    children = [
        ctx.Process(target=_child_main, name=f"inat-download-{i}", daemon=True,
                    args=(i, os.getpid(), child_job, tasks_q, results_q))
        for i in range(n)
    ]
    screen = InputScreen()
    feeder = _Feeder(job, screen, PreviousManifest.load(job.previous_manifest), tasks_q, n)
    started = time.monotonic()
    try:
        with ManifestWriter(job.manifest_path) as writer:
            for child in children:
                child.start()
            feeder.start()
            finished = _collect(children, results_q, feeder, writer, on_progress, job.progress_interval,
                                started, total)
        for child in children:
            child.join()
    finally:
        feeder.stop.set()
        for child in children:
            if child.is_alive():
                child.terminate()
            if child.pid is not None:
                child.join(5)

    counts: Counter[str] = Counter()
    errors_by_reason: Counter[str] = Counter()
    downloaded = 0
    for child_counts, child_bytes, child_errors in finished.values():
        counts.update(child_counts)
        downloaded += child_bytes
        errors_by_reason.update(dict(child_errors))
    if on_progress:
        on_progress(_progress({}, finished, started, total))
    return DownloadSummary.from_counts(counts, downloaded, time.monotonic() - started,
                                       errors_by_reason.most_common(10), job.manifest_path, screen)


def _collect(children: list[Any], results_q: Any, feeder: _Feeder, writer: ManifestWriter,
             on_progress: ProgressCallback | None, interval: float, started: float,
             total: int | None) -> dict[int, tuple[Any, ...]]:
    """Write the children's rows and wait for each one's result, reporting progress; raise the
    first failure (child or input)."""
    latest: dict[int, tuple[Any, ...]] = {}
    finished: dict[int, tuple[Any, ...]] = {}
    last_report = time.monotonic()
    while len(finished) < len(children):
        try:
            kind, index, payload = results_q.get(timeout=_POLL)
        except queue.Empty:
            dead = [c for c in children if c.exitcode not in (None, 0)]
            if dead and results_q.empty():
                raise RuntimeError("a download process died: " + ", ".join(
                    f"{c.name} exit code {c.exitcode}" for c in dead)) from None
            kind = ""
        if feeder.error is not None:
            raise feeder.error
        if kind == "rows":
            writer.add_rows(payload)
        elif kind == "progress":
            latest[index] = payload
        elif kind == "done":
            finished[index] = payload
        elif kind == "error":
            error, trace = payload
            if error is not None:
                raise error
            raise RuntimeError("download process failed:\n" + trace)
        if on_progress and time.monotonic() - last_report >= interval:
            last_report = time.monotonic()
            on_progress(_progress(latest, finished, started, total))
    if feeder.error is not None:
        raise feeder.error
    return finished


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
