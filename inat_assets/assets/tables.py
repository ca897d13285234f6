"""Stage 2: the archive's CSV members as typed Parquet tables (observations, media)."""

import os

import pyarrow.parquet as pq
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetsDefinition,
    Config,
    MaterializeResult,
    MetadataValue,
    TableColumn,
    TableSchema,
    asset,
    asset_check,
)
from dagster_duckdb import DuckDBResource
from pydantic import Field

from inat_assets.assets.archive import dwca_archive, locate_archive
from inat_assets.dwca.convert import DEFAULT_MAX_REJECT_SHARE, ConversionResult, convert_member, sql_string
from inat_assets.dwca.schema import Table
from inat_assets.resources import DataStoreResource, DwcaResource
from inat_assets.storage import StorePath

TABLES_GROUP = "tables"


# Soft limit of the reject-share check: above it the check warns (the bundled demo sample has 1 %
# malformed lines by design and shows this warning); above the hard limit it is an error.
DEFAULT_WARN_REJECT_SHARE = 0.001


class TableConfig(Config):
    fail_reject_share: float = Field(
        default=DEFAULT_MAX_REJECT_SHARE,
        description=(
            "Hard limit: a conversion rejecting a larger share of lines fails and keeps the previous table "
            "(ConversionError naming the reasons and where the rejected lines are)."
        ),
    )


def _convert(
    context: AssetExecutionContext,
    dwca: DwcaResource,
    store_resource: DataStoreResource,
    duckdb: DuckDBResource,
    table: Table,
    config: TableConfig,
) -> MaterializeResult:
    store = store_resource.get()
    archive = locate_archive(dwca, store_resource)
    member = archive.observations if table == "observations" else archive.media
    with duckdb.get_connection() as con:
        result = convert_member(
            con,
            archive.path,
            member,
            store.table(table),
            store.rejects(table),
            store.scratch_dir("convert"),
            read_mode=dwca.read_mode,
            max_reject_share=config.fail_reject_share,
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
        "dagster/column_schema": parquet_table_schema(result.output),
        "columns": columns,
        "rejected_lines": result.rejected_lines,
        "rejects_path": MetadataValue.path(str(result.rejects)),
        "bytes_in": result.bytes_in,
        "bytes_out": result.bytes_out,
        "seconds": round(result.seconds, 2),
        "rows_per_second": round(result.rows_per_second),
        "read_mode": result.read_mode,
    }


def parquet_table_schema(path: StorePath) -> TableSchema:
    """Column names and types of a written Parquet file, from its footer (no data read; on a store, a range read)."""
    with path.open("rb") as file:
        schema = pq.read_schema(file)
    return TableSchema(columns=[TableColumn(name=f.name, type=str(f.type)) for f in schema])


@asset(
    deps=[dwca_archive],
    group_name=TABLES_GROUP,
    kinds={"duckdb", "parquet"},
    description=(
        "observations.csv as INAT_DATA_DIR/observations.parquet (ZSTD): every column of the header under "
        "its own name, ids as BIGINT, coordinates as DOUBLE, everything else as text exactly as published. "
        "Malformed lines go to INAT_DATA_DIR/rejects/observations.parquet; if more than fail_reject_share "
        "(default 50 %) of the lines are malformed the run fails and the previous table stays."
    ),
)
def observations_parquet(
    context: AssetExecutionContext,
    dwca: DwcaResource,
    store: DataStoreResource,
    duckdb: DuckDBResource,
    config: TableConfig,
) -> MaterializeResult:
    return _convert(context, dwca, store, duckdb, "observations", config)


@asset(
    deps=[dwca_archive],
    group_name=TABLES_GROUP,
    kinds={"duckdb", "parquet"},
    description=(
        "media.csv as INAT_DATA_DIR/media.parquet (ZSTD): one row per photo or sound, `id` = observation id, "
        "`catalogNumber` = photo/sound id. Malformed lines go to INAT_DATA_DIR/rejects/media.parquet (more than "
        "fail_reject_share of them, default 50 %: the run fails and the previous table stays)."
    ),
)
def media_parquet(
    context: AssetExecutionContext,
    dwca: DwcaResource,
    store: DataStoreResource,
    duckdb: DuckDBResource,
    config: TableConfig,
) -> MaterializeResult:
    return _convert(context, dwca, store, duckdb, "media", config)


class RejectShareConfig(Config):
    max_reject_share: float = Field(
        # INAT_MAX_REJECT_SHARE overrides the default: `inat-assets ui --demo` and the demo raise it because
        # the bundled sample has ~1 % malformed lines on purpose (0.99 % observations, 0.38 % media).
        default=float(os.environ.get("INAT_MAX_REJECT_SHARE") or DEFAULT_WARN_REJECT_SHARE),
        description=(
            "Soft limit: above this share of rejected lines (rejected / (rows + rejected)) the check warns; "
            "default from INAT_MAX_REJECT_SHARE, else 0.1 %."
        ),
    )
    fail_reject_share: float = Field(
        default=DEFAULT_MAX_REJECT_SHARE,
        description="Hard limit: above this share the check fails with ERROR severity and blocks downstream assets.",
    )


def reject_share_severity(share: float, config: RejectShareConfig) -> AssetCheckSeverity | None:
    """None when the share is acceptable, WARN above the soft limit, ERROR above the hard one."""
    if share > config.fail_reject_share:
        return AssetCheckSeverity.ERROR
    if share > config.max_reject_share:
        return AssetCheckSeverity.WARN
    return None


def _reject_share_check(asset_def: AssetsDefinition, table: Table):
    @asset_check(
        asset=asset_def,
        name="rejected_lines_under_share",
        blocking=True,
        description=(
            f"Rejected lines of the {table} CSV stay under a share: a warning above the soft limit "
            "(default 0.1 %), an error that blocks downstream assets above the hard limit (default 50 %)."
        ),
    )
    def check(
        context: AssetCheckExecutionContext,
        config: RejectShareConfig,
        store: DataStoreResource,
        duckdb: DuckDBResource,
    ) -> AssetCheckResult:
        paths = store.get()
        with duckdb.get_connection() as con:
            rows = con.execute(
                f"SELECT count(*) FROM read_parquet({sql_string(paths.table(table))})"
            ).fetchone()[0]  # type: ignore[index]
            rejected = con.execute(
                f"SELECT count(*) FROM read_parquet({sql_string(paths.rejects(table))})"
            ).fetchone()[0]  # type: ignore[index]
        share = rejected / (rows + rejected) if rows + rejected else 0.0
        severity = reject_share_severity(share, config)
        return AssetCheckResult(
            passed=severity is None,
            severity=severity or AssetCheckSeverity.WARN,
            metadata={
                "rows": rows,
                "rejected_lines": rejected,
                "share": share,
                "max_share": config.max_reject_share,
                "fail_share": config.fail_reject_share,
            },
        )

    return check


observations_reject_share = _reject_share_check(observations_parquet, "observations")
media_reject_share = _reject_share_check(media_parquet, "media")


@asset_check(asset=observations_parquet, description="Every observation id is present and appears once.")
def unique_observation_ids(store: DataStoreResource, duckdb: DuckDBResource) -> AssetCheckResult:
    with duckdb.get_connection() as con:
        rows, nulls, distinct = con.execute(
            f"SELECT count(*), count(*) - count(id), count(DISTINCT id) FROM read_parquet({sql_string(store.get().table('observations'))})"
        ).fetchone()  # type: ignore[misc]
    duplicates = rows - nulls - distinct
    return AssetCheckResult(
        passed=nulls == 0 and duplicates == 0,
        metadata={"rows": rows, "null_ids": nulls, "duplicate_ids": duplicates},
    )
