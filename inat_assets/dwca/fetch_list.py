"""Build fetch.parquet: one row per photo to download, joined to its observation and filtered.

Everything runs inside DuckDB over the two Parquet tables (streamed, spilling to disk when the sort
needs it); nothing is loaded into Python. The output is sorted by ``photo_id`` with small row
groups, so an image batch (a range of photo ids) reads only the row groups that hold its range.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from inat_assets.dwca.convert import sql_string
from inat_assets.errors import FetchListError
from inat_assets.photos import PHOTO_SIZES, with_size_sql
from inat_assets.storage import atomic_path

LICENSE_CODES = ("CC0", "CC-BY", "CC-BY-NC", "CC-BY-SA", "CC-BY-ND", "CC-BY-NC-SA", "CC-BY-NC-ND")
CAPTIVE_VALUES = ("wild", "cultivated")
RANK_FILTERS = ("kingdom", "phylum", "class_", "order", "family", "genus")
FETCH_ROW_GROUP_ROWS = 32_768
# The fetch-list query over the real tables (100M+ observation rows) takes minutes; a `where`
# expression that makes it run for half an hour is stuck or far too expensive.
DEFAULT_QUERY_TIMEOUT_SECONDS = 30 * 60.0
# DuckDB's memory_limit covers its buffer manager only: values built by an expression (a
# `range(1e8)` list, a `repeat(x, 1e8)` string) bypass it; one such filter drove RSS to 22 GB under
# a 200 MB limit. A watchdog interrupts the query when the process grows beyond its RSS at the
# start + memory_limit + this headroom (the fetch list of 200k observations peaks at 640 MB RSS
# under a 1 GB limit, so ordinary queries stay far below); it catches growth spread over many rows.
# The watchdog alone cannot bound one huge value: `repeat(o.scientificName, 5000000)` still
# reached 7.6 GB RSS after the interrupt (DuckDB finishes the vector it is computing). Functions
# whose output size is an argument are therefore refused in `where` (a filter never needs them).
SIZED_VALUE_FUNCTIONS = frozenset(
    {"range", "generate_series", "repeat", "list_resize", "array_resize", "lpad", "rpad", "bar", "printf",
     "format", "to_base"}
)
_RSS_HEADROOM_SHARE = 0.5
_RSS_HEADROOM_MIN = 512 * 1024 * 1024
_WATCHDOG_POLL_SECONDS = 0.05
_DUPLICATE_OBSERVATIONS = "inat_fetch_list_repeated_observations"  # temp table of one build

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
    # Not a filter: how long each statement of the build may run before it is stopped with a
    # FetchListError (the longest, the COPY, takes minutes on the real tables).
    timeout_seconds: float = DEFAULT_QUERY_TIMEOUT_SECONDS


@dataclass(frozen=True)
class FetchListResult:
    output: Path
    rows: int
    observations: int
    taxa: int
    orphan_media: int
    sounds_and_other_media: int
    duplicate_photo_ids: int  # StillImage rows in media.csv whose photo id appeared before
    duplicate_observation_rows: int  # observation rows not used: an earlier row has the same id
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
    clauses and subqueries (which could read other files) are refused. Comments are allowed (a
    trailing ``-- note`` ends at the line break the expression is wrapped in) and dropped.
    """
    expression = expression.strip()
    if all(kind == duckdb.token_type.comment for _, kind in duckdb.tokenize(expression)):
        raise FetchListError(f"where: {expression!r} is empty (comments only); give a boolean expression or unset where")
    if "\x00" in expression:
        # DuckDB's parser stops at a NUL byte: 'a\x00b' would silently become 'a'.
        raise FetchListError(f"where: {expression!r} contains a NUL byte (\\x00); remove it")
    # The line breaks end a trailing `-- comment` before the closing parenthesis.
    wrapped = f"SELECT (\n{expression}\n) AS inat_predicate"
    try:
        statements = duckdb.extract_statements(wrapped)
    except duckdb.Error as exc:
        raise FetchListError(f"where: {expression!r} is not a valid SQL expression: {_duckdb_message(exc)}") from None
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        raise FetchListError(f"where: {expression!r} must be one boolean expression, not statements")
    serialized = duckdb.execute("SELECT json_serialize_sql(?)", [wrapped]).fetchone()[0]  # type: ignore[index]
    tree = json.loads(serialized)
    if tree.get("error"):
        raise FetchListError(f"where: {expression!r} is not a valid SQL expression: {tree.get('error_message')}")
    node = tree["statements"][0]["node"]
    if not _is_plain_select(node) or len(node.get("select_list", [])) != 1:
        raise FetchListError(f"where: {expression!r} must be a single boolean expression")
    _check_expression_tree(node["select_list"][0], expression)
    rendered = duckdb.execute("SELECT json_deserialize_sql(?::JSON)", [serialized]).fetchone()[0]  # type: ignore[index]
    prefix, suffix = "SELECT ", " AS inat_predicate"
    if not (rendered.startswith(prefix) and rendered.endswith(suffix)):
        raise FetchListError(f"where: {expression!r} could not be validated")
    return rendered[len(prefix) : -len(suffix)]


def _is_plain_select(node: dict[str, Any]) -> bool:
    """A SELECT of expressions only: no FROM, WHERE, GROUP BY, HAVING, QUALIFY, modifiers or CTEs."""
    return (
        node.get("type") == "SELECT_NODE"
        and node.get("from_table", {}).get("type") == "EMPTY"
        and node.get("where_clause") is None
        and not node.get("group_expressions")
        and node.get("having") is None
        and node.get("qualify") is None
        and node.get("sample") is None
        and not node.get("modifiers")
        and not node.get("cte_map", {}).get("map")
    )


def _check_expression_tree(tree: Any, expression: str) -> None:
    """Walk the parse tree: no subquery except the one DuckDB makes of ``x = ANY([...])``, and none
    of the functions that build a value whose size an argument chooses.

    DuckDB parses ``x = ANY(<list>)`` into ``x = ANY(SELECT unnest(<list>))``: a SELECT without FROM
    that reads nothing but its argument, which this walk checks like the rest of the expression.
    """
    if isinstance(tree, list):
        for item in tree:
            _check_expression_tree(item, expression)
        return
    if not isinstance(tree, dict):
        return
    if tree.get("class") == "FUNCTION" and str(tree.get("function_name", "")).lower() in SIZED_VALUE_FUNCTIONS:
        raise FetchListError(
            f"where: {expression!r} calls {tree['function_name']}(), which builds a value of any size "
            f"(not allowed in where: {', '.join(sorted(SIZED_VALUE_FUNCTIONS))}); filter on the columns instead"
        )
    if tree.get("class") == "SUBQUERY":
        inner = tree.get("subquery", {}).get("node", {})
        select_list = inner.get("select_list", [])
        if not (
            tree.get("subquery_type") in ("ANY", "ALL")
            and _is_plain_select(inner)
            and len(select_list) == 1
            and select_list[0].get("class") == "FUNCTION"
            and select_list[0].get("function_name") == "unnest"
        ):
            raise FetchListError(f"where: {expression!r} contains a subquery; use the columns of o and m only")
    for value in tree.values():
        _check_expression_tree(value, expression)


def _duckdb_message(exc: BaseException) -> str:
    """DuckDB's message without the excerpt of our generated query and without its tuning hints
    (``SET threads=...``, ``SET preserve_insertion_order=...``): the user cannot act on either."""
    text = str(exc).strip()
    for marker in ("\nLINE ", "Possible solution", "\nSee also"):
        text = text.split(marker, 1)[0]
    return " ".join(text.split())


_UNITS = {"bytes": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
          "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}  # fmt: skip


def memory_limit_bytes(con: duckdb.DuckDBPyConnection) -> int:
    """The connection's memory_limit in bytes (DuckDB reports it as text like ``190.7 MiB``)."""
    text = con.execute("SELECT current_setting('memory_limit')").fetchone()[0]  # type: ignore[index]
    match = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]+)\s*", str(text))
    if not match or match.group(2).lower() not in _UNITS:
        raise FetchListError(f"DuckDB memory_limit {text!r} is not a size this project understands")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None  # not Linux: only the timeout guards the query


class QueryWatchdog:
    """Interrupts a connection's running statement after ``timeout_seconds`` or when the process's
    RSS exceeds ``rss_cap`` bytes; ``reason`` then says which ("timeout" or "memory")."""

    def __init__(self, con: duckdb.DuckDBPyConnection, timeout_seconds: float, rss_cap: int | None) -> None:
        self.con = con
        self.timeout_seconds = timeout_seconds
        self.rss_cap = rss_cap
        self.reason: str | None = None
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="inat-fetch-list-watchdog", daemon=True)

    def __enter__(self) -> QueryWatchdog:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(_WATCHDOG_POLL_SECONDS):
            rss = _rss_bytes() if self.rss_cap is not None else None
            if rss is not None:
                self.peak_rss = max(self.peak_rss, rss)
            if time.monotonic() - self._started > self.timeout_seconds:
                self.reason = "timeout"
            elif rss is not None and self.rss_cap is not None and rss > self.rss_cap:
                self.reason = "memory"
            if self.reason:
                self.con.interrupt()
                return


@contextmanager
def guarded_query(con: duckdb.DuckDBPyConnection, filters: FetchFilters, stage: str) -> Iterator[None]:
    """Run the statements of the ``with`` block under a QueryWatchdog; every DuckDB error comes out
    as a FetchListError that names the ``where`` expression (if any) and says what to do."""
    limit = memory_limit_bytes(con)
    baseline = _rss_bytes()
    cap = None if baseline is None else baseline + limit + max(int(limit * _RSS_HEADROOM_SHARE), _RSS_HEADROOM_MIN)
    where = f" with where={filters.where!r}" if filters.where else ""
    dog = QueryWatchdog(con, filters.timeout_seconds, cap)
    try:
        with dog:
            yield
    except duckdb.Error as exc:
        if dog.reason == "timeout":
            message = (
                f"the fetch list{where} was stopped after {filters.timeout_seconds:g} s (its timeout_seconds); "
                "narrow or simplify the where expression, or raise timeout_seconds"
            )
        elif dog.reason == "memory" or isinstance(exc, duckdb.OutOfMemoryException):
            message = (
                f"the fetch list{where} was stopped: it needed more memory than DuckDB's memory limit "
                f"({limit / 2**20:,.0f} MiB) allows (the process reached {dog.peak_rss / 2**20:,.0f} MiB); "
                "simplify the where expression (no huge lists or strings), or raise INAT_DUCKDB_MEMORY_LIMIT"
            )
        elif filters.where:
            message = f"the fetch list{where} failed while {stage}: {_duckdb_message(exc)}; fix the where expression"
        else:
            message = f"the fetch list failed while {stage}: {_duckdb_message(exc)}"
        raise FetchListError(message) from None


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
    url = with_size_sql("m.identifier", filters.photo_size)
    media_rows = f"read_parquet({sql_string(media)}, file_row_number = true)"
    observation_rows = f"read_parquet({sql_string(observations)}, file_row_number = true)"
    # A photo id listed twice keeps the row with the lowest observation id. Choosing that row on the
    # narrow (id, row number) columns first, instead of a window over the wide joined rows, made
    # this step 3.3x faster on 4M media rows (40.8 -> 12.7 s with a 1 GB memory limit).
    first_rows = f"""
        SELECT file_row_number FROM {media_rows}
        WHERE type = 'StillImage' AND catalogNumber IS NOT NULL
        QUALIFY row_number() OVER (PARTITION BY catalogNumber ORDER BY id, file_row_number) = 1
    """
    # An observation id listed twice would multiply its photos in the join: its first row (file
    # order) is kept. The repeated ids are found on the narrow id column alone (0.05 s of CPU for
    # 200k observations); only when there are some does the join read row numbers and check them
    # (that join costs 4 % more CPU: 2.81 -> 2.93 s for 335k photos, bench/fetch_list.py).
    repeated = _DUPLICATE_OBSERVATIONS

    def fetch_query(has_repeats: bool) -> str:
        if has_repeats:
            observation_join = f"""JOIN {observation_rows} AS o ON o.id = m.id
            LEFT JOIN {repeated} AS r ON r.id = o.id"""
            keep = "(r.id IS NULL OR o.file_row_number = r.first_row) AND "
        else:
            observation_join, keep = f"JOIN read_parquet({sql_string(observations)}) AS o ON o.id = m.id", ""
        return f"""
        WITH first_rows AS ({first_rows})
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
        {observation_join}
        WHERE {keep}{where}
        """

    try:
        with guarded_query(con, filters, "finding repeated observation ids"):
            con.execute(
                f"""
                CREATE OR REPLACE TEMP TABLE {repeated} AS
                SELECT id, min(file_row_number) AS first_row, count(*) - 1 AS dropped_rows
                FROM {observation_rows} GROUP BY id HAVING count(*) > 1
                """
            )
        dropped = int(con.execute(f"SELECT coalesce(sum(dropped_rows), 0) FROM {repeated}").fetchone()[0])  # type: ignore[index]
        query = fetch_query(has_repeats=dropped > 0)
        with guarded_query(con, filters, "planning the query (do the filters apply to these tables?)"):
            con.execute(f"EXPLAIN {query}")
        # The sort must keep its order on the way out: preserve_insertion_order on for this COPY.
        con.execute("SET preserve_insertion_order = true")
        with atomic_path(output) as tmp, guarded_query(con, filters, f"writing {output.name}"):
            con.execute(
                f"""
                COPY ({query} ORDER BY photo_id)
                TO {sql_string(tmp)} (FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL 1, ROW_GROUP_SIZE {FETCH_ROW_GROUP_ROWS})
                """
            )
    finally:
        con.execute(f"DROP TABLE IF EXISTS {repeated}")
    return _summarise(con, observations, media, output, dropped)



def _summarise(
    con: duckdb.DuckDBPyConnection, observations: Path, media: Path, output: Path, duplicate_observation_rows: int
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
        duplicate_observation_rows=duplicate_observation_rows,
        top_families=[(f, int(n)) for f, n in families],
        licenses=[(lic, int(n)) for lic, n in licenses],
        hosts=[(h, int(n)) for h, n in hosts],
        min_photo_id=lo,
        max_photo_id=hi,
    )
