"""Image folder: ``imagefolder/<split>/<label>/<photo_id>.<ext>`` plus ``<split>/metadata.jsonl``.

The layout Hugging Face ``datasets`` loads with ``load_dataset("imagefolder", data_dir=...)``; the
split folder names ``train``, ``val``, ``test`` are the ones it maps to train/validation/test.
With a metadata file present it does not infer labels from folder names, so every metadata row
carries ``label`` (the name) and ``label_id``. Files are hard links to the downloaded photos (no
extra space; copies when the export is on another file system or ``link: copy``; server-side copies
when the data directory is on an object store), or resized copies.
``train_mini`` is not exported here: imagefolder has no split of that name (use COCO or WebDataset).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from inat_assets.storage import StorePath
from inat_assets.training.exports import export_folder, exported_bytes, extension, read_photos, rows_of
from inat_assets.training.options import ImageFolderExport, ResizeOptions

METADATA_FIELDS = (
    "photo_id", "observation_id", "label", "label_id", "kingdom", "phylum", "class", "order", "family",
    "genus", "species", "taxon_id", "license", "creator", "rights_holder", "observation_url",
)  # fmt: skip


def label_folder(label: str) -> str:
    """A folder name for a label: the name itself, with path separators and control characters replaced."""
    return re.sub(r"[/\\\x00-\x1f]", "_", label).strip(". ") or "_"


def write_imagefolder(
    index: Path, out_dir: StorePath, work: Path, spec: ImageFolderExport, resize: ResizeOptions | None
) -> StorePath:
    """Write ``out_dir/imagefolder`` from the local ``index``; ``work`` is local scratch (see `export_folder`)."""
    final = out_dir / "imagefolder"
    with export_folder(final, work) as folder:
        for split in ("train", "val", "test"):
            folder.mkdir(split)
            made: set[str] = set()
            meta_rel = f"{split}/metadata.jsonl"
            with open(folder.file(meta_rel), "w", encoding="utf-8") as meta:
                rows = rows_of(index, split)
                for row, data in read_photos(rows) if resize is not None else ((r, b"") for r in rows):
                    label = label_folder(row["label"])
                    if label not in made:
                        folder.mkdir(f"{split}/{label}")
                        made.add(label)
                    if resize is None:
                        name = f"{label}/{row['photo_id']}.{extension(row['path'])}"
                        folder.place(f"{split}/{name}", row, spec.link)
                    else:
                        data, ext = exported_bytes(row, data, resize)
                        name = f"{label}/{row['photo_id']}.{ext}"
                        folder.write(f"{split}/{name}", data)
                    record = {"file_name": name, **{k: row[k] for k in METADATA_FIELDS}}
                    meta.write(json.dumps(record, default=str, ensure_ascii=False) + "\n")
            folder.close_file(meta_rel)
    return final
