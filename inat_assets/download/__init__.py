"""The image download engine: plain Python (asyncio + httpx), no Dagster.

Typical use::

    from inat_assets.download import BatchFolders, DownloadConfig, DownloadJob, PhotoTask, run

    tasks = (PhotoTask(pid, url) for pid, url in rows)          # any iterable, consumed lazily
    job = DownloadJob(
        tasks,
        dest_dir=BatchFolders(root, 50_000),                    # or one Path, or any pid -> Path
        manifest_path=root / "manifest.parquet",
        config=DownloadConfig(contact="me@example.org"),
        previous_manifest=root / "manifest.parquet",            # optional: size checks on rerun
        progress_interval=5.0,
    )
    summary = run(job, on_progress=print)                       # or run_download(tasks, dest_dir, ...)

API
---
``HostLimits(requests_per_second, bytes_per_hour, bytes_per_day)``
    Politeness for one host (None = unlimited). Budgets are per run_download call, or shared by every
    run naming the same ledger in ``DownloadConfig.host_budget`` (``inat_assets.download.host_budget``).
``DownloadConfig(concurrency=256, processes=None, allowed_hosts=INAT_PHOTO_HOSTS,
host_limits=DEFAULT_HOST_LIMITS, retries=5, connect_timeout=10, read_timeout=30, request_deadline=120,
max_bytes=50 MB, body_budget=None, try_other_host=True, other_hosts=..., contact="", backoff_base=1,
backoff_max=60, retry_after_max=300, max_redirects=5, http2=False, ca_file=None, transport="aiohttp",
fast_network_backend=True, host_budget="")`` -- ``processes=None`` picks one worker process per
available core (at most 4; 1 for fewer than 1,000 known tasks); ``processes > 1`` runs worker
processes (body budget and concurrency split between them, and the host limits too unless
``host_budget`` names a shared ledger; see ``inat_assets.download.processes``).
``PhotoTask(photo_id, url)``
``DownloadJob(tasks, dest_dir, manifest_path, config=DownloadConfig(), previous_manifest=None,
progress_interval=5.0, total=None, writer=LocalWriter())``: one run, picklable apart from ``tasks``
(``without_tasks()``). ``writer`` is where photos go (``inat_assets.download.writer.PhotoWriter``).
``run(job, on_progress=None) -> DownloadSummary``: takes the lock ``.<manifest name>.lock`` beside the
manifest (``LockedError`` naming the holder if another live run has it), removes dead runs'
temporary manifests, sets an unreadable previous manifest aside, then runs
``engine.run_in_process`` or ``processes.run_in_processes`` (both ``(job, on_progress)``).
``run_download(tasks, dest_dir, manifest_path, config, *, previous_manifest=None, on_progress=None,
progress_interval=5.0, total=None) -> DownloadSummary``: builds the job and calls ``run``.
``parse_photo_id(value) -> int | None``: the rule for a usable photo id (0 .. 2**63-1).
``Progress``: done, total, ok, failed, skipped, bytes, rate, eta_seconds, elapsed, note
``DownloadSummary``: total, counts, bytes, seconds, images_per_second, top_errors, manifest_path,
transient_failed, permanent_failed, ok, cached, duplicates, invalid, warnings (and ``failed``)
``MANIFEST_SCHEMA``: photo_id, url, path, status, http_status, bytes, sha256, content_type, attempts,
error, seconds, width, height. One row per photo id, in completion order. ``url`` is the last URL
requested (after redirects, where the bytes came from).
``batch_key(photo_id, span) -> "batch-%06d" % (photo_id // span)``
``BatchFolders(root, span)``: ``root / batch_key(pid, span)`` as a picklable ``dest_dir``.
``allowed_hosts_from_env()``: ``INAT_ALLOWED_HOSTS`` (comma-separated), else the two iNat hosts.
Allowlist entries: ``host`` (ports 80/443), ``host:port`` or ``host:*`` (any port).

Statuses: ``ok`` (downloaded now), ``cached`` (already on disk and valid, no request made),
``failed_permanent`` (404/403/410 and other 4xx, not an image, too large, host not allowed,
bad URL, a corrupt image, an unsupported Content-Encoding; not retried), ``failed_transient``
(connect errors, resets, timeouts, 429, 5xx, truncated bodies and incomplete images that still
failed after ``retries`` retries; a rerun tries them again).

Behaviour
---------
* Only http(s) URLs on allowed hosts; redirects are followed by hand, each hop checked, at most
  ``max_redirects``. File names come from the photo id only, the extension from the magic bytes
  (jpg, png, gif, webp). A file is kept only for status 200, the full Content-Length and a
  complete image (``files.check_image``: its header parses to width and height and its end marker
  is there); reruns apply the same check to files on disk.
* Memory is bounded whatever the servers send: bodies reserve their size from one budget per run
  before they are read (``network.BodyBudget``), one gzip/deflate layer is undone under the
  ``max_bytes`` cap, stacked and other encodings are refused.
* On 403/404 the same ``photos/<id>/<size>.<ext>`` path is tried once on the paired host
  (static.inaturalist.org <-> inaturalist-open-data.s3.amazonaws.com) when that host is allowed.
* Retries back off exponentially with jitter, or as ``Retry-After`` says (capped); 429 and 503
  pause the whole host, not just the request. When a byte budget is used up, requests to that
  host wait (logged, and shown in ``Progress.note``); they never fail for it.
* Every request has connect and read timeouts and a deadline for the whole request, so every run
  ends with every task settled.
* Files are written atomically (temporary ``.part`` name, then rename); stale ``.part`` files are
  removed from a folder when the run first uses it; a folder is created by its first photo; the
  manifest is renamed into place at the end, and only when it was written completely (a full disk
  leaves the previous manifest and no temporary file).
* Input: a task whose photo id is unusable (``parse_photo_id``) is skipped and counted
  (``invalid``); a photo id seen before is skipped and counted (``duplicates``): exact for input
  sorted by photo id, within the last ``engine.RECENT_IDS`` distinct ids otherwise.
* Errors: the output's problems (unwritable, full) are ``StorageError`` naming the path and cause;
  another run on the same manifest is ``LockedError``; with processes, a worker's error is raised
  as itself in the parent. Worker processes exit within about a second when their parent dies.

Performance notes are in ``inat_assets.download.network``, ``.writer`` and bench/download.py.
"""

import sys

# `import httpx` also imports its command-line tool (httpx._main), which pulls in click, rich and
# pygments when they are installed (Dagster installs them): 6 MB of memory and 0.1 s of CPU in
# every download worker process. A None entry makes that optional import fail at once, as
# httpx expects when they are missing; only the `httpx` console command needs it, and it runs
# in a process of its own. Has no effect where httpx was imported already.
if "httpx" not in sys.modules:
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

from inat_assets.download.config import (
    CACHED,
    DEFAULT_HOST_LIMITS,
    FAILED_PERMANENT,
    FAILED_TRANSIENT,
    INAT_PHOTO_HOSTS,
    OK,
    OPEN_DATA_HOST,
    STATIC_HOST,
    STATUSES,
    DownloadConfig,
    HostLimits,
    PhotoTask,
    allowed_hosts_from_env,
    batch_key,
    parse_photo_id,
)
from inat_assets.download.engine import DownloadJob, DownloadSummary, Progress
from inat_assets.download.processes import BatchFolders
from inat_assets.download.runner import run, run_download


def __getattr__(name: str) -> object:
    # On first use: the schema needs pyarrow, which worker processes (they import this package)
    # never load otherwise (see manifest.py).
    if name == "MANIFEST_SCHEMA":
        from inat_assets.download.manifest import manifest_schema

        return manifest_schema()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CACHED",
    "DEFAULT_HOST_LIMITS",
    "FAILED_PERMANENT",
    "FAILED_TRANSIENT",
    "INAT_PHOTO_HOSTS",
    "MANIFEST_SCHEMA",
    "OK",
    "OPEN_DATA_HOST",
    "STATIC_HOST",
    "STATUSES",
    "BatchFolders",
    "DownloadConfig",
    "DownloadJob",
    "DownloadSummary",
    "HostLimits",
    "PhotoTask",
    "Progress",
    "allowed_hosts_from_env",
    "batch_key",
    "parse_photo_id",
    "run",
    "run_download",
]
