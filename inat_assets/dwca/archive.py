"""Open and describe a Darwin Core Archive zip: members, meta.xml, CSV headers; stream members out.

Nothing here extracts the archive. `iter_member_bytes` inflates one member in chunks (with ISA-L,
about twice as fast as zlib on this data) and checks its size
and CRC at the end, so a damaged archive is an error and never a silently short table.
"""

from __future__ import annotations

import csv
import io
import struct
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree

from isal.igzip_lib import DECOMP_DEFLATE, IgzipDecompressor, IsalError
from isal.isal_zlib import crc32

from inat_assets.dwca.schema import REQUIRED_COLUMNS, Table, describe_layout
from inat_assets.errors import ArchiveError

# Members are inflated with ISA-L's streaming decompressor: 4.1 s of CPU for the 3.75 GB
# observations.csv of bench/convert.py's 5M archive, against 7.2 s with isal_zlib.decompressobj
# (which copies the unconsumed input into a new bytes object on every call and, handed a
# max_length, allocates that much for each piece: fresh pages the kernel zeroes) and about twice
# that with zlib. Read 1 MiB of the zip at a time, hand on pieces of at most 2 MiB.
_READ_BYTES = 1 << 20
_PIECE_BYTES = 2 << 20

MULTIMEDIA_ROW_TYPE = "http://rs.gbif.org/terms/1.0/Multimedia"
DEFAULT_MEMBERS: dict[Table, str] = {"observations": "observations.csv", "media": "media.csv"}
_MAX_HEADER_BYTES = 1 << 20
_UTF8_BOM = b"\xef\xbb\xbf"




@dataclass(frozen=True)
class MemberInfo:
    """One CSV member of the archive, as found in the zip and its header line."""

    table: Table
    name: str
    columns: tuple[str, ...]
    size: int
    compressed_size: int
    meta_xml_columns: int | None  # columns meta.xml declares (highest index + 1), if meta.xml said
    header_bytes: int = 0  # length of the header line, line end included


@dataclass(frozen=True)
class ArchiveInfo:
    path: Path
    size: int
    members: dict[str, int]  # every member name -> uncompressed size
    observations: MemberInfo
    media: MemberInfo
    layout: str
    extra_columns: tuple[str, ...]
    warnings: tuple[str, ...] = field(default=())


def inspect_archive(path: Path) -> ArchiveInfo:
    """Validate the zip, locate the observations and media members and read their headers."""
    if not path.is_file():
        raise ArchiveError(f"Archive not found: {path}. Set INAT_DWCA_SOURCE to the zip's path or URL.")
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        with open(path, "rb") as fh:
            head = fh.read(16)
        raise ArchiveError(
            f"{path} is not a valid zip archive ({exc}; it starts with {head!r}). If it was "
            "downloaded, the download is damaged or was not the archive: delete it and rerun."
        ) from exc
    with zf:
        members = {info.filename: info.file_size for info in zf.infolist() if not info.is_dir()}
        warnings: list[str] = []
        locations = _read_meta_xml(zf, warnings)
        infos: dict[Table, MemberInfo] = {}
        for table in ("observations", "media"):
            name, meta_count = locations.get(table, (DEFAULT_MEMBERS[table], None))
            if name not in members:
                raise ArchiveError(
                    f"{path} has no member {name!r} for the {table} table (members: "
                    f"{', '.join(sorted(members)) or 'none'}). Is this iNaturalist's research-grade DwC-A?"
                )
            zinfo = zf.getinfo(name)
            columns, header_bytes = _read_header(zf, name, path)
            missing = [c for c in REQUIRED_COLUMNS[table] if c not in columns]
            if missing:
                raise ArchiveError(
                    f"{path}:{name}: header lacks required column(s) {', '.join(missing)}; "
                    f"header is: {', '.join(columns)}"
                )
            if meta_count is not None and meta_count != len(columns):
                warnings.append(
                    f"meta.xml declares {meta_count} columns for {name} but its header has {len(columns)} "
                    "columns; the header is used."
                )
            infos[table] = MemberInfo(
                table, name, columns, zinfo.file_size, zinfo.compress_size, meta_count, header_bytes
            )
    layout, extra = describe_layout(infos["observations"].columns)
    return ArchiveInfo(
        path=path,
        size=path.stat().st_size,
        members=members,
        observations=infos["observations"],
        media=infos["media"],
        layout=layout,
        extra_columns=extra,
        warnings=tuple(warnings),
    )


def _read_meta_xml(zf: zipfile.ZipFile, warnings: list[str]) -> dict[Table, tuple[str, int]]:
    """Member names (and declared field counts) from meta.xml; empty if it is absent or unreadable."""
    try:
        root = ElementTree.fromstring(zf.read("meta.xml"))
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        raise ArchiveError(
            f"{zf.filename}:meta.xml cannot be read ({exc}); the archive is damaged. Delete it and download it again."
        ) from exc
    except KeyError:
        warnings.append("meta.xml is missing; using observations.csv and media.csv.")
        return {}
    except ElementTree.ParseError as exc:
        warnings.append(f"meta.xml is not valid XML ({exc}); using observations.csv and media.csv.")
        return {}
    found: dict[Table, tuple[str, int]] = {}
    for element in root:
        tag = element.tag.rsplit("}", 1)[-1]
        location = next((e.text for e in element.iter() if e.tag.endswith("location") and e.text), None)
        if location is None:
            continue
        # Columns = highest index + 1 over <id>/<coreid>/<field> (fields with only a default have no index).
        indices = [int(e.get("index", "-1")) for e in element if e.get("index", "").isdigit()]
        n_fields = max(indices) + 1 if indices else 0
        if tag == "core":
            found["observations"] = (location.strip(), n_fields)
        elif tag == "extension" and element.get("rowType") == MULTIMEDIA_ROW_TYPE:
            found["media"] = (location.strip(), n_fields)
    return found


def _read_header(zf: zipfile.ZipFile, name: str, path: Path) -> tuple[tuple[str, ...], int]:
    """The header's column names and the header line's length in bytes (a UTF-8 BOM is dropped)."""
    try:
        with zf.open(name) as member:
            line = member.readline(_MAX_HEADER_BYTES)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as exc:
        raise ArchiveError(
            f"{path}:{name}: the member cannot be read ({exc}). Delete the archive and download it again."
        ) from exc
    if not line.endswith(b"\n"):
        raise ArchiveError(f"{path}:{name}: no complete header line in the first {_MAX_HEADER_BYTES} bytes.")
    # A UTF-8 byte order mark (a Windows editor's save) is not part of the first column's name;
    # DuckDB skips the header line, so only the names read here would carry it.
    text_bytes = line.removeprefix(_UTF8_BOM)
    try:
        text = text_bytes.decode("utf-8").rstrip("\n").rstrip("\r")
    except UnicodeDecodeError as exc:
        raise ArchiveError(f"{path}:{name}: header is not UTF-8 ({exc}).") from exc
    columns = tuple(next(csv.reader(io.StringIO(text))))
    duplicates = sorted({c for c in columns if columns.count(c) > 1})
    if duplicates:
        raise ArchiveError(
            f"{path}:{name}: the header names column(s) {', '.join(repr(c) for c in duplicates)} more than "
            f"once, so their values cannot be told apart. Header: {', '.join(columns)}"
        )
    return columns, len(line)


def iter_member_bytes(path: Path, name: str, chunk_size: int = _READ_BYTES) -> Iterator[bytes]:
    """Yield the inflated bytes of one member, checking length and CRC-32 at the end.

    Inflating stops with ArchiveError as soon as more bytes come out than the zip directory
    declares for the member (a zip bomb, or a damaged directory), so a lying member never fills the
    disk or memory. Every fault of the archive is an ArchiveError naming archive and member.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo(name)
    except (zipfile.BadZipFile, OSError, KeyError) as exc:
        raise ArchiveError(f"{path}:{name}: cannot open the member ({exc}). Delete the archive and download it again.") from exc
    if info.compress_type not in (zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED):
        raise ArchiveError(f"{path}:{name}: unsupported zip compression method {info.compress_type}.")
    declared = info.file_size
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        local = fh.read(30)
        if len(local) != 30 or local[:4] != b"PK\x03\x04":
            raise ArchiveError(f"{path}:{name}: local file header not found; the archive is damaged.")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        fh.seek(info.header_offset + 30 + name_len + extra_len)
        inflater = (
            IgzipDecompressor(flag=DECOMP_DEFLATE, hist_bits=15) if info.compress_type == zipfile.ZIP_DEFLATED else None
        )
        remaining, produced, crc = info.compress_size, 0, 0
        while remaining:
            raw = fh.read(min(chunk_size, remaining))
            if not raw:
                break
            remaining -= len(raw)
            pieces = _inflate(inflater, raw, declared - produced + 1) if inflater else iter((raw,))
            while True:
                try:
                    piece = next(pieces, None)
                except (IsalError, EOFError) as exc:
                    raise ArchiveError(
                        f"{path}:{name} is damaged: the compressed data is invalid after {produced:,} bytes "
                        f"({exc or type(exc).__name__}). Delete the archive and download it again."
                    ) from exc
                if piece is None:
                    break
                produced += len(piece)
                if produced > declared:
                    raise _oversized(path, name, declared)
                crc = crc32(piece, crc)
                yield piece
        if inflater is not None and not inflater.eof:
            remaining = remaining or 1  # the deflate stream never ended: the member is cut short
    if remaining or produced != declared or crc != info.CRC:
        raise ArchiveError(
            f"{path}:{name} is damaged: inflated {produced:,} of {declared:,} bytes, CRC "
            f"{'ok' if crc == info.CRC else 'mismatch'}. Delete the archive and download it again."
        )


def _inflate(inflater: IgzipDecompressor, raw: bytes, room: int) -> Iterator[bytes]:
    """Inflate ``raw`` in pieces of at most _PIECE_BYTES, never more than ``room`` bytes beyond which the caller stops."""
    if inflater.eof:  # bytes after the end of the deflate stream
        raise EOFError("data after the end of the compressed stream")
    data = raw
    while True:
        piece = inflater.decompress(data, min(max(room, 1), _PIECE_BYTES))
        data = b""
        if piece:
            room -= len(piece)
            yield piece
            if room <= 0:
                return
        if inflater.eof or inflater.needs_input:
            return


def _oversized(path: Path, name: str, declared: int) -> ArchiveError:
    return ArchiveError(
        f"{path}:{name}: inflates to more than the {declared:,} bytes the zip directory declares; "
        "the archive is damaged or not a genuine export. Delete it and download it again."
    )
