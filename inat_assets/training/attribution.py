"""ATTRIBUTION.csv: for every photo in the index (every export is made from it), who made it and under
which licence, as the Creative Commons licences require (creator, licence code, version and URL,
source URL), plus the observation it belongs to."""

from __future__ import annotations

from pathlib import Path

import duckdb

from inat_assets.dwca.convert import sql_string
from inat_assets.storage import atomic_path

ATTRIBUTION_COLUMNS = (
    "photo_id", "split", "creator", "rights_holder", "license", "license_version", "license_url",
    "photo_url", "observation_url",
)  # fmt: skip


def write_attribution(con: duckdb.DuckDBPyConnection, index: Path, output: Path) -> dict[str, int]:
    """Write ``output`` (streamed by DuckDB) and return the photo count per licence code."""
    source = f"read_parquet({sql_string(index)})"
    with atomic_path(output) as tmp:
        con.execute(
            f"""
            COPY (
                SELECT photo_id, split, creator, rights_holder, license,
                       nullif(regexp_extract(license_url, '/([0-9]+\\.[0-9]+)/?$', 1), '') AS license_version,
                       license_url, photo_url, observation_url
                FROM {source} ORDER BY photo_id
            ) TO {sql_string(tmp)} (FORMAT csv, HEADER true)
            """
        )
    return {
        str(code): int(n)
        for code, n in con.execute(f"SELECT license, count(*) FROM {source} GROUP BY ALL ORDER BY 2 DESC, 1").fetchall()
    }
