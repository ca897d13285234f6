"""Image batches: fixed photo-id ranges of fetch.parquet, one Dagster partition each.

A batch key names a range: ``batch-000123`` holds photo ids ``[123 * span, 124 * span)`` (the key
and folder rules are in ``inat_assets.photos``). Because keys come from ids and a fixed span, a
refreshed archive keeps every existing key and only adds new ones.

The span rule, the same for ``image_batches`` and ``download-images``: the span recorded in the
output's ``batches.json`` (``INAT_DATA_DIR/batches.json``, or ``<--output>/batches.json``); else
the one asked for (``INAT_BATCH_SPAN``, ``--batch-span``); else the data dir's when
``download-images`` reads a data dir's fetch.parquet; else a new one of about ``target`` photos per
batch, rounded to 1/2/5 x 10^k. It is then recorded, and every later run reads it from there, so a
photo always lands in the same batch folder whichever tool fetched it.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb

from inat_assets.download.config import PhotoTask
from inat_assets.dwca.convert import sql_string
from inat_assets.errors import BatchError
from inat_assets.photos import batch_key, batch_range
from inat_assets.storage import StorePath, atomic_write_bytes, guarded, register

__all__ = [
    "BATCHES_FILE",
    "BatchError",
    "BatchPlan",
    "batch_key",
    "batch_range",
    "choose_span",
    "count_batch",
    "iter_batch_tasks",
    "load_span",
    "nice_span",
    "plan_batches",
    "record_span",
]

# Photos per batch when the span is chosen here. Each batch is one Dagster run, and a run costs a fixed
# ~3 s (a fresh process importing Dagster, loading the definitions, writing its events), measured by
# bench/dagster_overhead.py against the engine's own time on the local mirror at 50 ms; the goal is at
# most 2 % of a batch. On the quiet 2-core VM (2026-12-05) the engine fetched 3,000 photos/s inside such a
# run, so the 3.0 s were 3.5 % of a 250,000-photo batch (the default until then; 1.0 % when it was chosen
# on 11-27, with the engine at 140 photos/s on a loaded machine) and 1.6-1.8 % of 500,000. A batch's
# bookkeeping stays small: the previous manifest (~90 B per photo) and the folder's id set (~60 B) are
# ~75 MB at 500k, ~190 MB at the 2.5x that rounding the span up to 1/2/5 x 10^k ids can give.
# Existing data directories keep the span recorded in their batches.json.
DEFAULT_PHOTOS_PER_BATCH = 500_000
BATCHES_FILE = "batches.json"  # the span of a folder of batch folders, next to them




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


def load_span(state_file: StorePath) -> int | None:
    if not state_file.exists():
        return None
    try:
        return int(json.loads(state_file.read_text())["span"])
    except (ValueError, KeyError, TypeError) as exc:
        raise BatchError(f"{state_file} is unreadable ({exc}); restore it or delete it together with the batches") from exc


def choose_span(
    state_file: StorePath,
    requested_span: int,
    photo_ids: Callable[[], tuple[int, int, int]],
    *,
    requested_by: str = "INAT_BATCH_SPAN",
    inherited_from: StorePath | None = None,
) -> int:
    """The span rule (module docstring). ``photo_ids`` gives (count, min, max) of the photo ids and
    is called only when a new span must be chosen."""
    stored = load_span(state_file)
    if requested_span and stored and requested_span != stored:
        raise BatchError(
            f"{requested_by}={requested_span} but the existing image batches use span {stored} "
            f"(kept in {state_file}). Drop {requested_by}, or move the batch folders, manifests and "
            f"{state_file.name} aside to start over with a new span."
        )
    span = stored or requested_span or (load_span(inherited_from) if inherited_from else None)
    if not span:
        photos, lo, hi = photo_ids()
        span = nice_span(photos, lo, hi)
    return span


def record_span(state_file: StorePath, span: int) -> None:
    """Keep ``span`` for every later run on this folder (once; an existing record is never changed)."""
    if load_span(state_file) is None:
        atomic_write_bytes(state_file, json.dumps({"span": span}).encode())


def data_dir_span_file(fetch_list: StorePath) -> StorePath:
    """The batches.json of the data dir a fetch list belongs to: a dataset's list lives in
    ``<data>/datasets/<name>/fetch.parquet``, a list of another origin beside its own record."""
    if fetch_list.parent.parent.name == "datasets":
        return fetch_list.parent.parent.parent / BATCHES_FILE
    return fetch_list.parent / BATCHES_FILE


def span_for_folder(output: Path, fetch_list: StorePath, id_column: str, requested_span: int, *, record: bool) -> int:
    """``download-images``' span for the batch folders under ``output``: the span rule, with
    ``output/batches.json`` as the record and the fetch list's data dir as the one to inherit."""

    def photo_ids() -> tuple[int, int, int]:
        column = '"' + id_column.replace('"', '""') + '"'
        with register(duckdb.connect(), fetch_list) as con:
            photos, lo, hi = con.execute(
                f"SELECT count(v), min(v), max(v) FROM (SELECT TRY_CAST({column} AS BIGINT) AS v "
                f"FROM read_parquet({sql_string(fetch_list)}))"
            ).fetchone()  # type: ignore[misc]
        return int(photos), int(lo or 0), int(hi or 0)

    state_file = output / BATCHES_FILE
    span = choose_span(
        state_file, requested_span, photo_ids, requested_by="--batch-span", inherited_from=data_dir_span_file(fetch_list)
    )
    if record:
        record_span(state_file, span)
    return span


def plan_batches(
    con: duckdb.DuckDBPyConnection, fetch_list: StorePath, state_file: StorePath, requested_span: int = 0
) -> BatchPlan:
    """Fix the span (the stored one, the requested one, or a new one) and list the batch keys."""
    source = f"read_parquet({sql_string(fetch_list)})"

    def photo_ids() -> tuple[int, int, int]:
        photos, lo, hi = con.execute(f"SELECT count(*), min(photo_id), max(photo_id) FROM {source}").fetchone()  # type: ignore[misc]
        return int(photos), int(lo or 0), int(hi or 0)

    # Every dataset's fetch list goes through here: the lock (a lease on a store, held across machines)
    # makes the first one to fix the span win.
    with guarded(state_file.with_name(state_file.name + ".lock"), purpose="choosing the image batch span", wait_seconds=60):
        span = choose_span(state_file, requested_span, photo_ids)
        has_photos = con.execute(f"SELECT count(*) > 0 FROM {source}").fetchone()[0]  # type: ignore[index]
        # An empty first list (a typo in a filter) must not fix a span for good; the next run chooses.
        if has_photos:
            record_span(state_file, span)
    indices = con.execute(f"SELECT DISTINCT photo_id // {int(span)} AS i FROM {source} ORDER BY i").fetchall()
    return BatchPlan(span, [batch_key(int(i) * span, span) for (i,) in indices])


def iter_batch_tasks(
    con: duckdb.DuckDBPyConnection, fetch_list: StorePath, key: str, span: int, *, chunk_rows: int = 8192
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


def count_batch(con: duckdb.DuckDBPyConnection, fetch_list: StorePath, key: str, span: int) -> int:
    lo, hi = batch_range(key, span)
    row = con.execute(
        f"SELECT count(*) FROM read_parquet({sql_string(fetch_list)}) WHERE photo_id >= {lo} AND photo_id < {hi}"
    ).fetchone()
    return int(row[0]) if row else 0


def outdated_batches(
    con: duckdb.DuckDBPyConnection, fetch_list: StorePath, manifests: Sequence[StorePath], span: int
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


def write_outdated(path: StorePath, keys: Sequence[str]) -> None:
    """Record the batches whose photos changed at this fetch list (replacing the previous record)."""
    atomic_write_bytes(path, json.dumps({"keys": list(keys), "written_at": time.time()}).encode())


def read_outdated(path: StorePath) -> tuple[list[str], float]:
    """The recorded outdated batch keys and when they were recorded; none when there is no record."""
    try:
        record = json.loads(path.read_text())
        return [str(k) for k in record["keys"]], float(record["written_at"])
    except FileNotFoundError:
        return [], 0.0
    except (ValueError, KeyError, TypeError) as exc:
        raise BatchError(f"{path} is unreadable ({exc}); materialize the dataset's fetch_parquet again to rewrite it") from exc
