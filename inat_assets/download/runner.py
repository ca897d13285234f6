"""``run(job)``: one download run, under its lock, by the runner its ``config.processes`` asks for.

Everything both runners need first happens here, once, in the process that owns the run: the lock
on the manifest (a second run on the same manifest is refused, naming the holder, instead of
deleting the first run's temporary files), removing a dead run's temporary manifests, and setting
aside a previous manifest that cannot be read (instead of crashing every later run on it).
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable, Iterable
from dataclasses import replace

from inat_assets.download.config import DownloadConfig, PhotoTask
from inat_assets.download.engine import (
    DestDir,
    DownloadJob,
    DownloadSummary,
    Progress,
    ProgressCallback,
    run_in_process,
)
from inat_assets.download.files import remove_stale_manifest_parts
from inat_assets.download.manifest import set_aside_if_unreadable
from inat_assets.download.processes import run_in_processes
from inat_assets.download.writer import PhotoWriter
from inat_assets.locks import LockedError
from inat_assets.storage import StorePath, acquire_guard

log = logging.getLogger("inat_assets.download")

Runner = Callable[[DownloadJob, ProgressCallback | None], DownloadSummary]


def runner_for(config: DownloadConfig) -> Runner:
    return run_in_processes if (config.processes or 1) > 1 else run_in_process


def with_processes(job: DownloadJob) -> DownloadJob:
    """``job`` with its number of worker processes decided (``DownloadConfig.worker_processes``).

    Chosen automatically, worker processes need a picklable ``dest_dir``; with a lambda the run
    stays in one process rather than fail (an explicit ``processes > 1`` fails, naming the fix).
    """
    config = job.config
    processes = config.worker_processes(job.expected_total())
    if config.processes is None and processes > 1:
        try:
            pickle.dumps(job.dest_dir)
        except Exception:
            log.info("dest_dir cannot be pickled: downloading in one process (use BatchFolders for more)")
            processes = 1
    return replace(job, config=replace(config, processes=processes))


def run(job: DownloadJob, on_progress: ProgressCallback | None = None) -> DownloadSummary:
    """Download every task of ``job`` and write its manifest; see ``run_download`` for the rules.

    Raises ``LockedError`` when another live run holds this manifest, ``StorageError`` when the
    manifest's or photos' folder cannot be written (unwritable, full).
    """
    try:
        # flock beside a local manifest; a lease object beside one on a store (held across machines).
        lock = acquire_guard(job.lock_path, purpose=f"download into {job.manifest_path}")
    except LockedError as exc:
        raise LockedError(f"another download is writing {job.manifest_path}: {exc}") from None
    try:
        remove_stale_manifest_parts(job.manifest_path)  # only dead runs' files: we hold the lock
        warnings: list[str] = []
        if job.previous_manifest is not None:
            aside = set_aside_if_unreadable(job.previous_manifest)
            if aside is not None:
                warnings.append(aside)
                log.warning("%s", aside)
                job = replace(job, previous_manifest=None)
        job = with_processes(job)
        summary = runner_for(job.config)(job, on_progress)
    finally:
        lock.release()
    summary.warnings[:0] = warnings
    return summary


def run_download(
    tasks: Iterable[PhotoTask],
    dest_dir: DestDir,
    manifest_path: StorePath,
    config: DownloadConfig | None = None,
    *,
    previous_manifest: StorePath | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    progress_interval: float = 5.0,
    total: int | None = None,
    writer: PhotoWriter | None = None,
) -> DownloadSummary:
    """Download every task's photo to ``dest_dir`` and write one manifest row per photo id.

    ``tasks`` is consumed lazily, at most ``config.concurrency`` at a time (a few chunks per process
    with ``processes > 1``). ``dest_dir`` is a folder or a function from photo id to folder (e.g.
    ``BatchFolders``). Files are named ``<photo_id>.<ext>`` with the extension taken from the bytes.
    A photo already on disk and valid is not fetched again (status "cached"); ``previous_manifest``
    adds a size check for those. Tasks with an unusable photo id, and repeats of a photo id, are
    skipped and counted (``DownloadSummary.invalid``, ``.duplicates``). The manifest appears at
    ``manifest_path`` only when every task has settled. ``total`` (or ``len(tasks)``) only feeds
    the progress ETA. Blocks until done; safe to call from a thread that runs an event loop.
    ``writer`` is where photos go (default: files, `writer.LocalWriter`; objects on a store:
    `object_writer.photo_writer`).
    """
    job = DownloadJob(tasks, dest_dir, manifest_path, config or DownloadConfig(),  # type: ignore[arg-type]
                      previous_manifest=previous_manifest, progress_interval=progress_interval, total=total,  # type: ignore[arg-type]
                      **({"writer": writer} if writer is not None else {}))
    return run(job, on_progress)
