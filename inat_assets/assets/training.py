"""Stage 5, per declared dataset: the training-ready dataset built from its downloaded batches.

``<name>/training_dataset`` runs the engine in `inat_assets.training` over the dataset's fetch list,
the observations table and whichever batch manifests exist (a partial download is covered and the
missing share reported), writing ``datasets/<name>/training/``. Its code version is a hash of the
declaration's ``training`` section (and selection), so editing the training options makes only this
asset stale. It has no automation condition: a build reads every manifest, so it is run by hand (or
by a schedule) once the batches wanted are in, not after each of thousands of batch runs.
"""

import base64
import datetime as dt
from typing import TYPE_CHECKING

from dagster import AssetExecutionContext, AssetKey, AssetsDefinition, MaterializeResult, MetadataValue, asset

from inat_assets.assets.archive import dwca_archive
from inat_assets.assets.tables import observations_parquet
from inat_assets.dwca.source import archive_location
from inat_assets.resources import DataStoreResource, DwcaResource, InatDuckDBResource
from inat_assets.storage import DataStore, StorePath
from inat_assets.training import TrainingDatasetResult, build_training_dataset
from inat_assets.training.report import drop_lines

if TYPE_CHECKING:
    from inat_assets.components.dataset import InatDataset

# Plots above this size are listed by path only: metadata lives in the instance's event log. The
# demo's five PNGs are 9-22 KB each (about 105 KB of base64 per materialization); the UI shows each
# behind "Show Markdown" (checked in inat_assets_tests/e2e/test_e2e_browser.py).
MAX_EMBEDDED_PLOT_BYTES = 200_000


def archive_info(context: AssetExecutionContext, dwca: DwcaResource, store: DataStore) -> dict[str, str]:
    """Which archive the photos come from: dwca_archive's latest materialization, else the file's mtime."""
    event = context.instance.get_latest_materialization_event(dwca_archive.key)
    meta = event.asset_materialization.metadata if event and event.asset_materialization else {}
    values = {k: str(getattr(v, "value", v)) for k, v in meta.items()}
    # A recorded path may be a store URL (s3://...): parsed by the store, never as a local Path.
    path = store.locate(values["path"]) if values.get("path") else archive_location(dwca.dwca_source, store.archive_dir())
    info = {"archive": str(path)}
    if values.get("etag"):
        info["ETag"] = values["etag"]
    modified = values.get("last_modified")
    if not modified and path.is_file():  # a local archive has no Last-Modified header: its file (or object) date
        modified = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC).isoformat(timespec="seconds")
    if modified:
        info["last modified"] = modified
    if event:
        info["archive materialized"] = dt.datetime.fromtimestamp(event.timestamp, dt.UTC).isoformat(timespec="seconds")
    return info


def _plot_markdown(path: StorePath) -> MetadataValue:
    """The PNG as a markdown image with a data: URI, which the Dagster UI renders inline (one GET on a store)."""
    data = path.read_bytes()
    if len(data) > MAX_EMBEDDED_PLOT_BYTES:
        return MetadataValue.md(f"{path} ({len(data):,} bytes, too large to embed)")
    return MetadataValue.md(f"![{path.stem}](data:image/png;base64,{base64.b64encode(data).decode()})")


def training_metadata(result: TrainingDatasetResult) -> dict[str, object]:
    def table(title: str, rows: list[tuple[str, int]]) -> MetadataValue:
        body = "\n".join(f"| {name} | {count:,} |" for name, count in rows) or "| none | 0 |"
        return MetadataValue.md(f"| {title} | photos |\n|---|---|\n{body}")

    return {
        "dagster/row_count": result.rows,
        "classes": result.classes,
        **{f"{split}_photos": count for split, count in result.splits.items()},
        "fetch_list_photos": result.fetch_rows,
        "usable_photos": result.usable_photos,
        "missing_fraction": round(result.missing_fraction, 4),
        "drops": table("dropped because", drop_lines(result)),
        "classes_below_minimum": len(result.classes_below_minimum),
        "licences": table("licence", list(result.licences.items())),
        "path": MetadataValue.path(str(result.out_dir)),
        "index": MetadataValue.path(str(result.index)),
        "card": MetadataValue.path(str(result.card)),
        "attribution": MetadataValue.path(str(result.attribution)),
        "exports": ", ".join(f"{name} ({len(paths)} files)" for name, paths in result.exports.items()) or "none",
        **{f"plot_{name}": _plot_markdown(path) for name, path in result.plots.items()},
    }


def build_training_dataset_asset(
    dataset: "InatDataset", fetch_parquet: AssetsDefinition, image_batches: AssetsDefinition
) -> AssetsDefinition:
    """``<name>/training_dataset``: index, splits, exports, attribution, card and plots of one dataset."""
    name = dataset.name

    @asset(
        key=AssetKey([name, "training_dataset"]),
        deps=[image_batches, fetch_parquet, observations_parquet],
        group_name=name,
        kinds={"duckdb", "parquet"},
        code_version=dataset.training_version(),
        metadata={"dataset": name, "training": MetadataValue.json(dataset.training.model_dump(mode="json"))},
        description=(
            f"INAT_DATA_DIR/datasets/{name}/training/: the {name} photos downloaded so far as a training dataset: "
            "dataset.parquet (one row per usable photo with its label, lineage, licence and split), leak-free "
            "splits by group, caps and the licence policy of the declaration's training section, the declared "
            "exports (WebDataset shards, an imagefolder for Hugging Face datasets, COCO JSON), ATTRIBUTION.csv, "
            "a dataset card (README.md) and plots. Covers the batches that exist and reports the missing share."
        ),
    )
    def training_dataset(
        context: AssetExecutionContext, store: DataStoreResource, duckdb: InatDuckDBResource, dwca: DwcaResource
    ) -> MaterializeResult:
        paths = store.get()
        with duckdb.get_connection() as con:
            result = build_training_dataset(
                con,
                dataset.training,
                paths.fetch_list(name),
                paths.table("observations"),
                paths.manifests_dir(name),
                paths.training_dir(name),
                archive_info(context, dwca, paths),
                selection=dataset.selection(),
            )
        context.log.info(
            f"{name}: {result.rows:,} photos in {result.classes:,} classes "
            f"({', '.join(f'{s} {n:,}' for s, n in result.splits.items())}); "
            f"{result.missing_fraction:.1%} of the fetch list not downloaded (yet); in {result.out_dir}"
        )
        return MaterializeResult(metadata=training_metadata(result))

    return training_dataset
