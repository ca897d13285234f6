"""`inat-assets batches [DATASET]`: every image batch key with its photo-id range, photo count and status.

The keys and statuses come from the Dagster instance (`inat_assets.instance`: the data directory's own
DAGSTER_HOME unless one is set); the photo counts from the dataset's fetch list, whose path and batch
span its last `fetch_parquet` materialization recorded. Status is Dagster's partition status:
materialized, failed, in progress, or missing (never run).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from dagster import AssetKey, DagsterInstance, Definitions, DynamicPartitionsDefinition

from inat_assets.batches import batch_range, load_span
from inat_assets.dwca.convert import sql_string
from inat_assets.errors import InatAssetsError
from inat_assets.instance import data_store_from_env, open_instance
from inat_assets.storage import DataStore, StorePath

STATUSES = ("materialized", "failed", "in-progress", "missing")
FETCH_LIST_NAME = "fetch_parquet"


@dataclass(frozen=True)
class ImageDataset:
    """A dataset's partitioned image asset and the fetch list it downloads from."""

    name: str
    asset_key: AssetKey
    partitions_def: DynamicPartitionsDefinition
    fetch_key: AssetKey | None


@dataclass(frozen=True)
class BatchRow:
    key: str
    first_id: int | None  # [first_id, end_id) when the span is known
    end_id: int | None
    photos: int | None  # photos of the current fetch list in this batch
    status: str


def load_definitions() -> Definitions:
    from inat_assets import definitions

    defs = definitions.defs
    return defs if isinstance(defs, Definitions) else defs()  # a @dg.definitions function, if it becomes one


def image_datasets(defs: Definitions) -> list[ImageDataset]:
    """Every materializable asset partitioned by dynamic partitions: one per dataset, named by key prefix."""
    graph = defs.resolve_asset_graph()
    found = []
    for key in sorted(graph.materializable_asset_keys, key=lambda k: k.to_user_string()):
        node = graph.get(key)
        if not isinstance(node.partitions_def, DynamicPartitionsDefinition) or not node.partitions_def.name:
            continue
        fetch = [p for p in node.parent_keys if p.path[-1] == FETCH_LIST_NAME]
        found.append(
            ImageDataset("/".join(key.path[:-1]) or key.path[-1], key, node.partitions_def, fetch[0] if fetch else None)
        )
    return found


def _fetch_list(instance: DagsterInstance, dataset: ImageDataset, store: DataStore) -> tuple[StorePath | None, int | None]:
    """The fetch list's path and the batch span, from its latest materialization (or batches.json)."""
    path: StorePath | None = None
    span: int | None = None
    event = instance.get_latest_materialization_event(dataset.fetch_key) if dataset.fetch_key else None
    if event and event.asset_materialization:
        meta = {k: getattr(v, "value", v) for k, v in event.asset_materialization.metadata.items()}
        path = store.locate(str(meta["path"])) if meta.get("path") else None
        span = int(meta["batch_span"]) if meta.get("batch_span") else None
    if span is None:
        span = load_span(store.batch_state())
    return path, span


def _photos_per_batch(store: DataStore, fetch_list: StorePath, span: int) -> dict[int, int]:
    # One aggregate over photo_id (a few MB read even for millions of photos); one row per batch comes back.
    with store.connect() as con:
        rows = con.execute(
            f"SELECT photo_id // {int(span)}, count(*) FROM read_parquet({sql_string(fetch_list)}) GROUP BY 1"
        ).fetchall()
    return {int(index): int(count) for index, count in rows}


def list_batches(instance: DagsterInstance, dataset: ImageDataset, store: DataStore | None = None) -> list[BatchRow]:
    keys = instance.get_dynamic_partitions(dataset.partitions_def.name)
    if not keys:
        return []
    store = store or data_store_from_env()
    statuses = instance.get_status_by_partition(dataset.asset_key, keys, dataset.partitions_def) or {}
    fetch_list, span = _fetch_list(instance, dataset, store)
    counts = _photos_per_batch(store, fetch_list, span) if fetch_list and span and fetch_list.exists() else None
    rows = []
    for key in sorted(keys):
        status = statuses.get(key)
        first, end = batch_range(key, span) if span else (None, None)
        photos = counts.get(first // span, 0) if counts is not None and first is not None and span else None
        label = status.value.lower().replace("_", "-") if status is not None else "missing"
        rows.append(BatchRow(key, first, end, photos, label))
    return rows


def format_table(dataset: ImageDataset, rows: Sequence[BatchRow], shown: Sequence[BatchRow]) -> str:
    """A summary line over ``rows`` (every batch), then one line per batch in ``shown``."""
    if not rows:
        fetch = dataset.fetch_key.to_user_string() if dataset.fetch_key else "the fetch list"
        return f"{dataset.name}: no batches yet. Materialize {fetch} first; it registers the batch keys in this instance."
    tally = Counter(row.status for row in rows)
    photos = sum(row.photos or 0 for row in rows)
    summary = ", ".join(f"{tally.get(s, 0):,} {s}" for s in STATUSES)
    lines = [
        f"{dataset.name} ({dataset.asset_key.to_user_string()}): {len(rows):,} batches, {photos:,} photos; {summary}",
        f"{'key':<16}{'photo ids':>28}{'photos':>10}  status",
    ]
    for row in shown:
        ids = f"[{row.first_id:,}, {row.end_id:,})" if row.first_id is not None else "?"
        photos_text = f"{row.photos:,}" if row.photos is not None else "?"
        lines.append(f"{row.key:<16}{ids:>28}{photos_text:>10}  {row.status}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="inat-assets batches", description=__doc__)
    parser.add_argument("dataset", nargs="?", help="dataset name (default: every dataset)")
    parser.add_argument("--status", choices=STATUSES, help="only batches with this status")
    parser.add_argument("--keys", action="store_true", help="print only the keys, one per line (for loops)")
    args = parser.parse_args(argv)
    datasets = image_datasets(load_definitions())
    if args.dataset:
        names = ", ".join(d.name for d in datasets) or "none"
        datasets = [d for d in datasets if d.name == args.dataset]
        if not datasets:
            parser.error(f"no dataset named {args.dataset!r}; the datasets are: {names}")
    try:
        store = data_store_from_env()
        instance = open_instance()
    except InatAssetsError as exc:  # an unusable INAT_DATA_DIR, or a store without DAGSTER_HOME
        print(f"inat-assets batches: {exc}", file=sys.stderr)
        return 2
    try:
        for number, dataset in enumerate(datasets):
            rows = list_batches(instance, dataset, store)
            shown = [row for row in rows if args.status in (None, row.status)]
            if args.keys:
                for row in shown:
                    print(row.key)
            else:
                print(("\n" if number else "") + format_table(dataset, rows, shown))
    finally:
        instance.dispose()
    return 0
