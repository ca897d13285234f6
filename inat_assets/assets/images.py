"""Stage 4, per declared dataset: its photos, one Dagster partition per photo-id range of its fetch list.

Photos are stored once per photo and size, in ``photos/<size>/<batch>/<photo_id>.<ext>``, whichever
datasets select them: a dataset whose batch folder already holds a photo records it as ``cached``
without a request. Each dataset has its own manifests (``datasets/<name>/manifests/<batch>.parquet``),
listing exactly the photos its fetch list has in that batch.
"""

from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING

from dagster import (
    AssetExecutionContext,
    AssetKey,
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
from pydantic import Field

from inat_assets.assets.partitions import image_batch_partitions
from inat_assets.batches import batch_range, count_batch, iter_batch_tasks, load_span
from inat_assets.download import DownloadSummary, Progress, run_download
from inat_assets.download.object_writer import photo_writer
from inat_assets.locks import LockedError
from inat_assets.resources import DataStoreResource, InatDuckDBResource, PhotoDownloaderResource
from inat_assets.storage import DataStore, acquire_guard

if TYPE_CHECKING:
    from inat_assets.components.dataset import InatDataset


class ImageBatchConfig(Config):
    max_transient_share: float = Field(
        default=0.02,
        ge=0.0,
        le=1.0,
        description=(
            "Fail the batch (so Dagster retries it) when more than this share of its photos failed "
            "transiently (timeouts, 429/5xx, resets) after the engine's own retries."
        ),
    )
    retries: int = Field(default=5, ge=0, le=20, description="Engine retries per photo for transient failures.")
    try_other_host: bool = Field(default=True, description="On 403/404 try the other iNaturalist photo host once.")
    progress_seconds: float = Field(default=15.0, gt=0, description="Seconds between progress lines in the run log.")
    processes: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description=(
            "Worker processes for this batch's downloads; empty: one per core available to the run "
            "(affinity, cgroup quota), at most 4 (bench/download.py). They draw on the instance's shared "
            "per-host budgets."
        ),
    )


# A second reader of batch progress in this thread, besides the run log: `inat-assets demo` sets it
# around its in-process runs to draw one terminal bar per dataset (inat_assets.cli.progress). Unset in
# every other run: asset bodies only log, a run worker has no terminal.
batch_progress_observer: ContextVar[Callable[[str, Progress], None] | None] = ContextVar(
    "batch_progress_observer", default=None
)


def _log_progress(context: AssetExecutionContext, key: str) -> Callable[[Progress], None]:
    observer = batch_progress_observer.get()

    def log(progress: Progress) -> None:
        total = f"/{progress.total:,}" if progress.total is not None else ""
        eta = f", ETA {progress.eta_seconds:.0f} s" if progress.eta_seconds is not None else ""
        note = f" ({progress.note})" if progress.note else ""
        context.log.info(
            f"{key}: {progress.done:,}{total} settled, {progress.ok:,} downloaded, {progress.skipped:,} already "
            f"on disk, {progress.failed:,} failed, {progress.rate:.0f}/s{eta}{note}"
        )
        if observer is not None:
            observer(key, progress)

    return log


def batch_metadata(
    dataset: str, size: str, key: str, span: int, summary: DownloadSummary, store: DataStore
) -> dict[str, object]:
    lo, hi = batch_range(key, span)
    errors = "\n".join(f"| {reason} | {count:,} |" for reason, count in summary.top_errors) or "| none | 0 |"
    return {
        "batch": key,
        "photo_id_range": f"[{lo:,}, {hi:,})",
        "dagster/row_count": summary.total,
        "ok": summary.ok,
        "already_on_disk": summary.cached,
        "failed_permanent": summary.permanent_failed,
        "failed_transient": summary.transient_failed,
        "bytes_downloaded": summary.bytes,
        "seconds": round(summary.seconds, 2),
        "images_per_second": round(summary.images_per_second, 1),
        "top_errors": MetadataValue.md(f"| error | photos |\n|---|---|\n{errors}"),
        "images_dir": MetadataValue.path(str(store.photos_dir(size, key))),
        "manifest": MetadataValue.path(str(store.manifest(dataset, key))),
    }


# Retries of a failed batch: exponential backoff with jitter; each retry downloads only what is missing.
BATCH_RETRY_POLICY = RetryPolicy(max_retries=3, delay=30, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS)


def build_image_batches(
    dataset: "InatDataset", fetch_parquet: AssetsDefinition, retry_policy: RetryPolicy = BATCH_RETRY_POLICY
) -> AssetsDefinition:
    """``<name>/image_batches``, partitioned by ``<name>_image_batches``."""
    name, size = dataset.name, dataset.photo_size.value

    # Descriptions are rendered as HTML in the UI: no angle brackets (a <batch> would vanish).
    @asset(
        key=AssetKey([name, "image_batches"]),
        deps=[fetch_parquet],
        partitions_def=image_batch_partitions(name),
        group_name=name,
        kinds={"python", "parquet"},
        code_version=dataset.selection_version(),
        # Downloads of all batches share one pool: how many batch runs download at once (the per-host
        # budgets are shared through the instance, not by this pool).
        pool="inat_downloads",
        retry_policy=retry_policy,
        metadata={"dataset": name, "photo_size": size},
        description=(
            f"The photos of one photo-id range (a batch) of the {name} fetch list, at size {size}, stored once "
            f"for all datasets under INAT_DATA_DIR/photos/{size}/BATCH/PHOTO_ID.EXT, with this dataset's "
            f"manifest at INAT_DATA_DIR/datasets/{name}/manifests/BATCH.parquet. Reruns fetch only what is "
            "missing; permanent failures (404, not an image, ...) are recorded, not retried."
        ),
    )
    def image_batches(
        context: AssetExecutionContext,
        config: ImageBatchConfig,
        store: DataStoreResource,
        duckdb: InatDuckDBResource,
        downloader: PhotoDownloaderResource,
    ) -> MaterializeResult:
        return download_batch(context, config, dataset, store.get(), duckdb, downloader)

    return image_batches


def download_batch(
    context: AssetExecutionContext,
    config: ImageBatchConfig,
    dataset: "InatDataset",
    store: DataStore,
    duckdb: InatDuckDBResource,
    downloader: PhotoDownloaderResource,
) -> MaterializeResult:
    key, name, size = context.partition_key, dataset.name, dataset.photo_size.value
    span = load_span(store.batch_state())
    if span is None:
        raise Failure(f"{store.batch_state()} is missing: materialize {name}/fetch_parquet first.", allow_retries=False)
    fetch_list, folder = store.fetch_list(name), store.photos_dir(size, key)
    # Two datasets downloading the same photo folder at once would delete each other's partial files.
    try:
        folder_lock = acquire_guard(store.photos_lock(size, key), purpose=f"{name} downloading {key}")
    except LockedError as exc:
        raise Failure(f"{key}: {exc}; Dagster retries this batch later.", allow_retries=True) from exc
    try:
        with duckdb.get_connection() as con:
            total = count_batch(con, fetch_list, key, span)
            lo, hi = batch_range(key, span)
            context.log.info(f"{name} {key}: {total:,} photos with ids in [{lo:,}, {hi:,}), size {size}")
            summary = run_download(
                downloader.routed(iter_batch_tasks(con, fetch_list, key, span)),
                dest_dir=folder,  # type: ignore[arg-type]
                manifest_path=store.manifest(name, key),
                writer=photo_writer(folder),  # objects (PUT from memory) when the data dir is a store
                config=downloader.download_config(
                    retries=config.retries, try_other_host=config.try_other_host, processes=config.processes
                ),
                previous_manifest=store.manifest(name, key),
                on_progress=_log_progress(context, key),
                progress_interval=config.progress_seconds,
                total=total,
            )
    finally:
        folder_lock.release()
    metadata = batch_metadata(name, size, key, span, summary, store)
    share = summary.transient_failed / summary.total if summary.total else 0.0
    if share > config.max_transient_share:
        raise Failure(
            f"{key}: {summary.transient_failed:,} of {summary.total:,} photos failed transiently "
            f"({share:.1%} > {config.max_transient_share:.1%}); the retry fetches only what is missing.",
            metadata=metadata,
            allow_retries=True,
        )
    return MaterializeResult(metadata=metadata)
