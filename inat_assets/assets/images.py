"""Stage 4: the photos themselves, one Dagster partition per photo-id range of fetch.parquet."""

from urllib.parse import urlsplit

from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    Backoff,
    Config,
    Failure,
    Jitter,
    MaterializeResult,
    MetadataValue,
    RetryPolicy,
    asset,
)
from dagster_duckdb import DuckDBResource
from pydantic import Field

from inat_assets.assets.fetch_list import fetch_parquet
from inat_assets.assets.partitions import image_batch_partitions
from inat_assets.batches import batch_range, count_batch, iter_batch_tasks, load_span
from inat_assets.download import DownloadConfig, DownloadSummary, PhotoTask, Progress, run_download
from inat_assets.download.config import INAT_PHOTO_HOSTS
from inat_assets.resources import InatSettings

IMAGES_GROUP = "images"


class ImageBatchConfig(Config):
    max_transient_share: float = Field(
        default=0.02,
        description=(
            "Fail the batch (so Dagster retries it) when more than this share of its photos failed "
            "transiently (timeouts, 429/5xx, resets) after the engine's own retries."
        ),
    )
    retries: int = Field(default=5, description="Engine retries per photo for transient failures.")
    try_other_host: bool = Field(default=True, description="On 403/404 try the other iNaturalist photo host once.")
    progress_seconds: float = Field(default=15.0, description="Seconds between progress lines in the run log.")
    processes: int = Field(
        default=1,
        description=(
            "Worker processes for this batch's downloads. 2 was 1.5x faster on 2 cores at 50 ms latency "
            "(bench/download.py); each process gets 1/N of the per-host budgets."
        ),
    )


def download_config(settings: InatSettings, config: ImageBatchConfig) -> DownloadConfig:
    hosts = tuple(h.strip() for h in settings.allowed_hosts.split(",") if h.strip()) or INAT_PHOTO_HOSTS
    if settings.photo_mirror:
        # host:port when the mirror names a port: a bare host would allow only ports 80 and 443.
        hosts = (*hosts, urlsplit(settings.photo_mirror).netloc.rpartition("@")[2])
    return DownloadConfig(
        concurrency=settings.download_concurrency,
        allowed_hosts=hosts,
        contact=settings.contact,
        retries=config.retries,
        try_other_host=config.try_other_host,
        processes=config.processes,
    )


def via_mirror(task: PhotoTask, mirror: str) -> PhotoTask:
    """Point an iNaturalist photo URL at INAT_PHOTO_MIRROR (same path, mirror's scheme and host)."""
    parts = urlsplit(task.url)
    if not mirror or parts.hostname not in INAT_PHOTO_HOSTS:
        return task
    return PhotoTask(task.photo_id, mirror.rstrip("/") + parts.path)


def _log_progress(context: AssetExecutionContext, key: str):
    def log(progress: Progress) -> None:
        total = f"/{progress.total:,}" if progress.total is not None else ""
        eta = f", ETA {progress.eta_seconds:.0f} s" if progress.eta_seconds is not None else ""
        note = f" ({progress.note})" if progress.note else ""
        context.log.info(
            f"{key}: {progress.done:,}{total} settled, {progress.ok:,} downloaded, {progress.skipped:,} already "
            f"on disk, {progress.failed:,} failed, {progress.rate:.0f}/s{eta}{note}"
        )

    return log


def batch_metadata(key: str, span: int, summary: DownloadSummary, settings: InatSettings) -> dict[str, object]:
    store = settings.store()
    lo, hi = batch_range(key, span)
    errors = "\n".join(f"| {reason} | {count:,} |" for reason, count in summary.top_errors) or "| none | 0 |"
    return {
        "batch": key,
        "photo_id_range": f"[{lo:,}, {hi:,})",
        "photos": summary.total,
        "ok": summary.ok,
        "already_on_disk": summary.cached,
        "failed_permanent": summary.permanent_failed,
        "failed_transient": summary.transient_failed,
        "bytes_downloaded": summary.bytes,
        "seconds": round(summary.seconds, 2),
        "images_per_second": round(summary.images_per_second, 1),
        "top_errors": MetadataValue.md(f"| error | photos |\n|---|---|\n{errors}"),
        "images_dir": MetadataValue.path(str(store.images_dir(key))),
        "manifest": MetadataValue.path(str(store.manifest(key))),
    }


# Retries of a failed batch: exponential backoff with jitter; each retry downloads only what is missing.
BATCH_RETRY_POLICY = RetryPolicy(max_retries=3, delay=30, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS)


def build_image_batches(retry_policy: RetryPolicy = BATCH_RETRY_POLICY) -> AssetsDefinition:
    """The partitioned image asset (a factory so tests can shorten the retry delay)."""

    @asset(
        name="image_batches",
        deps=[fetch_parquet],
        partitions_def=image_batch_partitions,
        group_name=IMAGES_GROUP,
        kinds={"python", "parquet"},
        # Downloads of all batches share one pool, so a backfill cannot multiply the per-host budgets.
        pool="inat_downloads",
        retry_policy=retry_policy,
        description=(
            "The photos of one photo-id range of fetch.parquet, downloaded to INAT_DATA_DIR/images/<batch>/"
            "<photo_id>.<ext> with a manifest at INAT_DATA_DIR/manifests/<batch>.parquet. Reruns fetch only "
            "what is missing; permanent failures (404, not an image, ...) are recorded, not retried."
        ),
    )
    def image_batches(
        context: AssetExecutionContext, config: ImageBatchConfig, settings: InatSettings, duckdb: DuckDBResource
    ) -> MaterializeResult:
        return download_batch(context, config, settings, duckdb)

    return image_batches


def download_batch(
    context: AssetExecutionContext, config: ImageBatchConfig, settings: InatSettings, duckdb: DuckDBResource
) -> MaterializeResult:
    key = context.partition_key
    store = settings.store()
    span = load_span(store.path("batches.json"))
    if span is None:
        raise Failure(f"{store.path('batches.json')} is missing: materialize fetch_parquet first.", allow_retries=False)
    fetch_list = store.path("fetch.parquet")
    with duckdb.get_connection() as con:
        total = count_batch(con, fetch_list, key, span)
        lo, hi = batch_range(key, span)
        context.log.info(f"{key}: {total:,} photos with ids in [{lo:,}, {hi:,})")
        tasks = (via_mirror(t, settings.photo_mirror) for t in iter_batch_tasks(con, fetch_list, key, span))
        summary = run_download(
            tasks,
            dest_dir=store.images_dir(key),
            manifest_path=store.manifest(key),
            config=download_config(settings, config),
            previous_manifest=store.manifest(key),
            on_progress=_log_progress(context, key),
            progress_interval=config.progress_seconds,
            total=total,
        )
    metadata = batch_metadata(key, span, summary, settings)
    share = summary.transient_failed / summary.total if summary.total else 0.0
    if share > config.max_transient_share:
        raise Failure(
            f"{key}: {summary.transient_failed:,} of {summary.total:,} photos failed transiently "
            f"({share:.1%} > {config.max_transient_share:.1%}); the retry fetches only what is missing.",
            metadata=metadata,
            allow_retries=True,
        )
    return MaterializeResult(metadata=metadata)


image_batches = build_image_batches()
