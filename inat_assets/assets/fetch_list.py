"""Stage 3, per declared dataset: the filtered list of photos to download (<name>/fetch_parquet)."""

from typing import TYPE_CHECKING

from dagster import (
    AssetCheckResult,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    MaterializeResult,
    MetadataValue,
    TableColumn,
    TableSchema,
    asset,
    asset_check,
)

from inat_assets.assets.partitions import image_batch_partitions
from inat_assets.assets.tables import media_parquet, observations_parquet
from inat_assets.batches import outdated_batches, plan_batches, write_outdated
from inat_assets.dwca.convert import sql_string
from inat_assets.dwca.fetch_list import FetchListResult, build_fetch_list
from inat_assets.resources import DataStoreResource, InatDuckDBResource

if TYPE_CHECKING:
    from inat_assets.components.dataset import InatDataset

_PARTITION_CHUNK = 10_000
_LISTED_KEYS = 20  # batch keys named in the metadata; the rest are counted


# The columns of fetch.parquet, shown in the UI (dagster/column_schema). A test compares them
# with the file that build_fetch_list writes, so this list cannot drift from it.
FETCH_LIST_SCHEMA = TableSchema(
    columns=[
        TableColumn("photo_id", "BIGINT", description="iNaturalist photo id (media catalogNumber); unique."),
        TableColumn("observation_id", "BIGINT", description="The observation the photo belongs to."),
        TableColumn("url", "VARCHAR", description="Photo URL at the dataset's photo size."),
        TableColumn("format", "VARCHAR", description="MIME type published in media.csv."),
        TableColumn("license", "VARCHAR", description="Licence code (CC0, CC-BY, ...)."),
        TableColumn("license_url", "VARCHAR", description="Licence as published."),
        TableColumn("rights_holder", "VARCHAR"),
        TableColumn("creator", "VARCHAR"),
        TableColumn("scientific_name", "VARCHAR"),
        TableColumn("taxon_id", "BIGINT"),
        TableColumn("taxon_rank", "VARCHAR"),
        TableColumn("kingdom", "VARCHAR"),
        TableColumn("phylum", "VARCHAR"),
        TableColumn("class", "VARCHAR"),
        TableColumn("order", "VARCHAR"),
        TableColumn("family", "VARCHAR"),
        TableColumn("genus", "VARCHAR"),
        TableColumn("country_code", "VARCHAR"),
        TableColumn("event_date", "DATE", description="Local date of the observation (NULL when unparseable)."),
        TableColumn("event_date_raw", "VARCHAR", description="eventDate as published."),
        TableColumn("captive", "VARCHAR", description="wild or cultivated."),
    ]
)


def _markdown_counts(title: str, rows: list[tuple[str | None, int]]) -> MetadataValue:
    body = "\n".join(f"| {name if name is not None else '(none)'} | {count:,} |" for name, count in rows)
    return MetadataValue.md(f"| {title} | photos |\n|---|---|\n{body}")


def fetch_metadata(result: FetchListResult) -> dict[str, object]:
    return {
        "path": MetadataValue.path(str(result.output)),
        "dagster/row_count": result.rows,
        "dagster/column_schema": FETCH_LIST_SCHEMA,
        "observations": result.observations,
        "taxa": result.taxa,
        "orphan_media": result.orphan_media,
        "sounds_and_other_media": result.sounds_and_other_media,
        "duplicate_photo_ids": result.duplicate_photo_ids,
        "duplicate_observation_rows": result.duplicate_observation_rows,
        "min_photo_id": result.min_photo_id if result.min_photo_id is not None else -1,
        "max_photo_id": result.max_photo_id if result.max_photo_id is not None else -1,
        "top_families": _markdown_counts("family", result.top_families),
        "licenses": _markdown_counts("license", result.licenses),
        "hosts": _markdown_counts("host", result.hosts),
    }


def build_fetch_parquet(dataset: "InatDataset") -> AssetsDefinition:
    """``<name>/fetch_parquet``: the dataset's photo list; registers its image batch partitions."""
    name = dataset.name
    filters = dataset.filters()
    partitions = image_batch_partitions(name).name

    @asset(
        key=AssetKey([name, "fetch_parquet"]),
        deps=[observations_parquet, media_parquet],
        group_name=name,
        kinds={"duckdb", "parquet"},
        code_version=dataset.selection_version(),
        metadata={
            "dataset": name,
            "declaration": MetadataValue.json(dataset.model_dump(mode="json")),
            "dagster/column_schema": FETCH_LIST_SCHEMA,
        },
        description=(
            f"INAT_DATA_DIR/datasets/{name}/fetch.parquet: one row per photo of the {name} dataset (StillImage "
            "media joined to its observation, filtered as its declaration says), unique photo_id, sorted by "
            "photo_id in small row groups. Registers the dataset's image batches: adds new keys, removes keys "
            "that no longer hold a photo (and their manifests), and lists batches whose photos changed."
            + (f" {dataset.description}" if dataset.description else "")
        ),
    )
    def fetch_parquet(
        context: AssetExecutionContext, store: DataStoreResource, duckdb: InatDuckDBResource
    ) -> MaterializeResult:
        paths = store.get()
        with duckdb.get_connection() as con:
            result = build_fetch_list(
                con, paths.table("observations"), paths.table("media"), paths.fetch_list(name), filters
            )
            plan = plan_batches(con, result.output, paths.batch_state(), store.batch_span)
            manifests = sorted(paths.manifests_dir(name).glob("batch-*.parquet"))
            outdated = outdated_batches(con, result.output, manifests, plan.span)
        registered = set(context.instance.get_dynamic_partitions(partitions))
        wanted = set(plan.keys)
        new_keys = [key for key in plan.keys if key not in registered]
        gone_keys = sorted(registered - wanted)
        for start in range(0, len(new_keys), _PARTITION_CHUNK):
            context.instance.add_dynamic_partitions(partitions, new_keys[start : start + _PARTITION_CHUNK])
        for key in gone_keys:  # no photo of this dataset is in that range any more
            context.instance.delete_dynamic_partition(partitions, key)
            paths.manifest(name, key).unlink(missing_ok=True)
        outdated = [key for key in outdated if key in wanted]
        # The dataset's batch-fill sensor downloads these again (their partitions still show materialized).
        write_outdated(paths.outdated_batches(name), outdated)
        context.log.info(
            f"{name}: {result.rows:,} photos of {result.observations:,} observations and {result.taxa:,} taxa; "
            f"image batches: span {plan.span:,} photo ids, {len(plan.keys):,} batches, {len(new_keys):,} new, "
            f"{len(gone_keys):,} removed, {len(outdated):,} to download again (their photos changed)"
        )
        return MaterializeResult(
            metadata={
                **fetch_metadata(result),
                "batch_span": plan.span,
                "batches": len(plan.keys),
                "new_batches": len(new_keys),
                "removed_batches": len(gone_keys),
                "outdated_batches": len(outdated),
                "outdated_batch_keys": ", ".join(outdated[:_LISTED_KEYS]) + (" ..." if len(outdated) > _LISTED_KEYS else ""),
            }
        )

    return fetch_parquet


def build_fetch_list_check(dataset: "InatDataset", fetch_parquet: AssetsDefinition):
    name = dataset.name

    @asset_check(
        asset=fetch_parquet,
        name="unique_photo_ids_with_http_urls",
        description="photo_id is unique and non-null; every URL is http(s).",
    )
    def check(store: DataStoreResource, duckdb: InatDuckDBResource) -> AssetCheckResult:
        with duckdb.get_connection() as con:
            rows, nulls, distinct, bad_urls = con.execute(
                f"""
                SELECT count(*), count(*) - count(photo_id), count(DISTINCT photo_id),
                       count(*) FILTER (WHERE url IS NULL OR NOT regexp_matches(url, '^https?://[^/]+/'))
                FROM read_parquet({sql_string(store.get().fetch_list(name))})
                """
            ).fetchone()  # type: ignore[misc]
        duplicates = rows - nulls - distinct
        return AssetCheckResult(
            passed=nulls == 0 and duplicates == 0 and bad_urls == 0,
            metadata={
                "dagster/row_count": rows,
                "null_photo_ids": nulls,
                "duplicate_photo_ids": duplicates,
                "non_http_urls": bad_urls,
            },
        )

    return check
