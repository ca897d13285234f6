"""Make a CSV byte stream safe for DuckDB's strict reader, without changing any field value.

DuckDB 2.0.1's CSV reader (strict mode, ``new_line = '\\n'``) has three blind spots, each measured:

- A ``\\r`` outside a quoted field sends its state machine to an invalid state. In the header line
  that error is swallowed under ``store_rejects`` and the scan returns **0 rows and 0 rejects**
  (a CRLF file "converts" to an empty table); in a data line the whole query aborts with "The CSV
  Parser state machine reached an invalid state" and no line number. ``new_line = '\\r\\n'`` or
  auto-detection only move the problem (mixed files fail either way), and ``strict_mode = false``
  is not an option: it silently truncates rows with too many columns and accepts ``"ab"c`` as ``ab``.
- A line longer than ``buffer_size`` is dropped without a reject, and every later reject's line
  number is one too low.

So the inflated member passes through :class:`CsvStreamNormalizer` on its way to DuckDB:

- ``\\r\\n`` outside quotes becomes ``\\n`` (any mix of line endings reads the same); inside a
  quoted field it is data and stays.
- a bare ``\\r`` outside quotes is replaced by the byte ``0xFF`` (same length), which DuckDB rejects
  as invalid UTF-8 for that one line; the rejects file gets the real reason from :attr:`events`.
- a line longer than ``max_line_bytes`` is cut a few bytes past that limit, so DuckDB rejects it
  as over the maximum line size (it always does for lines that fit its buffer); the rejects file
  gets the line's real length from :attr:`events`.

Quote state is the parity of ``"`` bytes seen so far (doubled quotes toggle twice), counted with
numpy (the normalizer passes LF text at about 1.5 GB/s, bench/csv_stream.py). In chunks that
contain a ``\\r`` only quotes at a field's edge count, so a stray quote inside an unquoted field
(``Plan"tae``, malformed) does not flip it; in chunks without one every quote counts (3x faster),
so a stray quote there can still make a later quoted CR LF lose its CR (a quoted bare CR: its
line is rejected), or a later CR LF look quoted (DuckDB then stops; the ConversionError says why).
A stray quote right before a delimiter (``abc",``) looks like a closing quote and is counted.
Byte offsets DuckDB reports are offsets in the normalized stream (one less per ``\\r\\n``
removed before the line); line numbers are exact.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

_QUOTE = 0x22
_COMMA = 0x2C
# Bytes that may stand next to a quote that opens or closes a field (or doubles another quote).
_FIELD_EDGE = np.zeros(256, dtype=bool)
_FIELD_EDGE[[_COMMA, 0x0A, 0x0D, _QUOTE]] = True
# Bytes kept of an over-long line: past the limit, so DuckDB rejects it for its size.
_OVERLONG_KEEP_EXTRA = 64
# Bare CRs whose offsets are kept for the rejects' reasons; a CR-only (classic Mac) file has one per
# line, and past this many its lines keep DuckDB's own reason (invalid UTF-8) instead.
MAX_EXPLAINED_BARE_CRS = 100_000


@dataclass(frozen=True)
class StreamEvent:
    """A line the normalizer changed so that DuckDB rejects it, at ``offset`` in the normalized stream."""

    offset: int
    reason: str


class CsvStreamNormalizer:
    """Feed it the member's chunks in order (:meth:`feed`); read :attr:`events` once it is done."""

    def __init__(self, max_line_bytes: int) -> None:
        self.max_line_bytes = max_line_bytes
        self.keep_bytes = max_line_bytes + _OVERLONG_KEEP_EXTRA
        self.in_quotes = False
        self._dropped_quotes = 0  # quotes in the bytes stage 2 cut off over-long lines (their parity counts)
        self.crlf_normalized = 0  # \r\n line endings turned into \n
        self._held_cr = False  # the last chunk ended in \r outside quotes: decided by the next byte
        self._last_byte = 0x0A  # the byte before the current chunk (the stream starts a line)
        self._stage1_pos = 0  # bytes out of the line-ending stage
        self._bare_crs: list[int] = []  # their stage-1 offsets
        self._out_pos = 0  # bytes handed on to DuckDB
        self._line_len = 0  # bytes of the current line handed on so far
        self._cut_line_start: int | None = None  # output offset of the line being cut, while cutting
        self._cut_bytes = 0
        self._cuts: list[tuple[int, int]] = []  # (stage-1 offset where a cut ends, bytes cut so far in total)
        self._long_lines: list[StreamEvent] = []
        # Reused by _quote_count. ``data == '"'`` allocated a fresh bool array per piece: fresh pages
        # the kernel zeroes on first touch, 1.2 % of all conversion CPU in a perf profile.
        self._flags = np.empty(0, dtype=bool)

    def feed(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in self._no_longer_than_limit(chunks):
            out = self._cut_long_lines(self._line_endings(chunk))
            if out:
                yield out
        if self._held_cr:  # the member ends in \r: a bare \r on the last line
            self._held_cr = False
            self._bare_crs.append(self._stage1_pos)
            out = self._cut_long_lines(self._advance(b"\xff"))
            if out:
                yield out
        self._end_cut()

    def _no_longer_than_limit(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """Chunks of at most ``max_line_bytes`` (the archive's are 4 MB): stage 2 relies on it."""
        for chunk in chunks:
            if len(chunk) <= self.max_line_bytes:
                yield chunk
            else:
                for start in range(0, len(chunk), self.max_line_bytes):
                    yield chunk[start : start + self.max_line_bytes]

    @property
    def quote_parity(self) -> int:
        """1 when the bytes handed on so far hold an odd number of quotes (as counted here), else 0."""
        return (int(self.in_quotes) ^ self._dropped_quotes) & 1

    @property
    def events(self) -> list[StreamEvent]:
        bare = [
            StreamEvent(
                offset - self._cut_before(offset),
                "carriage return (\\r) outside a quoted field; only \\n or \\r\\n may end a line",
            )
            for offset in self._bare_crs
        ]
        return sorted([*bare, *self._long_lines], key=lambda e: e.offset)

    def _cut_before(self, stage1_offset: int) -> int:
        total = 0
        for cut_end, cut_total in self._cuts:
            if cut_end <= stage1_offset:
                total = cut_total
        return total

    def _quote_count(self, data: bytes | memoryview) -> int:
        size = len(data)
        if self._flags.size < size:
            self._flags = np.empty(size, dtype=bool)
        flags = self._flags[:size]
        np.equal(np.frombuffer(data, dtype=np.uint8), _QUOTE, out=flags)
        return int(np.count_nonzero(flags))

    # Stage 1: line endings ------------------------------------------------------------------
    def _line_endings(self, chunk: bytes) -> bytes:
        prefix = b""
        if self._held_cr:
            self._held_cr = False
            if chunk[:1] == b"\n":
                self.crlf_normalized += 1
            else:
                self._bare_crs.append(self._stage1_pos)
                prefix = self._advance(b"\xff")
        if b"\r" not in chunk:
            return prefix + self._advance(chunk) if prefix else self._advance(chunk)
        # Vectorized: a \r is inside quotes when an odd number of quotes precede it (plus the parity
        # carried in). About 0.3 GB/s of CR LF text, 3x a Python loop over its \r (bench/csv_stream.py).
        data = np.frombuffer(chunk, dtype=np.uint8)
        quotes = self._structural_quotes(data)
        crs = np.flatnonzero(data == 0x0D)
        inside = (np.searchsorted(quotes, crs) + int(self.in_quotes)) & 1
        outside = crs[inside == 0]
        last = len(chunk) - 1
        if outside.size and outside[-1] == last:
            self._held_cr = True  # decided by the next chunk's first byte
            outside = outside[:-1]
        ends_line = data[outside + 1] == 0x0A
        dropped = outside[ends_line]
        if self._held_cr:
            dropped = np.append(dropped, last)
        bare = outside[~ends_line]
        out = np.delete(data, dropped) if dropped.size else data.copy()
        if bare.size:
            bare_out = bare - np.searchsorted(dropped, bare)
            out[bare_out] = 0xFF
            room = MAX_EXPLAINED_BARE_CRS - len(self._bare_crs)
            if room > 0:
                self._bare_crs.extend((self._stage1_pos + len(prefix) + bare_out[:room]).tolist())
        self.crlf_normalized += int(ends_line.sum())
        if quotes.size & 1:
            self.in_quotes = not self.in_quotes
        self._last_byte = chunk[-1]
        self._stage1_pos += len(prefix) + out.size
        return prefix + out.tobytes()

    def _structural_quotes(self, data: np.ndarray) -> np.ndarray:
        """Positions of the quotes that open or close a field, or are half of a doubled quote.

        A quote with neither a delimiter, line end nor quote on either side sits inside an
        unquoted field (``Plan"tae``, malformed): DuckDB keeps it as text, and counting it would
        flip the parity for the rest of the file, so every later CR LF would look quoted. Used for
        chunks that contain a CR (on LF text the plain count is 3x faster: 2.6 vs 0.86 GB/s).
        """
        quotes = np.flatnonzero(data == _QUOTE)
        if not quotes.size:
            return quotes
        before = data[np.maximum(quotes - 1, 0)]
        if quotes[0] == 0:
            before[0] = self._last_byte
        after = data[np.minimum(quotes + 1, data.size - 1)]
        if quotes[-1] == data.size - 1:
            after[-1] = _COMMA  # the next chunk's first byte is not known yet: count it
        return quotes[_FIELD_EDGE[before] | _FIELD_EDGE[after]]

    def _advance(self, data: bytes) -> bytes:
        if data:
            if self._quote_count(data) & 1:
                self.in_quotes = not self.in_quotes
            self._last_byte = data[-1]
            self._stage1_pos += len(data)
        return data

    # Stage 2: over-long lines ---------------------------------------------------------------
    def _cut_long_lines(self, data: bytes) -> bytes:
        """Hand ``data`` on, keeping at most ``keep_bytes`` of any line."""
        stage1_end = self._stage1_pos  # ``data`` ends here in stage-1 offsets
        pos = 0
        if self._cut_line_start is not None:
            nl = data.find(b"\n")
            if nl < 0:
                self._cut_bytes += len(data)
                self._dropped_quotes ^= self._quote_count(data) & 1
                return b""
            self._cut_bytes += nl
            self._dropped_quotes ^= self._quote_count(memoryview(data)[:nl]) & 1
            self._cuts.append((stage1_end - len(data) + nl, self._cut_bytes + self._cuts_total()))
            self._end_cut()
            pos = nl
        first_nl = data.find(b"\n", pos)
        head_end = first_nl if first_nl >= 0 else len(data)
        if self._line_len + head_end - pos > self.keep_bytes:
            keep = self.keep_bytes - self._line_len
            self._cut_line_start = self._out_pos - self._line_len
            self._out_pos += keep
            self._line_len += keep
            rest = data[pos + keep :]
            return data[pos : pos + keep] + (self._cut_long_lines(rest) if rest else b"")
        # Lines inside one chunk are shorter than a chunk and so than the limit (see _no_longer_than_limit):
        # only the line crossing in from the previous chunk can be too long.
        piece = data[pos:] if pos else data
        last_nl = piece.rfind(b"\n")
        self._line_len = len(piece) - last_nl - 1 if last_nl >= 0 else self._line_len + len(piece)
        self._out_pos += len(piece)
        return piece

    def _cuts_total(self) -> int:
        return self._cuts[-1][1] if self._cuts else 0

    def _end_cut(self) -> None:
        if self._cut_line_start is None:
            return
        length = self._line_len + self._cut_bytes
        self._long_lines.append(
            StreamEvent(
                self._cut_line_start,
                f"line of {length:,} bytes is longer than the maximum line size of {self.max_line_bytes:,} bytes",
            )
        )
        self._cut_line_start, self._cut_bytes, self._line_len = None, 0, 0


# Record-safe chunks ----------------------------------------------------------------------------
@dataclass(frozen=True)
class CsvChunk:
    """Whole records of the normalized stream: they start a line and end after a record's ``\\n``.

    ``parts`` are (piece, start, end) slices of the normalizer's pieces, in order, so a chunk is
    never copied on its way to DuckDB. ``offset`` is where the chunk starts in the normalized stream.
    """

    index: int
    parts: tuple[tuple[bytes, int, int], ...]
    offset: int
    size: int

    def views(self) -> list[memoryview]:
        return [memoryview(piece)[start:end] for piece, start, end in self.parts]

    def newlines(self) -> int:
        """``\\n`` bytes in the chunk."""
        return sum(piece.count(b"\n", start, stop) for piece, start, stop in self.parts)

    def newlines_before(self, positions: list[int]) -> list[int]:
        """For each chunk position (ascending), the ``\\n`` bytes before it; one walk over the chunk."""
        counts: list[int] = []
        parts = iter(self.parts)
        base, count = 0, 0  # chunk position and \n count at the start of the current part
        piece, start, stop = next(parts, (b"", 0, 0))
        counted = start  # piece index up to which `count` is complete
        for position in positions:
            while position > base + stop - start:
                count += piece.count(b"\n", counted, stop)
                base += stop - start
                piece, start, stop = next(parts, (b"", 0, 0))
                counted = start
                if stop == start:
                    break
            target = start + min(max(position - base, 0), stop - start)
            count += piece.count(b"\n", counted, target)
            counted = target
            counts.append(count)
        return counts


class RecordChunker:
    """Cut the normalized stream into chunks of about ``target_bytes``, each ending a record.

    The exporter quotes every field that holds a ``\\n``, so a ``\\n`` ends a record exactly when the
    quotes before it are even in number (doubled quotes count twice). The parity comes from the
    normalizer, which counts every quote anyway (:attr:`CsvStreamNormalizer.quote_parity`); only
    the bytes of one piece up to the cut are counted again here, so cutting costs no pass over the data.

    A malformed line with an odd number of quotes flips the parity until the next odd one (DuckDB,
    reading one stream, misreads the same records then); every ``\\n`` would look quoted. A quoted
    record is never longer than ``max_record_bytes`` (DuckDB rejects longer ones), so when no ``\\n``
    ends a record within that many bytes past the target, the chunk is cut at the next ``\\n``
    anyway, the parity restarts there and the cut is recorded in :attr:`resyncs`: the records
    around it may be rejected, never dropped silently.

    The header line (the first record) is not part of any chunk; :attr:`header_newlines` says how
    many lines it spans.

    With ``expected_bytes`` (the stream's length, when known), the last chunks shrink: each takes a
    quarter of what remains (at least ``TAIL_MIN_BYTES``) once less than four full chunks remain, so
    the reader's threads run out of work together instead of one parsing the last big chunk alone.
    :meth:`max_chunks` bounds how many chunks there can be.
    """

    TAIL_MIN_BYTES = 1 << 20

    def __init__(self, target_bytes: int, max_record_bytes: int, expected_bytes: int | None = None) -> None:
        self.target_bytes = max(1, target_bytes)
        self.max_record_bytes = max_record_bytes
        self.expected_bytes = expected_bytes
        self.resyncs: list[int] = []  # stream offsets of cuts made without a trustworthy quote state
        self.header_newlines = 0
        self.bytes_in = 0

    def split(self, normalizer: CsvStreamNormalizer, raw: Iterable[bytes]) -> Iterator[CsvChunk]:
        """Chunks of ``normalizer.feed(raw)``."""
        parts: list[tuple[bytes, int, int]] = []
        size = offset = index = 0
        header = True
        flip = 0  # parity correction from resyncs
        start_parity = 0  # parity before the current piece
        for piece in normalizer.feed(raw):
            end_parity = normalizer.quote_parity  # after this piece, before the generator moves on
            self.bytes_in += len(piece)
            pos = 0  # first byte of the piece not yet in a chunk
            parity, counted = start_parity ^ flip, 0  # parity before piece[counted]
            while True:
                target = 0 if header else self._target(offset)
                search = pos + max(target - size, 0)
                cut = None
                while search < len(piece):
                    nl = piece.find(b"\n", search)
                    if nl < 0:
                        break
                    parity ^= piece.count(b'"', counted, nl) & 1
                    counted = nl
                    if not parity:
                        cut = nl + 1
                        break
                    if size + nl - pos - target > self.max_record_bytes:
                        self.resyncs.append(offset + size + nl + 1 - pos)
                        flip ^= 1
                        parity = 0
                        cut = nl + 1
                        break
                    search = nl + 1
                if cut is None:
                    if pos < len(piece):
                        parts.append((piece, pos, len(piece)))
                        size += len(piece) - pos
                    break
                parts.append((piece, pos, cut))
                size += cut - pos
                if header:
                    header = False
                    self.header_newlines = CsvChunk(-1, tuple(parts), 0, size).newlines()
                else:
                    yield CsvChunk(index, tuple(parts), offset, size)
                    index += 1
                offset += size
                parts, size, pos = [], 0, cut
            start_parity = end_parity
        if parts and not header:
            yield CsvChunk(index, tuple(parts), offset, size)

    def max_chunks(self) -> int:
        """Chunks a stream of at most ``expected_bytes`` (header included) is cut into, at most.

        Every chunk has at least ``target_bytes`` until four chunks' worth remain; from there each
        takes at least a quarter of the rest, log(target / minimum) / log(4/3) chunks down to four
        minimum-sized ones.
        """
        total = self.expected_bytes or 0
        shrink = max(self.target_bytes / self.TAIL_MIN_BYTES, 1.0)
        bound = total // self.target_bytes + 1 + math.ceil(math.log(shrink) / math.log(4 / 3)) + 5
        # Every chunk but the last also has at least the smaller of the two sizes.
        return min(bound, total // min(self.target_bytes, self.TAIL_MIN_BYTES) + 1)

    def _target(self, offset: int) -> int:
        """Bytes for the chunk starting at ``offset``."""
        if self.expected_bytes is None:
            return self.target_bytes
        remaining = self.expected_bytes - offset
        if remaining >= 4 * self.target_bytes:
            return self.target_bytes
        return min(self.target_bytes, max(remaining // 4, self.TAIL_MIN_BYTES))
