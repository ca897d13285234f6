"""Which downloaded photos no declared dataset selects any more (and removing them on request).

Photos live once per size in ``photos/<size>/<batch>/<photo_id>.<ext>``. A photo is in use when
the current fetch list of at least one declared dataset of that size lists its id. Nothing here
runs on its own: ``inat-assets photos unused`` reports, and deletes only with ``--delete``.
Memory stays bounded by one batch folder: each folder is compared with the ids its range holds.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import duckdb

from inat_assets.batches import batch_range
from inat_assets.dwca.convert import sql_string
from inat_assets.locks import LockedError
from inat_assets.storage import DataStore, StorePath, acquire_guard, list_dir

_PHOTO_FILE = re.compile(r"^(\d+)\.(?:jpg|png|gif|webp)$")
_BATCH_FOLDER = re.compile(r"^batch-\d{6,}$")


@dataclass(frozen=True)
class SelectedPhotos:
    """One dataset's current selection: its fetch list and the size it downloads."""

    dataset: str
    size: str
    fetch_list: StorePath


@dataclass(frozen=True)
class UnusedPhotos:
    count: int
    bytes: int
    deleted: int
    by_size: dict[str, tuple[int, int]]  # size -> (count, bytes)
    busy_folders: list[str]  # size/batch folders skipped because a download holds them


def find_unused_photos(
    con: duckdb.DuckDBPyConnection,
    store: DataStore,
    span: int | None,
    selections: Sequence[SelectedPhotos],
    *,
    delete: bool = False,
) -> UnusedPhotos:
    """Count (and with ``delete`` remove) the photo files no selection lists.

    Deleting takes each folder's lock, the one image_batches holds while downloading into it, so a
    batch that is running is never emptied under its feet (its folder is skipped and listed).
    """
    count = size_bytes = deleted = 0
    by_size: dict[str, tuple[int, int]] = {}
    busy: list[str] = []
    # One listing per folder (a directory scan, or one listing of that prefix on a store).
    for size_dir in (e for e in list_dir(store.photos_root()) if e.is_dir):
        lists = [s.fetch_list for s in selections if s.size == size_dir.name and s.fetch_list.exists()]
        size_count = size_total = 0
        for folder in (e for e in list_dir(size_dir.path) if e.is_dir and _BATCH_FOLDER.match(e.name)):
            wanted = _selected_ids(con, lists, folder.name, span) if lists and span else set()
            try:
                lock = (
                    acquire_guard(store.photos_lock(size_dir.name, folder.name), purpose="deleting unused photos")
                    if delete
                    else None
                )
            except LockedError:
                busy.append(f"{size_dir.name}/{folder.name}")
                continue
            try:
                for entry in list_dir(folder.path):
                    match = _PHOTO_FILE.match(entry.name)
                    if entry.is_dir or not match or int(match[1]) in wanted:
                        continue
                    size_count += 1
                    size_total += entry.size
                    if delete:
                        entry.path.unlink(missing_ok=True)
                        deleted += 1
            finally:
                if lock:
                    lock.release()
        if size_count:
            by_size[size_dir.name] = (size_count, size_total)
        count += size_count
        size_bytes += size_total
    return UnusedPhotos(count, size_bytes, deleted, by_size, busy)


def _selected_ids(con: duckdb.DuckDBPyConnection, fetch_lists: list[StorePath], batch: str, span: int) -> set[int]:
    """Ids in this batch's range of any of the fetch lists (sorted by photo_id: row groups are skipped)."""
    lo, hi = batch_range(batch, span)
    files = "[" + ", ".join(sql_string(f) for f in fetch_lists) + "]"
    rows = con.execute(
        f"SELECT DISTINCT photo_id FROM read_parquet({files}, union_by_name = true) WHERE photo_id >= {lo} AND photo_id < {hi}"
    ).fetchall()
    return {int(r[0]) for r in rows}
