"""The rules for photos and image batches, each in one place.

- ``PhotoSize``: the sizes iNaturalist serves (``photos/<id>/<size>.<ext>``).
- The size rewrite: the last path segment ``original.<ext>`` becomes ``<size>.<ext>``; the query
  string and fragment are kept; any other URL is left alone. The same regular expressions are
  applied by Python (``with_size``) and by DuckDB (``with_size_sql``; RE2 has no lookahead, so the
  patterns use none and both engines read them the same way).
- Batch keys: ``batch-000123`` holds photo ids ``[123 * span, 124 * span)`` (``batch_key``,
  ``batch_range``, ``BATCH_KEY_PATTERN``).
- Batch folders: a photo is stored in ``<root>/<batch_key(photo_id, span)>/`` (``BatchFolders``),
  by ``image_batches`` (root ``INAT_DATA_DIR/images``) and by ``download-images`` (root ``--output``)
  alike; the span comes from ``batches.json`` (see ``inat_assets.batches``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from inat_assets.errors import BatchError


class PhotoSize(StrEnum):
    ORIGINAL = "original"
    LARGE = "large"
    MEDIUM = "medium"
    SMALL = "small"
    THUMB = "thumb"
    SQUARE = "square"


PHOTO_SIZES: tuple[str, ...] = tuple(size.value for size in PhotoSize)

# The rewrite in two patterns, written in the syntax both engines share (RE2's is the smaller):
# a URL is rewritable when its path (everything before the first "?" or "#") ends in
# "/original.<ext>"; then the first "/original.<ext>" followed by a query, a fragment or the end is
# that segment, and is replaced. One anchored pattern with a capture of the whole path prefix did
# the same in one step, but made DuckDB's rewrite 4x slower (0.95 s against 0.22 s of CPU for 335k
# URLs; these two: 0.5 s), since RE2 extracts submatches with its slow engines.
# (?s): a line break in a URL is an ordinary character for both engines.
REWRITABLE_PATTERN = r"(?s)^[^?#]*/original\.[A-Za-z0-9]+(?:[?#]|$)"
SEGMENT_PATTERN = r"(?s)/original(\.[A-Za-z0-9]+)([?#].*)?$"


def _python(pattern: str) -> re.Pattern[str]:
    # RE2's "$" is the end of the text; Python's also matches before a final line break: use \Z.
    return re.compile(pattern.replace("$", r"\Z"))


_REWRITABLE = _python(REWRITABLE_PATTERN)
_SEGMENT = _python(SEGMENT_PATTERN)


def photo_size(value: str | PhotoSize) -> PhotoSize:
    """``value`` as a PhotoSize; anything else is a ValueError that names the sizes."""
    try:
        return PhotoSize(value)
    except ValueError:
        raise ValueError(f"photo size must be one of {', '.join(PHOTO_SIZES)}, not {value!r}") from None


def _replacement(size: PhotoSize) -> str:
    return rf"/{size.value}\1\2"  # the same replacement syntax in Python's re and DuckDB's RE2


def with_size(url: str, size: str | PhotoSize) -> str:
    """Swap the ``/original.<ext>`` path segment for another size; other URLs are left alone."""
    size = photo_size(size)
    if size is PhotoSize.ORIGINAL:
        return url
    if not _REWRITABLE.match(url):
        return url
    return _SEGMENT.sub(_replacement(size), url, count=1)


def with_size_sql(column: str, size: str | PhotoSize) -> str:
    """The same rewrite as ``with_size``, as a DuckDB expression over the URL column ``column``."""
    size = photo_size(size)
    if size is PhotoSize.ORIGINAL:
        return column
    return (
        f"CASE WHEN regexp_matches({column}, '{REWRITABLE_PATTERN}') "
        f"THEN regexp_replace({column}, '{SEGMENT_PATTERN}', '{_replacement(size)}') ELSE {column} END"
    )


# Batch keys -------------------------------------------------------------------------------------
BATCH_KEY_PATTERN = re.compile(r"^batch-(\d{6,})$")


def batch_key(photo_id: int, span: int) -> str:
    """The batch of a photo: ``batch-000123`` holds ids 123*span .. 124*span-1."""
    if span < 1:
        raise ValueError("span must be at least 1")
    return f"batch-{photo_id // span:06d}"


def batch_range(key: str, span: int) -> tuple[int, int]:
    """``batch-000123`` -> (123 * span, 124 * span)."""
    match = BATCH_KEY_PATTERN.match(key)
    if not match:
        raise BatchError(f"{key!r} is not an image batch key (expected batch-NNNNNN)")
    index = int(match.group(1))
    return index * span, (index + 1) * span


@dataclass(frozen=True)
class BatchFolders:
    """``root / batch_key(photo_id, span)`` as a picklable callable (worker processes need that)."""

    root: Path
    span: int

    def __call__(self, photo_id: int) -> Path:
        return self.root / batch_key(photo_id, self.span)
