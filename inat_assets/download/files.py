"""What counts as an image, and which photos are already on disk."""

from __future__ import annotations

import contextlib
import os
import re
import struct
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

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


# --- Complete images --------------------------------------------------------------------------
#
# ``check_image`` parses only headers and looks at the tail: the frame header for the dimensions
# and the format's end marker for completeness, a handful of small reads per file, no decoding.
# It catches what a transfer or a server can do to a photo (cut short, a signature followed by
# garbage, an error page with an image signature); it does not prove that every pixel decodes.

_PADDING_MAX = 4096  # trailing zero bytes accepted after an end marker (some writers pad blocks)
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM and RSTn carry no length
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"

Read = Callable[[int, int], bytes]  # (offset, length) -> up to length bytes


class ImageInfo(NamedTuple):  # a NamedTuple: built once per photo, 5x cheaper than a frozen dataclass
    """A complete image: its file extension and its size in pixels."""

    ext: str
    width: int
    height: int


class ImageDefect(NamedTuple):
    """Why bytes that start like an image are not a complete one.

    ``truncated`` means the bytes end too early (a transfer cut short, a file cut by a crash);
    otherwise they are malformed (garbage after a valid signature).
    """

    reason: str
    truncated: bool


class _Truncated(Exception):
    pass


class _Corrupt(Exception):
    pass


def _exactly(read: Read, offset: int, length: int) -> bytes:
    data = read(offset, length)
    if len(data) < length:
        raise _Truncated
    return data


def _end(read: Read, size: int, marker: bytes) -> bool:
    """Whether the data ends with ``marker``, allowing up to _PADDING_MAX zero bytes after it."""
    if size < len(marker):
        return False
    if read(size - len(marker), len(marker)) == marker:
        return True
    tail = read(max(size - _PADDING_MAX - len(marker), 0), _PADDING_MAX + len(marker))
    return tail.rstrip(b"\x00").endswith(marker)


def _jpeg(read: Read, size: int) -> tuple[int, int]:
    pos = 2
    while True:
        head = read(pos, 4)  # marker and segment length in one read: this loop is the hot part
        if len(head) < 2:
            raise _Truncated
        if head[0] != 0xFF:
            raise _Corrupt(f"corrupt JPEG: no marker at byte {pos}")
        marker = head[1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, or image data, before any frame header
            raise _Corrupt("corrupt JPEG: no frame header (SOFn) before its image data")
        if len(head) < 4:
            raise _Truncated
        length = (head[2] << 8) | head[3]
        if length < 2:
            raise _Corrupt(f"corrupt JPEG: segment length {length} at byte {pos}")
        if marker in _JPEG_SOF:
            height, width = struct.unpack(">HH", _exactly(read, pos + 5, 4))
            break
        pos += 2 + length
    if pos + 2 + length > size or not _end(read, size, b"\xff\xd9"):
        raise _Truncated
    return width, height


def _png(read: Read, size: int) -> tuple[int, int]:
    chunk = _exactly(read, 8, 16)
    if chunk[:8] != b"\x00\x00\x00\x0dIHDR":
        raise _Corrupt("corrupt PNG: the first chunk is not IHDR")
    if not _end(read, size, _PNG_IEND):
        raise _Truncated
    width, height = struct.unpack(">II", chunk[8:16])
    return width, height


def _gif(read: Read, size: int) -> tuple[int, int]:
    width, height = struct.unpack("<HH", _exactly(read, 6, 4))
    # The trailer 0x3B follows a block terminator 0x00 (a lone 0x3B is a common data byte).
    if not _end(read, size, b"\x00\x3b"):
        raise _Truncated
    return width, height


def _webp(read: Read, size: int) -> tuple[int, int]:
    (riff_size,) = struct.unpack("<I", _exactly(read, 4, 4))
    if size < riff_size + 8:
        raise _Truncated
    if size > riff_size + 8:
        raise _Corrupt(f"corrupt WebP: {size - riff_size - 8} bytes after the RIFF container")
    head = _exactly(read, 12, 18)
    kind = head[:4]
    if kind == b"VP8 " and head[11:14] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", head[14:18])
        return width & 0x3FFF, height & 0x3FFF
    if kind == b"VP8L" and head[8] == 0x2F:
        (bits,) = struct.unpack("<I", head[9:13])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if kind == b"VP8X":
        return int.from_bytes(head[12:15], "little") + 1, int.from_bytes(head[15:18], "little") + 1
    raise _Corrupt(f"corrupt WebP: no VP8/VP8L/VP8X header (found {kind!r})")


_PARSERS: dict[str, Callable[[Read, int], tuple[int, int]]] = {"jpg": _jpeg, "png": _png, "gif": _gif, "webp": _webp}
_NAMES = {"jpg": "JPEG", "png": "PNG", "gif": "GIF", "webp": "WebP"}
_TRUNCATED = {
    "jpg": "incomplete JPEG: ends before its end-of-image marker",
    "png": "incomplete PNG: ends before its IEND chunk",
    "gif": "incomplete GIF: ends before its trailer",
    "webp": "incomplete WebP: shorter than its RIFF size",
}


def check_read(ext: str, read: Read, size: int) -> ImageInfo | ImageDefect:
    """Whether the ``size`` bytes behind ``read`` are a complete ``ext`` image (see sniff_image)."""
    try:
        width, height = _PARSERS[ext](read, size)
    except _Truncated:
        return ImageDefect(_TRUNCATED[ext], truncated=True)
    except _Corrupt as exc:
        return ImageDefect(str(exc), truncated=False)
    if width <= 0 or height <= 0:
        return ImageDefect(f"corrupt {_NAMES[ext]}: header says {width}x{height} pixels", truncated=False)
    return ImageInfo(ext, width, height)


def check_image(data: bytes) -> ImageInfo | ImageDefect | None:
    """A complete image's extension and dimensions, why it is incomplete, or None if it is not an image."""
    ext = sniff_image(data[:16])
    if ext is None:
        return None
    return check_read(ext, lambda offset, length: data[offset : offset + length], len(data))


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


class ExistingPhoto(NamedTuple):
    path: str
    ext: str
    size: int
    width: int
    height: int


_HEAD_BYTES = 4096  # one read covers the headers of most files; later segments are read with pread


def find_existing(folder: str, photo_id: int, expected_size: int | None = None) -> ExistingPhoto | None:
    """The valid ``<photo_id>.<ext>`` in ``folder``, or None.

    Valid means: the magic bytes match the extension, the image is complete (``check_read``: its
    header parses and its end marker is there) and, when a previous manifest recorded the size,
    the size matches. An invalid candidate (an XML error page a naive downloader saved as .jpg, a
    file cut short by a power loss) is deleted so that the fresh download replaces it.
    """
    for ext in IMAGE_EXTENSIONS:
        path = f"{folder}/{photo_id}.{ext}"
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            size = os.fstat(fd).st_size
            head = os.read(fd, _HEAD_BYTES)
            ok = sniff_image(head[:16]) == ext and (expected_size is None or size == expected_size)
            info = check_read(ext, _file_reader(fd, head), size) if ok else None
        finally:
            os.close(fd)
        if isinstance(info, ImageInfo):
            return ExistingPhoto(path, ext, size, info.width, info.height)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    return None


def _file_reader(fd: int, head: bytes) -> Read:
    """Reads from the file's first block, else from the last block read with pread (segment headers
    past the first block and the tail come in runs: one pread each instead of one per field)."""
    window = [0, head]

    def read(offset: int, length: int) -> bytes:
        start, block = window
        if start <= offset and offset + length <= start + len(block):
            return block[offset - start : offset - start + length]
        if offset + length <= len(head):
            return head[offset : offset + length]
        window[:] = offset, os.pread(fd, max(length, _HEAD_BYTES), offset)
        return window[1][:length]

    return read
