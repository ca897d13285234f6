"""What counts as an image, and which photos are already on disk."""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

# Order matters only for speed: most iNaturalist photos are JPEGs.
IMAGE_EXTENSIONS = ("jpg", "png", "gif", "webp")


def sniff_image(head: bytes) -> str | None:
    """The file extension for these leading bytes, or None if they are not JPEG/PNG/GIF/WebP."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if len(head) >= 12 and head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "webp"
    return None


def describe_non_image(head: bytes, content_type: str | None) -> str:
    """A short, photo-independent reason for a body that is not an image (for the manifest)."""
    text = head[:64].lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html")):
        kind = "an HTML page"
    elif text.startswith(b"<?xml") or text.startswith(b"<error"):
        kind = "an XML document"
    elif text.startswith((b"{", b"[")):
        kind = "JSON"
    elif not head:
        kind = "an empty body"
    else:
        kind = "unknown bytes"
    ctype = (content_type or "no content-type").split(";")[0].strip()
    return f"not an image: {kind} ({ctype})"


# The temporary names storage.atomic_path gives photo files: ".<photo_id>.<ext>.<random>.part".
_PHOTO_PART = re.compile(r"^\.\d+\.(?:jpg|png|gif|webp)\..+\.part$")


def remove_stale_photo_parts(folder: Path) -> int:
    """Delete temporary photo files left by a killed run; returns how many were removed.

    Only photo .part files: the folder may also hold a manifest
    being written right now (its temporary file is also a .part), which must survive.
    """
    removed = 0
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.endswith(".part") and _PHOTO_PART.match(entry.name):
                try:
                    os.unlink(entry.path)
                    removed += 1
                except FileNotFoundError:
                    pass
    return removed


def remove_stale_manifest_parts(manifest: Path) -> int:
    """Delete temporary files of this manifest only (other manifests in the folder may be in use)."""
    if not manifest.parent.is_dir():
        return 0
    removed = 0
    for part in manifest.parent.glob(f".{manifest.name}.*.part"):
        part.unlink(missing_ok=True)
        removed += 1
    return removed


_PHOTO_FILE = re.compile(r"^(\d+)\.(?:jpg|png|gif|webp)$")


def photo_ids_in(folder: Path) -> set[int]:
    """Ids of the ``<photo_id>.<ext>`` files in ``folder`` (one directory scan).

    The engine asks this once per folder so that a photo with no file costs no system call at all
    (four failed opens per photo were 4 % of the CPU of a fresh download).
    """
    ids: set[int] = set()
    with os.scandir(folder) as entries:
        for entry in entries:
            match = _PHOTO_FILE.match(entry.name)
            if match:
                ids.add(int(match[1]))
    return ids


def find_existing(folder: str, photo_id: int, expected_size: int | None = None) -> tuple[str, str, int] | None:
    """``(path, ext, size)`` of a valid ``<photo_id>.<ext>`` in ``folder``, or None.

    Valid means: the magic bytes match the extension and, when a previous manifest recorded the
    size, the size matches. An invalid candidate (e.g. an XML error page a naive downloader saved
    as .jpg, or a file cut short by a power loss) is deleted so that the fresh download replaces it.
    """
    for ext in IMAGE_EXTENSIONS:
        path = f"{folder}/{photo_id}.{ext}"
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            size = os.fstat(fd).st_size
            head = os.read(fd, 16)
        finally:
            os.close(fd)
        if sniff_image(head) == ext and size > 0 and (expected_size is None or size == expected_size):
            return path, ext, size
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    return None
