"""Stage 2: the archive's CSV members as typed Parquet tables (observations, media)."""

import os

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetExecutionContext,
    AssetsDefinition,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)
from dagster_duckdb import DuckDBResource
from pydantic import Field

from inat_assets.assets.archive import dwca_archive, locate_archive
from inat_assets.dwca.convert import ConversionResult, convert_member, sql_string
from inat_assets.dwca.schema import Table
from inat_assets.resources import InatSettings

TABLES_GROUP = "tables"


def _convert(
    context: AssetExecutionContext, settings: InatSettings, duckdb: DuckDBResource, table: Table
) -> MaterializeResult:
    store = settings.store()
    archive = locate_archive(settings)
    member = archive.observations if table == "observations" else archive.media
    with duckdb.get_connection() as con:
        settings.configure_duckdb(con)
        result = convert_member(
            con,
            archive.path,
            member,
            store.table(table),
            store.rejects(table),
            store.scratch_dir("convert"),
            read_mode=settings.csv_read_mode,  # type: ignore[arg-type]
            log=context.log.info,
        )
    if result.rejected_lines:
        context.log.warning(
            f"{result.rejected_lines:,} malformed line(s) of {member.name} were set aside in {result.rejects}"
        )
    return MaterializeResult(metadata=_metadata(result, len(member.columns)))


def _metadata(result: ConversionResult, columns: int) -> dict[str, object]:
    return {
        "path": MetadataValue.path(str(result.output)),
        "dagster/row_count": result.rows,
        "rows": result.rows,
        "columns": columns,
        "rejected_lines": result.rejected_lines,
        "rejects_path": MetadataValue.path(str(result.rejects)),
        "bytes_in": result.bytes_in,
        "bytes_out": result.bytes_out,
        "seconds": round(result.seconds, 2),
        "rows_per_second": round(result.rows_per_second),
        "read_mode": result.read_mode,
    }


@asset(
    deps=[dwca_archive],
    group_name=TABLES_GROUP,
    kinds={"duckdb", "parquet"},
    description=(
        "observations.csv as INAT_DATA_DIR/observations.parquet (ZSTD): every column of the header under "
        "its own name, ids as BIGINT, coordinates as DOUBLE, everything else as text exactly as published. "
        "Malformed lines go to INAT_DATA_DIR/rejects/observations.parquet."
    ),
)
def observations_parquet(
    context: AssetExecutionContext, settings: InatSettings, duckdb: DuckDBResource
) -> MaterializeResult:
    return _convert(context, settings, duckdb, "observations")


@asset(
    deps=[dwca_archive],
    group_name=TABLES_GROUP,
    kinds={"duckdb", "parquet"},
    description=(
        "media.csv as INAT_DATA_DIR/media.parquet (ZSTD): one row per photo or sound, `id` = observation id, "
        "`catalogNumber` = photo/sound id. Malformed lines go to INAT_DATA_DIR/rejects/media.parquet."
    ),
)
def media_parquet(
    context: AssetExecutionContext, settings: InatSettings, duckdb: DuckDBResource
) -> MaterializeResult:
    return _convert(context, settings, duckdb, "media")


# The default limit, unless INAT_MAX_REJECT_SHARE says otherwise: `inat-assets ui --demo` raises it
# because the bundled sample has ~1 % malformed lines on purpose (0.99 % observations, 0.38 % media).
DEFAULT_MAX_REJECT_SHARE = 0.001


class RejectShareConfig(Config):
    max_reject_share: float = Field(
        default=float(os.environ.get("INAT_MAX_REJECT_SHARE") or DEFAULT_MAX_REJECT_SHARE),
        description=(
            "Largest acceptable share of rejected lines (rejected / (rows + rejected)); "
            "default from INAT_MAX_REJECT_SHARE, else 0.1 %."
        ),
    )


def _reject_share_check(asset_def: AssetsDefinition, table: Table):
    @asset_check(
        asset=asset_def,
        name="rejected_lines_under_share",
        description=(f"Rejected lines of the {table} CSV stay under a configurable share (default 0.1 %)."),
    )
    def check(
        context: AssetCheckExecutionContext,
        config: RejectShareConfig,
        settings: InatSettings,
        duckdb: DuckDBResource,
    ) -> AssetCheckResult:
        store = settings.store()
        with duckdb.get_connection() as con:
            rows = con.execute(
                f"SELECT count(*) FROM read_parquet({sql_string(store.table(table))})"
            ).fetchone()[0]  # type: ignore[index]
            rejected = con.execute(
                f"SELECT count(*) FROM read_parquet({sql_string(store.rejects(table))})"
            ).fetchone()[0]  # type: ignore[index]
        share = rejected / (rows + rejected) if rows + rejected else 0.0
        return AssetCheckResult(
            passed=share <= config.max_reject_share,
            metadata={
                "rows": rows,
                "rejected_lines": rejected,
                "share": share,
                "max_share": config.max_reject_share,
            },
        )

    return check


observations_reject_share = _reject_share_check(observations_parquet, "observations")
media_reject_share = _reject_share_check(media_parquet, "media")


@asset_check(asset=observations_parquet, description="Every observation id is present and appears once.")
def unique_observation_ids(settings: InatSettings, duckdb: DuckDBResource) -> AssetCheckResult:
    with duckdb.get_connection() as con:
        settings.configure_duckdb(con)
        rows, nulls, distinct = con.execute(
            f"SELECT count(*), count(*) - count(id), count(DISTINCT id) FROM read_parquet({sql_string(settings.store().table('observations'))})"
        ).fetchone()  # type: ignore[misc]
    duplicates = rows - nulls - distinct
    return AssetCheckResult(
        passed=nulls == 0 and duplicates == 0,
        metadata={"rows": rows, "null_ids": nulls, "duplicate_ids": duplicates},
    )
