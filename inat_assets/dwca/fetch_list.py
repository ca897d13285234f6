"""Build fetch.parquet: one row per photo to download, joined to its observation and filtered.

Everything runs inside DuckDB over the two Parquet tables (streamed, spilling to disk when the sort
needs it); nothing is loaded into Python. The output is sorted by ``photo_id`` with small row
groups, so an image batch (a range of photo ids) reads only the row groups that hold its range.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from inat_assets.dwca.convert import sql_string
from inat_assets.errors import FetchListError
from inat_assets.storage import atomic_path

PHOTO_SIZES = ("original", "large", "medium", "small", "thumb", "square")
LICENSE_CODES = ("CC0", "CC-BY", "CC-BY-NC", "CC-BY-SA", "CC-BY-ND", "CC-BY-NC-SA", "CC-BY-NC-ND")
CAPTIVE_VALUES = ("wild", "cultivated")
RANK_FILTERS = ("kingdom", "phylum", "class_", "order", "family", "genus")
FETCH_ROW_GROUP_ROWS = 32_768

# Licence URL or bare code -> code. URLs look like http(s)://creativecommons.org/licenses/by-nc/4.0/
# or .../publicdomain/zero/1.0/; codes like CC-BY-NC, cc by-nc, BY-NC, CC0. Unknown -> NULL.
_LICENSE_MACRO = r"""
CREATE OR REPLACE MACRO inat_bare_code(value) AS
    regexp_replace(upper(regexp_replace(trim(value), '[ _]+', '-', 'g')), '-?[0-9](\.[0-9])?$', '');
CREATE OR REPLACE MACRO inat_license_code(value) AS (
    CASE
        WHEN value IS NULL OR trim(value) = '' THEN NULL
        WHEN regexp_matches(lower(value), 'publicdomain/zero|^\s*cc[-_ ]?0([-_ ]?[0-9](\.[0-9])?)?\s*$') THEN 'CC0'
        WHEN regexp_matches(lower(value), 'creativecommons\.org/licenses/(by(-nc)?(-sa|-nd)?)(/|$)')
            THEN 'CC-' || upper(regexp_extract(lower(value), 'licenses/(by(-nc)?(-sa|-nd)?)(/|$)', 1))
        -- Bare codes, with an optional version: CC-BY-NC, cc by-nc, BY_SA, CC BY 4.0, cc-by-nc-nd-4.0
        WHEN regexp_matches(inat_bare_code(value), '^(CC-)?BY(-NC)?(-SA|-ND)?$')
            THEN 'CC-' || regexp_replace(inat_bare_code(value), '^CC-', '')
        ELSE NULL
    END
)
"""




@dataclass(frozen=True)
class FetchFilters:
    """Which photos go into fetch.parquet. Empty lists mean "no filter on this column"."""

    kingdom: Sequence[str] = ("Plantae",)
    phylum: Sequence[str] = ()
    class_: Sequence[str] = ()
    order: Sequence[str] = ()
    family: Sequence[str] = ()
    genus: Sequence[str] = ()
    taxon_rank: Sequence[str] = ()
    taxon_id: Sequence[int] = ()
    country_code: Sequence[str] = ()
    license: Sequence[str] = ()
    captive: str | None = None
    event_date_from: str | None = None
    event_date_to: str | None = None
    where: str | None = None
    photo_size: str = "original"


@dataclass(frozen=True)
class FetchListResult:
    output: Path
    rows: int
    observations: int
    taxa: int
    orphan_media: int
    sounds_and_other_media: int
    duplicate_photo_ids: int  # StillImage rows in media.csv whose photo id appeared before
    top_families: list[tuple[str | None, int]] = field(default_factory=list)
    licenses: list[tuple[str | None, int]] = field(default_factory=list)
    hosts: list[tuple[str | None, int]] = field(default_factory=list)
    min_photo_id: int | None = None
    max_photo_id: int | None = None


def install_license_macro(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(_LICENSE_MACRO)


def normalize_licenses(con: duckdb.DuckDBPyConnection, values: Sequence[str]) -> list[str]:
    """Normalise user-given licences (codes or URLs) with the same macro the data goes through."""
    install_license_macro(con)
    codes = []
    for value in values:
        row = con.execute("SELECT inat_license_code(?)", [value]).fetchone()
        if not row or row[0] is None:
            raise FetchListError(
                f"license filter {value!r} is not a Creative Commons licence; use one of {', '.join(LICENSE_CODES)}"
            )
        codes.append(row[0])
    return codes


def validate_where(expression: str) -> str:
    """One SQL boolean expression, returned as DuckDB re-renders it from its parse tree.

    Returning the re-rendered text (not the user's) means the expression is always balanced: input
    like ``1) OR (true`` cannot escape the parentheses it is pasted into. Statements, FROM/WHERE
    clauses and subqueries (which could read other files) are refused.
    """
    expression = expression.strip()
    if not expression:
        raise FetchListError("where: the expression is empty")
    wrapped = f"SELECT ({expression}) AS inat_predicate"
    try:
        statements = duckdb.extract_statements(wrapped)
    except duckdb.Error as exc:
        raise FetchListError(f"where: {expression!r} is not a valid SQL expression: {exc}") from exc
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        raise FetchListError(f"where: {expression!r} must be one boolean expression, not statements")
    serialized = duckdb.execute("SELECT json_serialize_sql(?)", [wrapped]).fetchone()[0]  # type: ignore[index]
    tree = json.loads(serialized)
    if tree.get("error"):
        raise FetchListError(f"where: {expression!r} is not a valid SQL expression: {tree.get('error_message')}")
    node = tree["statements"][0]["node"]
    if (
        node.get("type") != "SELECT_NODE"
        or len(node.get("select_list", [])) != 1
        or node.get("from_table", {}).get("type") != "EMPTY"
        or node.get("where_clause") is not None
        or node.get("group_expressions")
        or node.get("having") is not None
        or node.get("modifiers")
        or node.get("cte_map", {}).get("map")
    ):
        raise FetchListError(f"where: {expression!r} must be a single boolean expression")
    if '"SUBQUERY"' in serialized:
        raise FetchListError(f"where: {expression!r} contains a subquery; use the columns of o and m only")
    rendered = duckdb.execute("SELECT json_deserialize_sql(?::JSON)", [serialized]).fetchone()[0]  # type: ignore[index]
    prefix, suffix = "SELECT ", " AS inat_predicate"
    if not (rendered.startswith(prefix) and rendered.endswith(suffix)):
        raise FetchListError(f"where: {expression!r} could not be validated")
    return rendered[len(prefix) : -len(suffix)]


def _in_list(column: str, values: Sequence[object]) -> str:
    return f"{column} IN ({', '.join(sql_string(str(v)) if isinstance(v, str) else str(int(v)) for v in values)})"  # type: ignore[call-overload]


def build_predicates(con: duckdb.DuckDBPyConnection, filters: FetchFilters) -> list[str]:
    """SQL predicates over o (observations) and m (media)."""
    preds: list[str] = []
    for name in RANK_FILTERS:
        values = list(getattr(filters, name))
        if values:
            column = name.rstrip("_")
            preds.append(_in_list(f'o."{column}"', values))
    if filters.taxon_rank:
        preds.append(_in_list("o.taxonRank", list(filters.taxon_rank)))
    if filters.taxon_id:
        preds.append(_in_list("o.taxonID", [int(v) for v in filters.taxon_id]))
    if filters.country_code:
        preds.append(_in_list("o.countryCode", [v.upper() for v in filters.country_code]))
    if filters.license:
        preds.append(_in_list("inat_license_code(m.license)", normalize_licenses(con, filters.license)))
    if filters.captive is not None:
        if filters.captive not in CAPTIVE_VALUES:
            raise FetchListError(
                f"captive must be one of {', '.join(CAPTIVE_VALUES)}, not {filters.captive!r}"
            )
        preds.append(f"o.captive = {sql_string(filters.captive)}")
    for bound, op in ((filters.event_date_from, ">="), (filters.event_date_to, "<=")):
        if bound:
            if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", bound):
                raise FetchListError(f"event date bound {bound!r} must be YYYY-MM-DD")
            preds.append(f"TRY_CAST(left(o.eventDate, 10) AS DATE) {op} DATE {sql_string(bound)}")
    if filters.where:
        preds.append(f"({validate_where(filters.where)})")  # re-rendered from the parse tree: balanced
    return preds


def build_fetch_list(
    con: duckdb.DuckDBPyConnection,
    observations: Path,
    media: Path,
    output: Path,
    filters: FetchFilters,
) -> FetchListResult:
    """Join StillImage media to observations, filter, de-duplicate photo ids and write ``output``."""
    if filters.photo_size not in PHOTO_SIZES:
        raise FetchListError(
            f"photo_size must be one of {', '.join(PHOTO_SIZES)}, not {filters.photo_size!r}"
        )
    install_license_macro(con)
    preds = build_predicates(con, filters)
    where = " AND ".join(["m.type = 'StillImage'", *preds])
    size = filters.photo_size
    url = (
        "m.identifier"
        if size == "original"
        else (f"regexp_replace(m.identifier, '/original(\\.[A-Za-z0-9]+)$', '/{size}\\1')")
    )
    media_rows = f"read_parquet({sql_string(media)}, file_row_number = true)"
    # A photo id listed twice keeps the row with the lowest observation id. Choosing that row on the
    # narrow (id, row number) columns first, instead of a window over the wide joined rows, made
    # this step 3.3x faster on 4M media rows (40.8 -> 12.7 s with a 1 GB memory limit).
    first_rows = f"""
        SELECT file_row_number FROM {media_rows}
        WHERE type = 'StillImage' AND catalogNumber IS NOT NULL
        QUALIFY row_number() OVER (PARTITION BY catalogNumber ORDER BY id, file_row_number) = 1
    """
    select = f"""
        SELECT m.catalogNumber AS photo_id,
               m.id AS observation_id,
               {url} AS url,
               m.format AS format,
               inat_license_code(m.license) AS license,
               m.license AS license_url,
               m.rightsHolder AS rights_holder,
               m.creator AS creator,
               o.scientificName AS scientific_name,
               o.taxonID AS taxon_id,
               o.taxonRank AS taxon_rank,
               o.kingdom, o.phylum, o."class", o."order", o.family, o.genus,
               o.countryCode AS country_code,
               TRY_CAST(left(o.eventDate, 10) AS DATE) AS event_date,
               o.eventDate AS event_date_raw,
               o.captive AS captive
        FROM {media_rows} AS m
        SEMI JOIN first_rows AS f ON f.file_row_number = m.file_row_number
        JOIN read_parquet({sql_string(observations)}) AS o ON o.id = m.id
        WHERE {where}
    """
    query = f"WITH first_rows AS ({first_rows}) {select}"
    try:
        con.execute(f"EXPLAIN {query}")
    except duckdb.Error as exc:
        raise FetchListError(f"the fetch-list filters do not apply to these tables: {exc}") from exc
    # The sort must keep its order on the way out: preserve_insertion_order on for this COPY.
    con.execute("SET preserve_insertion_order = true")
    with atomic_path(output) as tmp:
        con.execute(
            f"""
            COPY ({query} ORDER BY photo_id)
            TO {sql_string(tmp)} (FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL 1, ROW_GROUP_SIZE {FETCH_ROW_GROUP_ROWS})
            """
        )
    return _summarise(con, observations, media, output)


def _summarise(
    con: duckdb.DuckDBPyConnection, observations: Path, media: Path, output: Path
) -> FetchListResult:
    out = f"read_parquet({sql_string(output)})"
    rows, obs, taxa, lo, hi = con.execute(
        f"SELECT count(*), count(DISTINCT observation_id), count(DISTINCT taxon_id), min(photo_id), max(photo_id) FROM {out}"
    ).fetchone()  # type: ignore[misc]
    # One pass over media for everything that did not make it into the list for structural reasons.
    orphans, other, duplicates = con.execute(
        f"""
        SELECT count(*) FILTER (WHERE m.type = 'StillImage' AND o.id IS NULL),
               count(*) FILTER (WHERE m.type IS DISTINCT FROM 'StillImage'),
               count(m.catalogNumber) FILTER (WHERE m.type = 'StillImage')
                 - count(DISTINCT m.catalogNumber) FILTER (WHERE m.type = 'StillImage')
        FROM read_parquet({sql_string(media)}) AS m
        LEFT JOIN (SELECT DISTINCT id FROM read_parquet({sql_string(observations)})) AS o ON o.id = m.id
        """
    ).fetchone()  # type: ignore[misc]
    families = con.execute(
        f"SELECT family, count(*) AS n FROM {out} GROUP BY ALL ORDER BY n DESC, family LIMIT 15"
    ).fetchall()
    licenses = con.execute(
        f"SELECT license, count(*) AS n FROM {out} GROUP BY ALL ORDER BY n DESC, license"
    ).fetchall()
    hosts = con.execute(
        f"SELECT regexp_extract(url, '^[a-zA-Z]+://([^/:]+)', 1) AS host, count(*) AS n FROM {out} GROUP BY ALL ORDER BY n DESC LIMIT 10"
    ).fetchall()
    return FetchListResult(
        output=output,
        rows=int(rows),
        observations=int(obs),
        taxa=int(taxa),
        orphan_media=int(orphans),
        sounds_and_other_media=int(other),
        duplicate_photo_ids=int(duplicates),
        top_families=[(f, int(n)) for f, n in families],
        licenses=[(lic, int(n)) for lic, n in licenses],
        hosts=[(h, int(n)) for h, n in hosts],
        min_photo_id=lo,
        max_photo_id=hi,
    )
