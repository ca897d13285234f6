"""Stage 3: the filtered list of photos to download (fetch.parquet)."""

from dagster import (
    AssetCheckResult,
    AssetExecutionContext,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)
from dagster_duckdb import DuckDBResource
from pydantic import Field

from inat_assets.assets.partitions import image_batch_partitions
from inat_assets.assets.tables import media_parquet, observations_parquet
from inat_assets.batches import plan_batches
from inat_assets.dwca.convert import sql_string
from inat_assets.dwca.fetch_list import (
    DEFAULT_QUERY_TIMEOUT_SECONDS,
    FetchFilters,
    FetchListResult,
    build_fetch_list,
)
from inat_assets.resources import InatSettings

FETCH_GROUP = "fetch_list"
_PARTITION_CHUNK = 10_000


class FetchListConfig(Config):
    """Which photos to fetch. Empty lists mean no filter; all filters combine with AND."""

    kingdom: list[str] = Field(default=["Plantae"], description="Kingdoms to keep (default Plantae).")
    phylum: list[str] = Field(default=[], description="Phyla to keep.")
    class_: list[str] = Field(default=[], description="Classes to keep (the `class` column).")
    order: list[str] = Field(default=[], description="Orders to keep.")
    family: list[str] = Field(default=[], description="Families to keep.")
    genus: list[str] = Field(default=[], description="Genera to keep.")
    taxon_rank: list[str] = Field(
        default=[], description="Ranks of the identification to keep (species, genus, ...)."
    )
    taxon_id: list[int] = Field(default=[], description="iNaturalist taxon ids to keep.")
    country_code: list[str] = Field(default=[], description="ISO country codes to keep (NA is Namibia).")
    license: list[str] = Field(
        default=[], description="Photo licences to keep: codes (CC0, CC-BY, CC-BY-NC, ...) or licence URLs."
    )
    captive: str | None = Field(default=None, description="'wild' or 'cultivated'; unset keeps both.")
    event_date_from: str | None = Field(
        default=None, description="Earliest local observation date, YYYY-MM-DD."
    )
    event_date_to: str | None = Field(default=None, description="Latest local observation date, YYYY-MM-DD.")
    where: str | None = Field(
        default=None,
        description=(
            "One extra SQL boolean expression over the archive's columns, `o.` for observations and `m.` "
            "for media, e.g. `o.coordinateUncertaintyInMeters < 100`."
        ),
    )
    photo_size: str = Field(
        default="original", description="original, large, medium, small, thumb or square (rewrites the URL)."
    )
    timeout_seconds: float = Field(
        default=DEFAULT_QUERY_TIMEOUT_SECONDS,
        description="Stop the fetch-list query (and fail the run) when one of its statements runs longer than this.",
    )

    def to_filters(self) -> FetchFilters:
        return FetchFilters(**self.model_dump())


def _markdown_counts(title: str, rows: list[tuple[str | None, int]]) -> MetadataValue:
    body = "\n".join(f"| {name if name is not None else '(none)'} | {count:,} |" for name, count in rows)
    return MetadataValue.md(f"| {title} | photos |\n|---|---|\n{body}")


def fetch_metadata(result: FetchListResult) -> dict[str, object]:
    return {
        "path": MetadataValue.path(str(result.output)),
        "dagster/row_count": result.rows,
        "rows": result.rows,
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


@asset(
    deps=[observations_parquet, media_parquet],
    group_name=FETCH_GROUP,
    kinds={"duckdb", "parquet"},
    description=(
        "INAT_DATA_DIR/fetch.parquet: one row per photo to download (StillImage media joined to its observation, "
        "filtered by the run config), unique photo_id, sorted by photo_id in small row groups."
    ),
)
def fetch_parquet(
    context: AssetExecutionContext, config: FetchListConfig, settings: InatSettings, duckdb: DuckDBResource
) -> MaterializeResult:
    store = settings.store()
    with duckdb.get_connection() as con:
        settings.configure_duckdb(con)
        result = build_fetch_list(
            con,
            store.table("observations"),
            store.table("media"),
            store.path("fetch.parquet"),
            config.to_filters(),
        )
        plan = plan_batches(con, result.output, store.path("batches.json"), settings.batch_span)
    existing = set(context.instance.get_dynamic_partitions(image_batch_partitions.name))
    new_keys = [key for key in plan.keys if key not in existing]
    for start in range(0, len(new_keys), _PARTITION_CHUNK):
        context.instance.add_dynamic_partitions(image_batch_partitions.name, new_keys[start : start + _PARTITION_CHUNK])
    context.log.info(
        f"image batches: span {plan.span:,} photo ids, {len(plan.keys):,} batches, {len(new_keys):,} new partitions"
    )
    context.log.info(
        f"fetch.parquet: {result.rows:,} photos of {result.observations:,} observations and {result.taxa:,} taxa; "
        f"{result.orphan_media:,} photos whose observation is absent were not listed"
    )
    return MaterializeResult(
        metadata={
            **fetch_metadata(result),
            "batch_span": plan.span,
            "batches": len(plan.keys),
            "new_batches": len(new_keys),
        }
    )


@asset_check(asset=fetch_parquet, description="photo_id is unique and non-null; every URL is http(s).")
def unique_photo_ids_with_http_urls(settings: InatSettings, duckdb: DuckDBResource) -> AssetCheckResult:
    with duckdb.get_connection() as con:
        settings.configure_duckdb(con)
        rows, nulls, distinct, bad_urls = con.execute(
            f"""
            SELECT count(*), count(*) - count(photo_id), count(DISTINCT photo_id),
                   count(*) FILTER (WHERE url IS NULL OR NOT regexp_matches(url, '^https?://[^/]+/'))
            FROM read_parquet({sql_string(settings.store().path("fetch.parquet"))})
            """
        ).fetchone()  # type: ignore[misc]
    duplicates = rows - nulls - distinct
    return AssetCheckResult(
        passed=nulls == 0 and duplicates == 0 and bad_urls == 0,
        metadata={
            "rows": rows,
            "null_photo_ids": nulls,
            "duplicate_photo_ids": duplicates,
            "non_http_urls": bad_urls,
        },
    )
