"""`inat-assets photos unused [--delete]`: photos on disk that no declared dataset selects any more.

After a declaration changes (Plantae -> Fungi, a narrower licence, another size) the photos of
the old selection stay on disk: never deleted silently. This command reports them (count, bytes,
per size) and removes them only with ``--delete``. Run it when no image batch is downloading.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from inat_assets.errors import InatAssetsError
from inat_assets.photo_usage import SelectedPhotos
from inat_assets.storage import DataStore

if TYPE_CHECKING:
    from dagster import Definitions

# Dagster (and what imports it) is imported by `run` only: `inat-assets` builds this command's parser for
# every command, and `inat-assets env` / `--help` should not pay Dagster's ~2 s import.


def declared_selections(defs: Definitions, store: DataStore) -> list[SelectedPhotos]:
    """One entry per declared dataset, read from its image_batches asset (metadata dataset, photo_size)."""
    selections = []
    for spec in defs.resolve_all_asset_specs():
        name, size = spec.metadata.get("dataset"), spec.metadata.get("photo_size")
        if isinstance(name, str) and isinstance(size, str):
            selections.append(SelectedPhotos(name, size, store.fetch_list(name)))
    return selections


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="photos_command", required=True)
    unused = sub.add_parser("unused", help="count (and with --delete remove) photos no dataset selects")
    unused.add_argument("--delete", action="store_true", help="delete them (default: only report)")
    unused.add_argument(
        "--data-dir", default=None, help="data folder or store URL (default: $INAT_DATA_DIR, else ./data)"
    )


def run(args: argparse.Namespace) -> int:
    from inat_assets.batches import load_span
    from inat_assets.definitions import defs
    from inat_assets.instance import data_store_from_env
    from inat_assets.photo_usage import find_unused_photos

    try:
        store = DataStore.from_setting(args.data_dir) if args.data_dir else data_store_from_env()
        store.check()
    except InatAssetsError as exc:
        print(f"inat-assets photos: {exc}", file=sys.stderr)
        return 2
    selections = declared_selections(defs, store)
    with store.connect() as con:
        unused = find_unused_photos(
            con, store, load_span(store.batch_state()), selections, delete=args.delete
        )
    names = ", ".join(f"{s.dataset} ({s.size})" for s in selections) or "none"
    print(f"datasets: {names}")
    for size, (count, size_bytes) in sorted(unused.by_size.items()):
        print(f"photos/{size}: {count:,} unused photos, {size_bytes / 1e6:,.1f} MB")
    print(f"unused photos: {unused.count:,}, {unused.bytes:,} bytes in {store.photos_root()}")
    for folder in unused.busy_folders:
        print(f"photos/{folder}: skipped, a batch is downloading into it; run the command again later")
    if args.delete:
        print(f"deleted {unused.deleted:,} photos")
    elif unused.count:
        print("nothing deleted; run `inat-assets photos unused --delete` to remove them")
    return 0
