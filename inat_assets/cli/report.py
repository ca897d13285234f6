"""`inat-assets report DATASET`: the summary of a dataset's training dataset, in the terminal.

Reads ``datasets/<name>/training/summary.json`` under INAT_DATA_DIR (default ./data) or --data-dir, a
folder or a store URL (s3://bucket/prefix), as the last `<name>/training_dataset` materialization wrote
it (last of all its files, so what it describes is complete): coverage of the fetch list, splits,
classes, licences, what was dropped and why, the exports and where the card and plots are.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from inat_assets.errors import StorageError, TrainingDatasetError
from inat_assets.instance import data_store_from_env
from inat_assets.storage import DataStore
from inat_assets.training import summary_text


def declared_datasets() -> list[str]:
    """The names of the declared datasets (those with a training dataset asset)."""
    from inat_assets.definitions import defs

    return sorted(
        "/".join(spec.key.path[:-1]) for spec in defs.resolve_all_asset_specs() if spec.key.path[-1] == "training_dataset"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="inat-assets report", description=__doc__)
    parser.add_argument("dataset", help="dataset name (as declared, e.g. plants)")
    parser.add_argument("--data-dir", default=None, help="data folder or store URL (default: $INAT_DATA_DIR, else ./data)")
    args = parser.parse_args(argv)
    names = declared_datasets()
    if args.dataset not in names:
        parser.error(f"no dataset named {args.dataset!r}; the declared datasets are: {', '.join(names) or 'none'}")
    try:
        store = DataStore.from_setting(args.data_dir) if args.data_dir else data_store_from_env()
        print(summary_text(store.training_dir(args.dataset)))
    except StorageError as exc:
        print(f"inat-assets report: {exc}", file=sys.stderr)
        return 2
    except TrainingDatasetError as exc:
        print(f"inat-assets report: {exc} (its asset is {args.dataset}/training_dataset)", file=sys.stderr)
        return 1
    return 0
