"""Image batches: fixed photo-id ranges of fetch.parquet, one Dagster partition each.

A batch key names a range: ``batch-000123`` holds photo ids ``[123 * span, 124 * span)``. Because
keys come from ids and a fixed span, a refreshed archive keeps every existing key and only adds
new ones. The span is chosen once (about ``target`` photos per batch, rounded to 1/2/5 x 10^k)
and kept in ``INAT_DATA_DIR/batches.json``; every later run, on any machine, reads it from there.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb

from inat_assets.download.config import PhotoTask, batch_key
from inat_assets.dwca.convert import sql_string
from inat_assets.errors import BatchError
from inat_assets.locks import locked
from inat_assets.storage import atomic_write_bytes

DEFAULT_PHOTOS_PER_BATCH = 50_000
_KEY = re.compile(r"^batch-(\d{6,})$")




@dataclass(frozen=True)
class BatchPlan:
    span: int
    keys: list[str]  # every key that holds at least one photo of fetch.parquet, ascending


def nice_span(photos: int, min_id: int, max_id: int, target: int = DEFAULT_PHOTOS_PER_BATCH) -> int:
    """A round span giving about ``target`` photos per batch at this fetch list's id density."""
    if photos <= 0:
        return 1_000_000
    raw = max(1.0, (max_id - min_id + 1) * target / photos)
    exponent = 10 ** math.floor(math.log10(raw))
    for step in (1, 2, 5, 10):
        if raw <= step * exponent:
            return int(step * exponent)
    return int(10 * exponent)


def batch_range(key: str, span: int) -> tuple[int, int]:
    """``batch-000123`` -> (123 * span, 124 * span)."""
    match = _KEY.match(key)
    if not match:
        raise BatchError(f"{key!r} is not an image batch key (expected batch-NNNNNN)")
    index = int(match.group(1))
    return index * span, (index + 1) * span


def load_span(state_file: Path) -> int | None:
    if not state_file.exists():
        return None
    try:
        return int(json.loads(state_file.read_text())["span"])
    except (ValueError, KeyError, TypeError) as exc:
        raise BatchError(f"{state_file} is unreadable ({exc}); restore it or delete it together with the batches") from exc


def plan_batches(
    con: duckdb.DuckDBPyConnection, fetch_list: Path, state_file: Path, requested_span: int = 0
) -> BatchPlan:
    """Fix the span (the stored one, the requested one, or a new one) and list the batch keys."""
    source = f"read_parquet({sql_string(fetch_list)})"
    # Every dataset's fetch list goes through here: the lock makes the first one to fix the span win.
    with locked(state_file.with_name(state_file.name + ".lock"), purpose="choosing the image batch span", wait_seconds=60):
        stored = load_span(state_file)
        if requested_span and stored and requested_span != stored:
            raise BatchError(
                f"INAT_BATCH_SPAN={requested_span} but the existing image batches use span {stored} "
                f"(kept in {state_file}). Unset INAT_BATCH_SPAN, or move photos/, datasets/*/manifests/ and "
                f"{state_file.name} aside to start over with a new span."
            )
        span = stored or requested_span
        if not span:
            photos, lo, hi = con.execute(f"SELECT count(*), min(photo_id), max(photo_id) FROM {source}").fetchone()  # type: ignore[misc]
            span = nice_span(int(photos), int(lo or 0), int(hi or 0))
        has_photos = con.execute(f"SELECT count(*) > 0 FROM {source}").fetchone()[0]  # type: ignore[index]
        # An empty first list (a typo in a filter) must not fix a span for good; the next run chooses.
        if stored is None and has_photos:
            atomic_write_bytes(state_file, json.dumps({"span": span}).encode())
    indices = con.execute(f"SELECT DISTINCT photo_id // {int(span)} AS i FROM {source} ORDER BY i").fetchall()
    return BatchPlan(span, [batch_key(int(i) * span, span) for (i,) in indices])


def iter_batch_tasks(
    con: duckdb.DuckDBPyConnection, fetch_list: Path, key: str, span: int, *, chunk_rows: int = 8192
) -> Iterator[PhotoTask]:
    """Stream one batch's photos; DuckDB skips row groups outside the id range (fetch.parquet is sorted)."""
    lo, hi = batch_range(key, span)
    result = con.execute(
        f"SELECT photo_id, url FROM read_parquet({sql_string(fetch_list)}) "
        f"WHERE photo_id >= {lo} AND photo_id < {hi} ORDER BY photo_id"
    )
    while rows := result.fetchmany(chunk_rows):
        for photo_id, url in rows:
            yield PhotoTask(int(photo_id), url)


def count_batch(con: duckdb.DuckDBPyConnection, fetch_list: Path, key: str, span: int) -> int:
    lo, hi = batch_range(key, span)
    row = con.execute(
        f"SELECT count(*) FROM read_parquet({sql_string(fetch_list)}) WHERE photo_id >= {lo} AND photo_id < {hi}"
    ).fetchone()
    return int(row[0]) if row else 0


def outdated_batches(
    con: duckdb.DuckDBPyConnection, fetch_list: Path, manifests: list[Path], span: int
) -> list[str]:
    """Keys of the given manifests whose photos differ from the fetch list's photos in that range.

    Photos are compared by id and URL path (``/photos/<id>/<size>.<ext>``; the host may be a
    mirror's), so a changed filter or photo size both count. A batch without a manifest is missing,
    not outdated, and is not listed.
    """
    if not manifests:
        return []
    files = "[" + ", ".join(sql_string(m) for m in manifests) + "]"
    path = r"regexp_extract(url, '^[a-zA-Z]+://[^/]+(/[^?#]*)', 1)"
    rows = con.execute(
        rf"""
        WITH listed AS (
            SELECT regexp_extract(filename, 'batch-([0-9]+)\.parquet$', 1)::BIGINT AS i, photo_id, {path} AS p
            FROM read_parquet({files}, filename = true)
        ),
        wanted AS (
            SELECT photo_id // {int(span)} AS i, photo_id, {path} AS p
            FROM read_parquet({sql_string(fetch_list)})
            WHERE photo_id // {int(span)} IN (SELECT DISTINCT i FROM listed)
        )
        SELECT DISTINCT i FROM ((SELECT * FROM listed EXCEPT SELECT * FROM wanted)
                                UNION ALL (SELECT * FROM wanted EXCEPT SELECT * FROM listed))
        ORDER BY i
        """
    ).fetchall()
    return [batch_key(int(i) * span, span) for (i,) in rows]
