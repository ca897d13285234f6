"""Image folder: ``imagefolder/<split>/<label>/<photo_id>.<ext>`` plus ``<split>/metadata.jsonl``.

The layout Hugging Face ``datasets`` loads with ``load_dataset("imagefolder", data_dir=...)``; the
split folder names ``train``, ``val``, ``test`` are the ones it maps to train/validation/test.
With a metadata file present it does not infer labels from folder names, so every metadata row
carries ``label`` (the name) and ``label_id``. Files are hard links to the downloaded photos (no
extra space; copies when the export is on another file system or ``link: copy``), or resized copies.
``train_mini`` is not exported here: imagefolder has no split of that name (use COCO or WebDataset).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path

from inat_assets.training.exports import exported_bytes, extension, missing_photo, replaced_folder, rows_of
from inat_assets.training.options import ImageFolderExport, ResizeOptions

METADATA_FIELDS = (
    "photo_id", "observation_id", "label", "label_id", "kingdom", "phylum", "class", "order", "family",
    "genus", "species", "taxon_id", "license", "creator", "rights_holder", "observation_url",
)  # fmt: skip


def label_folder(label: str) -> str:
    """A folder name for a label: the name itself, with path separators and control characters replaced."""
    return re.sub(r"[/\\\x00-\x1f]", "_", label).strip(". ") or "_"


def _place(row: dict, target: Path, spec: ImageFolderExport) -> None:
    source = row["path"]
    try:
        if spec.link == "hardlink":
            try:
                os.link(source, target)
                return
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                    raise
        shutil.copyfile(source, target)
    except FileNotFoundError as exc:
        raise missing_photo(row, exc) from exc


def write_imagefolder(index: Path, out_dir: Path, spec: ImageFolderExport, resize: ResizeOptions | None) -> Path:
    final = out_dir / "imagefolder"
    with replaced_folder(final) as tmp:
        for split in ("train", "val", "test"):
            split_dir = tmp / split
            split_dir.mkdir()
            made: set[str] = set()
            with open(split_dir / "metadata.jsonl", "w", encoding="utf-8") as meta:
                for row in rows_of(index, split):
                    folder = label_folder(row["label"])
                    if folder not in made:
                        (split_dir / folder).mkdir(exist_ok=True)
                        made.add(folder)
                    if resize is None:
                        name = f"{folder}/{row['photo_id']}.{extension(row['path'])}"
                        _place(row, split_dir / name, spec)
                    else:
                        data, ext = exported_bytes(row, resize)
                        name = f"{folder}/{row['photo_id']}.{ext}"
                        (split_dir / name).write_bytes(data)
                    record = {"file_name": name, **{k: row[k] for k in METADATA_FIELDS}}
                    meta.write(json.dumps(record, default=str, ensure_ascii=False) + "\n")
    return final
