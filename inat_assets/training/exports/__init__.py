"""Exports of dataset.parquet that training code loads directly; each reads the index in batches."""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from inat_assets.errors import TrainingDatasetError
from inat_assets.training.options import ResizeOptions

READ_BATCH_ROWS = 2048


def _row_groups_of(reader: pq.ParquetFile, split: str) -> list[int]:
    """Row groups that may hold ``split``: the index is sorted by split, so most hold one split only."""
    column = reader.schema_arrow.get_field_index("split")
    groups = []
    for i in range(reader.metadata.num_row_groups):
        stats = reader.metadata.row_group(i).column(column).statistics
        if stats is None or not stats.has_min_max or stats.min <= split <= stats.max:
            groups.append(i)
    return groups


def iter_rows(index: Path, split: str | None = None, *, mini: bool = False) -> Iterator[dict]:
    """Index rows of one split (all when None; ``mini`` = only ``train_mini``), in file order.

    Reads one record batch at a time, so memory stays at a few batches whatever the index size,
    and skips row groups whose statistics show they hold other splits only.
    """
    reader = pq.ParquetFile(index)
    groups = _row_groups_of(reader, split) if split is not None else None
    if groups == []:
        return
    for batch in reader.iter_batches(batch_size=READ_BATCH_ROWS, row_groups=groups):
        if split is not None:
            batch = batch.filter(pc.equal(batch.column("split"), split))
        if mini:
            batch = batch.filter(batch.column("mini"))
        yield from batch.to_pylist()


def split_names(has_mini: bool) -> tuple[str, ...]:
    return ("train", "val", "test", "train_mini") if has_mini else ("train", "val", "test")


def rows_of(index: Path, split: str) -> Iterator[dict]:
    """Rows of ``split``, where ``train_mini`` is the mini subset of train."""
    if split == "train_mini":
        return iter_rows(index, "train", mini=True)
    return iter_rows(index, split)


def extension(path: str) -> str:
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    return "jpg" if ext in ("jpeg", "") else ext


def missing_photo(row: dict, exc: OSError) -> TrainingDatasetError:
    return TrainingDatasetError(
        f"photo {row['photo_id']} (batch {row['batch']}) is listed as downloaded but {row['path']} cannot be read "
        f"({exc.strerror or exc}); re-materialize batch {row['batch']} so its manifest matches the files on disk"
    )


def read_photo(row: dict) -> bytes:
    try:
        with open(row["path"], "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise missing_photo(row, exc) from exc


def exported_bytes(row: dict, resize: ResizeOptions | None) -> tuple[bytes, str]:
    """The bytes to export for one photo and their extension: the original, or a resized JPEG copy.

    Photos already within ``longest_side`` are exported unchanged (re-encoding would only lose quality).
    """
    data, path = read_photo(row), row["path"]
    if resize is None:
        return data, extension(path)
    from PIL import Image  # only the resize needs Pillow; imported here to keep the index path light

    with Image.open(io.BytesIO(data)) as image:
        if max(image.size) <= resize.longest_side:
            return data, extension(path)
        image.thumbnail((resize.longest_side, resize.longest_side))
        out = io.BytesIO()
        image.convert("RGB").save(out, format="JPEG", quality=resize.quality)
    return out.getvalue(), "jpg"


@contextmanager
def replaced_folder(final: Path) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``final``; on success it replaces ``final`` as a whole.

    Readers see either the old export or the new one, never a mix; a failed build leaves the old
    one in place and removes the temporary folder.
    """
    tmp = final.with_name(f".{final.name}.part")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
