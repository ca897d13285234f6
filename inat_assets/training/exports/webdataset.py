"""WebDataset shards: ``webdataset/<split>/<split>-NNNNNN.tar`` with ``.<ext>``, ``.cls``, ``.json`` per photo.

The sample key is the photo id; ``.cls`` holds the label id as text, ``.json`` the index row (minus
the local path). A shard is closed before it would pass the declared byte size or photo count, so a
shard exceeds ``shard_max_bytes`` only when one photo alone does. Each split's shard set is written
into a temporary folder that replaces the previous set at the end.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from inat_assets.training.exports import exported_bytes, replaced_folder, rows_of, split_names
from inat_assets.training.options import ResizeOptions, WebDatasetExport

_TAR_OVERHEAD = 3 * 1024  # three 512-byte headers plus padding per sample, roughly


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o444
    info.mtime = 0  # identical inputs give identical shards
    tar.addfile(info, io.BytesIO(data))


def _json_row(row: dict) -> bytes:
    public = {k: v for k, v in row.items() if k != "path"}
    return json.dumps(public, default=str, ensure_ascii=False).encode()


def write_shards(
    index: Path, out_dir: Path, spec: WebDatasetExport, resize: ResizeOptions | None, has_mini: bool
) -> dict[str, list[Path]]:
    """Write every split's shard set; returns the shard paths per split."""
    root = out_dir / "webdataset"
    root.mkdir(parents=True, exist_ok=True)
    written: dict[str, list[Path]] = {}
    for split in split_names(has_mini):
        final = root / split
        names: list[str] = []
        with replaced_folder(final) as tmp:
            tar: tarfile.TarFile | None = None
            size = count = 0
            for row in rows_of(index, split):
                data, ext = exported_bytes(row, resize)
                meta = _json_row(row)
                need = len(data) + len(meta) + _TAR_OVERHEAD
                full = tar is not None and (
                    (count and size + need > spec.shard_max_bytes)
                    or (spec.shard_max_photos is not None and count >= spec.shard_max_photos)
                )
                if tar is None or full:
                    if tar is not None:
                        tar.close()
                    names.append(f"{split}-{len(names):06d}.tar")
                    tar = tarfile.open(tmp / names[-1], "w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115 (closed when full)
                    size = count = 0
                key = str(row["photo_id"])
                _add(tar, f"{key}.{ext}", data)
                _add(tar, f"{key}.cls", str(row["label_id"]).encode())
                _add(tar, f"{key}.json", meta)
                size += need
                count += 1
            if tar is not None:
                tar.close()
        written[split] = [final / n for n in names]
    return written
