"""Convert one CSV member of the archive into a typed, ZSTD-compressed Parquet file with DuckDB.

The member is inflated and normalized on one thread and cut into chunks of whole records
(csv_stream.RecordChunker); one DuckDB COPY reads the chunks, several at once (one per thread),
and writes the one output file (see _ChunkPipeline for why, with the numbers). Two ways to hand
the chunks to DuckDB (``read_mode``), measured in bench/convert.py:

- ``stream``: each chunk is written from memory into its own named pipe, while the next chunks
  inflate. Needs no disk for the CSV; the chunks waiting for DuckDB are in memory.
- ``extract``: each chunk is first written as a file in the scratch folder, then moved into its
  pipe (splice) and deleted once DuckDB has read it. The chunks waiting for DuckDB are on disk
  (a few chunks' worth), not in memory; writing them costs some CPU (see choose_read_mode).
- ``auto`` (default): ``stream``.

Malformed lines never abort a conversion: DuckDB's ``store_rejects`` collects them, and they are
written to a rejects Parquet file with their line number in the member (every ``\\n`` counts, the
header is line 1), byte offset, raw text and reason.
"""

from __future__ import annotations

import array
import fcntl
import os
import select
import termios
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import duckdb
import pyarrow as pa

from inat_assets.dwca.archive import MemberInfo, iter_member_bytes
from inat_assets.dwca.csv_stream import CsvChunk, CsvStreamNormalizer, RecordChunker
from inat_assets.dwca.schema import column_types
from inat_assets.errors import ConversionError
from inat_assets.locks import locked
from inat_assets.storage import (
    RemovedScratch,
    atomic_path,
    remove_dead_scratch,
    remove_stale_parts,
    run_scratch,
)

ReadMode = Literal["auto", "stream", "extract"]
Log = Callable[[str], None]

# Lines over 2 MB exist in the real archive (HTML remarks); DuckDB's default limit is 2,000,000.
MAX_LINE_BYTES = 16 << 20
_BUFFER_BYTES = 32 << 20
# Bytes of CSV per chunk (one pipe each; the last chunks are smaller, see RecordChunker). Up to
# 2 x threads chunks wait for DuckDB. 5M observations (bench/convert.py, stream, 1-2 rounds):
# 8 MB 37.9 s, 16 MB 35.5-36.5 s, 32 MB 36.0 s, 64 MB 36.4 s; 16 MB had the lowest peak RSS of
# those within the noise (755 MB against 870 MB for 32 MB).
CHUNK_BYTES = 16 << 20
_PROGRESS_SECONDS = 30.0


@dataclass(frozen=True)
class ConversionResult:
    table: str
    member: str
    read_mode: str
    rows: int
    rejected_lines: int
    bytes_in: int
    bytes_out: int
    seconds: float
    output: Path
    rejects: Path

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


DEFAULT_MEMORY_LIMIT = "1GB"
# A conversion that rejects more than this share of its lines fails and keeps the previous table.
DEFAULT_MAX_REJECT_SHARE = 0.5


def configure_duckdb(
    con: duckdb.DuckDBPyConnection, *, memory_limit: str = DEFAULT_MEMORY_LIMIT, threads: int = 0, temp_dir: Path
) -> None:
    """Memory cap, spill folder and threads (0 = DuckDB's default, one per core) for a connection."""
    con.execute(f"SET memory_limit = {sql_string(memory_limit)}")
    con.execute(f"SET temp_directory = {sql_string(temp_dir)}")
    if threads > 0:
        con.execute(f"SET threads = {int(threads)}")


def sql_string(value: str | Path) -> str:
    """A SQL string literal (DuckDB COPY/read_csv take file names as literals, not parameters)."""
    return "'" + str(value).replace("'", "''") + "'"


def choose_read_mode(read_mode: str) -> Literal["stream", "extract"]:
    """``auto`` is ``stream``: it needs no disk for the CSV, and ``extract``'s file writes cost CPU
    (bench/convert.py, 5M observations: 69 s of CPU for stream, 70-78 s for extract)."""
    if read_mode not in ("auto", "stream", "extract"):
        raise ValueError(f"read mode must be auto, stream or extract, not {read_mode!r}")
    return "stream" if read_mode == "auto" else read_mode  # type: ignore[return-value]


def convert_member(
    con: duckdb.DuckDBPyConnection,
    archive: Path,
    member: MemberInfo,
    output: Path,
    rejects_output: Path,
    scratch: Path,
    *,
    read_mode: ReadMode = "auto",
    max_reject_share: float = DEFAULT_MAX_REJECT_SHARE,
    log: Log = lambda _msg: None,
) -> ConversionResult:
    """Write ``member`` of ``archive`` to ``output`` (Parquet) and its malformed lines to ``rejects_output``.

    ``output`` and ``rejects_output`` are replaced only when the conversion succeeds and at most
    ``max_reject_share`` of the lines were rejected; otherwise ConversionError, the previous files
    stay, and the rejects of the failed run are kept beside them (``<table>.failed.parquet``).
    ``scratch`` holds one locked folder per conversion; folders of dead runs are removed first.
    """
    started = time.monotonic()
    scratch.mkdir(parents=True, exist_ok=True)
    with locked(scratch / f"{member.table}.lock", purpose=f"converting {member.name} to {output}"):
        _remove_leftovers(scratch, member.table, (output, rejects_output, _failed_rejects_path(rejects_output)), log)
        mode = choose_read_mode(read_mode)
        with run_scratch(scratch, purpose=f"converting {member.name}") as run_dir:
            counts = _convert_in(con, archive, member, output, rejects_output, run_dir, mode, max_reject_share, log)
    rows, rejected = counts
    return ConversionResult(
        table=member.table,
        member=member.name,
        read_mode=mode,
        rows=rows,
        rejected_lines=rejected,
        bytes_in=member.size,
        bytes_out=output.stat().st_size,
        seconds=time.monotonic() - started,
        output=output,
        rejects=rejects_output,
    )


def _remove_leftovers(scratch: Path, table: str, outputs: tuple[Path, ...], log: Log) -> None:
    """What killed conversions left: their scratch folders (inflated CSV, FIFOs) and ``.part`` outputs.

    Called holding the table's lock, so no live conversion of ``table`` owns any of these. Versions
    before run folders wrote ``<table>-<8 hex>.csv`` (file or FIFO) straight into ``scratch``.
    """
    removed = remove_dead_scratch(scratch)
    for output in outputs:
        removed += remove_stale_parts(output)
    for old in scratch.glob(f"{table}-????????.csv"):
        size = old.stat().st_size if old.is_file() else 0
        old.unlink(missing_ok=True)
        removed.append(RemovedScratch(old, size))
    for item in removed:
        log(f"removed {item.path} ({item.bytes:,} bytes), left by a conversion that did not finish")


def _failed_rejects_path(rejects_output: Path) -> Path:
    return rejects_output.with_name(f"{rejects_output.stem}.failed{rejects_output.suffix}")


def _convert_in(
    con: duckdb.DuckDBPyConnection,
    archive: Path,
    member: MemberInfo,
    output: Path,
    rejects_output: Path,
    run_dir: Path,
    mode: str,
    max_reject_share: float,
    log: Log,
) -> tuple[int, int]:
    reject_table = f"rejects_{member.table}_{uuid.uuid4().hex[:8]}"
    normalizer = CsvStreamNormalizer(MAX_LINE_BYTES)
    pipeline = _ChunkPipeline(con, archive, member, normalizer, run_dir, mode, reject_table)
    log(f"{member.name}: {member.size:,} bytes of CSV, read mode {mode}, up to {len(pipeline.sources):,} chunk(s)")
    try:
        progress = _ProgressLogger(member, pipeline, log)
        progress.start()
        try:
            with atomic_path(output) as tmp_out:
                try:
                    rows = pipeline.run(tmp_out)
                except duckdb.Error as exc:
                    hint = (
                        " The member has carriage returns: a quote inside an unquoted field (malformed) "
                        "makes a CR LF line end look quoted; fix that line or convert the file to LF."
                        if normalizer.crlf_normalized or normalizer.events
                        else ""
                    )
                    raise ConversionError(
                        f"{archive}:{member.name}: DuckDB could not read the CSV ({_first_line(exc)}).{hint} "
                        "The previous table was kept."
                    ) from exc
                if normalizer.crlf_normalized:
                    log(f"{member.name}: {normalizer.crlf_normalized:,} CR LF line ending(s) read as LF")
                if pipeline.chunker.resyncs:
                    log(
                        f"{member.name}: the quote count went odd (a malformed line) and stayed so for "
                        f"{MAX_LINE_BYTES:,} bytes; cut at byte(s) {', '.join(f'{o:,}' for o in pipeline.chunker.resyncs[:5])} "
                        "without it, so the lines around there may be rejected"
                    )
                rejected = _count_rejects(con, reject_table)
                _refuse_bad_share(archive, member, rows, rejected, max_reject_share, con, reject_table,
                                  normalizer, rejects_output)  # fmt: skip
                with atomic_path(rejects_output) as tmp_rejects:
                    _write_rejects(con, reject_table, normalizer, tmp_rejects)
            _failed_rejects_path(rejects_output).unlink(missing_ok=True)  # an older failure's, now stale
        finally:
            progress.stop()
    finally:
        for table in (reject_table, pipeline.scan_rejects, f"{pipeline.scan_rejects}_scans"):
            con.execute(f"DROP TABLE IF EXISTS {table}")
    return rows, rejected


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _refuse_bad_share(
    archive: Path,
    member: MemberInfo,
    rows: int,
    rejected: int,
    max_share: float,
    con: duckdb.DuckDBPyConnection,
    reject_table: str,
    normalizer: CsvStreamNormalizer,
    rejects_output: Path,
) -> None:
    """Raise ConversionError (so the previous table stays) when too much of the member was rejected."""
    share = rejected / (rows + rejected) if rows + rejected else 0.0
    # 0 rows and 0 rejects from a member with data lines: DuckDB read nothing (how CR LF files
    # used to end); never a table.
    read_nothing = rows == 0 and rejected == 0 and member.size > member.header_bytes
    if share <= max_share and not read_nothing:
        return
    failed = _failed_rejects_path(rejects_output)
    reasons = ""
    if rejected:
        with atomic_path(failed) as tmp:
            _write_rejects(con, reject_table, normalizer, tmp)
        first = con.execute(
            f"SELECT line, reason FROM read_parquet({sql_string(failed)}) ORDER BY line LIMIT 3"
        ).fetchall()
        reasons = "; ".join(f"line {line}: {reason}" for line, reason in first)
    what = (
        f"DuckDB read no line of its {member.size:,} bytes"
        if read_nothing
        else f"{rejected:,} of {rows + rejected:,} lines ({share:.1%}) were rejected, more than the limit of {max_share:.1%}"
    )
    raise ConversionError(
        f"{archive}:{member.name}: {what}. First reasons: {reasons or 'none'}. "
        + (f"All rejected lines are in {failed}. " if rejected else "")
        + "The previous table was kept. Check the archive (is it iNaturalist's export, is its header "
        "right?) or, if this is expected, raise fail_reject_share in the table asset's run config."
    )


def _read_csv_sql(member: MemberInfo, sources: list[Path], reject_table: str) -> str:
    columns = ", ".join(
        f"{sql_string(name)}: {sql_string(kind)}"
        for name, kind in column_types(member.table, member.columns).items()
    )
    files = "[" + ", ".join(sql_string(source) for source in sources) + "]"
    # Explicit dialect, no sniffing; the stream is normalized first (csv_stream: CR LF, bare CR,
    # over-long lines) and cut into whole records without the header line (header = false).
    # strict_mode stays on: off, DuckDB truncates rows with too many columns.
    # allow_quoted_nulls=false keeps `""` (empty string) apart from a missing value (NULL);
    # nullstr stays the empty field, so `NA` (Namibia) is text. buffer_size must stay well above
    # max_line_size: DuckDB drops a line longer than its buffer without a reject.
    return (
        f"SELECT * FROM read_csv({files}, header = false, auto_detect = false, delim = ',', "
        f"quote = '\"', escape = '\"', new_line = '\\n', strict_mode = true, encoding = 'utf-8', "
        f"columns = {{{columns}}}, allow_quoted_nulls = false, store_rejects = true, "
        f"rejects_table = {sql_string(reject_table)}, rejects_scan = {sql_string(reject_table + '_scans')}, "
        f"max_line_size = {MAX_LINE_BYTES}, buffer_size = {_BUFFER_BYTES})"
    )


class _ChunkPipeline:
    """One DuckDB COPY over the member cut into whole-record chunks, one file (or pipe) per chunk.

    Why (profiles in bench/convert.py, 2-core machine): DuckDB reads one pipe on one thread, so the
    old stream mode parsed and encoded the whole member on one core. DuckDB reads several files of
    one ``read_csv`` list at once, one per thread, in list order; so in ``stream`` mode the member
    is cut into chunks (csv_stream.RecordChunker), each chunk is written into its own named pipe
    and DuckDB parses and encodes them on every thread while the next chunks inflate. The pipes
    are all created up front (the member's size says how many chunks there can be; unused ones
    are closed empty). ``extract`` writes each chunk to a file first and splices it into its pipe
    (the producer runs ahead of DuckDB by a few files, never by the whole member).
    One query keeps DuckDB's own Parquet writer and one output file: the per-chunk queries tried
    first (Arrow out of DuckDB, written by pyarrow) took 12 % more CPU (6.1 vs 5.45 s, 500k observations).

    DuckDB numbers a reject by record within its chunk; the member's line number (every ``\n``
    before the line, header = line 1) needs the chunk's bytes, so when there are rejects the
    member is inflated and cut again up to the last chunk with a reject.
    """

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        archive: Path,
        member: MemberInfo,
        normalizer: CsvStreamNormalizer,
        run_dir: Path,
        mode: str,
        reject_table: str,
    ) -> None:
        self.con, self.archive, self.member, self.normalizer = con, archive, member, normalizer
        self.run_dir, self.mode, self.reject_table = run_dir, mode, reject_table
        self.chunker = RecordChunker(CHUNK_BYTES, MAX_LINE_BYTES, member.size)
        self.workers = _duckdb_threads(con)
        self.scan_rejects = f"{reject_table}_scan"
        # The normalized stream is never longer than the member, so this many sources always suffice.
        planned = self.chunker.max_chunks()
        self.sources = [run_dir / f"chunk-{i:06d}.csv" for i in range(planned)]
        self.chunks = 0
        self._stop = threading.Event()
        # Chunks held in memory for their pipes: DuckDB reads `workers` at a time (in list order), the
        # next ones wait; capped so that many threads do not mean gigabytes of waiting chunks.
        self._slots = threading.Semaphore(self.feeder_slots(con))
        self._feeders: list[_PipeFeeder] = []
        self._archive_error: BaseException | None = None

    @property
    def bytes_fed(self) -> int:
        return self.chunker.bytes_in

    def run(self, output: Path) -> int:
        """Write every valid row to ``output``; the rejects end in ``reject_table`` (line, byte_offset, ...)."""
        for source in self.sources:
            os.mkfifo(source)
        producer = threading.Thread(target=self._produce, name=f"chunk-{self.member.name}", daemon=True)
        producer.start()
        try:
            rows = self._copy(output)
        except BaseException:
            self._stop.set()
            self._abandon_feeders()
            producer.join(timeout=30)
            self._abandon_feeders()
            if self._archive_error is not None:  # an archive fault explains DuckDB's error
                raise self._archive_error from None
            raise
        producer.join()
        for feeder in self._feeders:
            feeder.join_and_raise()
        if self._archive_error is not None:
            raise self._archive_error
        self._number_rejects()
        return rows

    def _copy(self, output: Path) -> int:
        # Row order inside these tables carries no meaning; not preserving it lets DuckDB write row
        # groups from every thread (2.4-3.4x faster measured). ZSTD level 1 instead of DuckDB's default
        # 3: the Parquet encoding is most of the work, and level 1 cut it by a third (7.2 -> 4.9 s on
        # 2M observations) for files 1 % larger.
        self.con.execute("SET preserve_insertion_order = false")
        result = self.con.execute(
            f"COPY ({_read_csv_sql(self.member, self.sources, self.scan_rejects)}) TO {sql_string(output)} "
            "(FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL 1)"
        ).fetchall()
        return int(result[0][0]) if result else 0

    def _chunks(self) -> Iterator[CsvChunk]:
        return self.chunker.split(self.normalizer, iter_member_bytes(self.archive, self.member.name))

    @staticmethod
    def feeder_slots(con: duckdb.DuckDBPyConnection) -> int:
        """Chunks handed to pipes at once (in memory in stream mode, on disk in extract mode)."""
        return max(2, min(2 * _duckdb_threads(con), 8))

    def _extracted(self, index: int) -> Path:
        return self.run_dir / f"extracted-{index:06d}.csv"

    def _produce(self) -> None:
        try:
            for chunk in self._chunks():
                if chunk.index >= len(self.sources):
                    raise ConversionError(f"{self.member.name}: more chunks than planned ({len(self.sources)}); a bug")
                data: list[memoryview] | Path = chunk.views()
                if self.mode == "extract":
                    data = self._extracted(chunk.index)
                    with open(data, "wb") as fh:
                        fh.writelines(chunk.views())
                while not self._slots.acquire(timeout=0.2):
                    if self._stop.is_set():
                        return
                if self._stop.is_set():
                    self._slots.release()
                    return
                self._feed(chunk.index, data, self._slots.release)
                self.chunks = chunk.index + 1
        except BaseException as exc:  # raised by run() on the caller's thread
            self._archive_error = exc
        finally:
            if not self._stop.is_set():  # close the pipes no chunk needed (all of them after a fault)
                for index in range(self.chunks, len(self.sources)):
                    self._feed(index, [], None)

    def _feed(self, index: int, data: list[memoryview] | Path, done: Callable[[], None] | None) -> None:
        feeder = _PipeFeeder(self.sources[index], data, done)
        self._feeders.append(feeder)
        feeder.start()

    def _abandon_feeders(self) -> None:
        for feeder in list(self._feeders):
            feeder.abandon()

    def _number_rejects(self) -> None:
        """The rejects with the member's line number and their offset in the normalized stream."""
        if not self.con.execute(f"SELECT count(*) FROM {self.scan_rejects}").fetchall()[0][0]:
            # Nothing to number: the join below took 0.27 s of one core with none (5M observations).
            self.con.execute(
                f"CREATE TABLE {self.reject_table} "
                "(line BIGINT, byte_offset BIGINT, error_message VARCHAR, csv_line VARCHAR)"
            )
            return
        files = pa.table({"file_path": [str(s) for s in self.sources], "chunk": list(range(len(self.sources)))})
        self.con.register("chunk_files", files)
        try:
            per_chunk = self.con.execute(
                f"""SELECT f.chunk, list(DISTINCT r.line_byte_position ORDER BY r.line_byte_position)
                FROM {self.scan_rejects} r JOIN {self.scan_rejects}_scans s USING (scan_id, file_id)
                JOIN chunk_files f USING (file_path)
                WHERE r.line_byte_position IS NOT NULL GROUP BY f.chunk"""
            ).fetchall()
            wanted = {int(chunk): [int(p) for p in positions] for chunk, positions in per_chunk}
            starts, lines = self._lines_of(wanted)
            self.con.register("chunk_starts", starts)
            self.con.register("line_map", lines)
            self.con.execute(
                f"""CREATE TABLE {self.reject_table} AS
                SELECT coalesce(c.first_line + m.before, c.first_line + r.line - 1)::BIGINT AS line,
                       (c.stream_offset + r.line_byte_position)::BIGINT AS byte_offset, r.error_message, r.csv_line
                FROM {self.scan_rejects} r JOIN {self.scan_rejects}_scans s USING (scan_id, file_id)
                JOIN chunk_files f USING (file_path)
                JOIN chunk_starts c ON c.chunk = f.chunk
                LEFT JOIN line_map m ON m.chunk = f.chunk AND m.position = r.line_byte_position"""
            )
        finally:
            for view in ("chunk_files", "chunk_starts", "line_map"):
                self.con.unregister(view)

    def _lines_of(self, wanted: dict[int, list[int]]) -> tuple[pa.Table, pa.Table]:
        """(chunk, first_line, stream_offset) of every chunk up to the last one in ``wanted``, and
        (chunk, position, before): the ``\n`` in the chunk before each wanted line start + 1."""
        starts: dict[str, list[int]] = {"chunk": [], "first_line": [], "stream_offset": []}
        found: dict[str, list[int]] = {"chunk": [], "position": [], "before": []}
        last = max(wanted, default=-1)
        rejects_seen = bool(self.con.execute(f"SELECT count(*) FROM {self.scan_rejects}").fetchall()[0][0])
        if last < 0 and not rejects_seen:
            return pa.table(starts, schema=_STARTS), pa.table(found, schema=_LINE_MAP)
        if last < 0:
            last = len(self.sources) - 1
        first_line = 1 + self.chunker.header_newlines
        for chunk in self._chunks_again(last):
            starts["chunk"].append(chunk.index)
            starts["first_line"].append(first_line)
            starts["stream_offset"].append(chunk.offset)
            positions = wanted.get(chunk.index)
            if positions:
                found["chunk"] += [chunk.index] * len(positions)
                found["position"] += positions
                found["before"] += chunk.newlines_before([max(p - 1, 0) for p in positions])
            first_line += chunk.newlines()
        return pa.table(starts, schema=_STARTS), pa.table(found, schema=_LINE_MAP)

    def _chunks_again(self, last: int) -> Iterator[CsvChunk]:
        again = RecordChunker(CHUNK_BYTES, MAX_LINE_BYTES, self.member.size)  # the same cuts: same bytes, same rule
        for chunk in again.split(CsvStreamNormalizer(MAX_LINE_BYTES), iter_member_bytes(self.archive, self.member.name)):
            if chunk.index > last:
                return
            yield chunk


_STARTS = pa.schema([("chunk", pa.int64()), ("first_line", pa.int64()), ("stream_offset", pa.int64())])
_LINE_MAP = pa.schema([("chunk", pa.int64()), ("position", pa.int64()), ("before", pa.int64())])


def _duckdb_threads(con: duckdb.DuckDBPyConnection) -> int:
    rows = con.execute("SELECT current_setting('threads')").fetchall()
    return max(1, int(rows[0][0])) if rows else 1


def _count_rejects(con: duckdb.DuckDBPyConnection, reject_table: str) -> int:
    count = con.execute(f"SELECT count(DISTINCT line) FROM {reject_table}").fetchone()
    return int(count[0]) if count else 0


def _write_rejects(
    con: duckdb.DuckDBPyConnection, reject_table: str, normalizer: CsvStreamNormalizer, output: Path
) -> None:
    """One row per rejected line (DuckDB may report several errors for one line).

    Lines the normalizer changed so that DuckDB rejects them (a bare CR, an over-long line) get the
    real reason: each event is matched to the rejected line that starts at or before it (a reject's
    ``byte_offset`` is the line's start + 1 in the normalized stream, as DuckDB counts).
    """
    events = normalizer.events
    con.execute("CREATE OR REPLACE TEMP TABLE stream_events (byte_offset BIGINT, reason VARCHAR)")
    if events:
        con.executemany("INSERT INTO stream_events VALUES (?, ?)", [(e.offset + 1, e.reason) for e in events])
    con.execute(
        f"""
        COPY (
            WITH lines AS (
                SELECT line,
                       min(byte_offset) AS byte_offset,
                       string_agg(DISTINCT error_message, '; ' ORDER BY error_message) AS reason,
                       any_value(csv_line) AS raw_line
                FROM {reject_table}
                GROUP BY line
            ),
            explained AS (
                SELECT l.line, string_agg(DISTINCT e.reason, '; ') AS stream_reason
                FROM stream_events e ASOF JOIN lines l ON e.byte_offset >= l.byte_offset
                GROUP BY l.line
            )
            SELECT l.line, l.byte_offset, coalesce(x.stream_reason, l.reason) AS reason, l.raw_line
            FROM lines l LEFT JOIN explained x USING (line)
            ORDER BY l.line
        ) TO {sql_string(output)} (FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL 1)
        """
    )
    con.execute("DROP TABLE stream_events")


class _PipeFeeder(threading.Thread):
    """Writes one chunk (its bytes, or the file it was extracted to) into a named pipe; DuckDB reads the other end."""

    def __init__(self, fifo: Path, data: list[memoryview] | Path, done: Callable[[], None] | None) -> None:
        super().__init__(name=f"feed-{fifo.name}", daemon=True)
        self.fifo, self.data, self.done = fifo, data, done
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            # Buffered on purpose: a raw write to a pipe can return early (a signal mid-write) and
            # drop the rest of the chunk; BufferedWriter.write loops until every byte is written.
            with open(self.fifo, "wb", buffering=1 << 20) as pipe:
                if isinstance(self.data, Path):
                    _send_file(self.data, pipe)
                else:
                    pipe.writelines(self.data)
        except BrokenPipeError:
            pass  # the reader went away; DuckDB's own error is the one to report
        except BaseException as exc:  # reported by join_and_raise on the caller's thread
            self.error = exc
        finally:
            self.data = []  # the chunk's memory goes now, not when the pipeline ends
            if self.done is not None:
                self.done()

    def join_and_raise(self) -> None:
        self.join()
        if self.error is not None:
            raise self.error

    def abandon(self) -> None:
        """Unblock the writer if DuckDB stopped reading (or never opened the pipe), then wait for it."""
        if not self.is_alive():
            return
        try:
            fd = os.open(self.fifo, os.O_RDONLY | os.O_NONBLOCK)
            os.close(fd)
        except OSError:
            pass
        self.join(timeout=10)


def _send_file(path: Path, pipe: BinaryIO) -> None:
    """Move an extracted chunk into the pipe with splice(2), wait until DuckDB has read it, delete it.

    Deleted as soon as it is read: kept to the end of the member, the chunk files were written back
    to disk and deleting them took 45 ms each on this VM's ext4 (mounted with ``discard``), 5 s for
    observations.csv's 112 chunks. Not before it is read: spliced pages stay the file's, and the
    kernel may refuse (ENODATA) to hand a reader pages of a file that is gone. Spliced instead of
    copied through a buffer: 2 s less CPU over the 5M archive's two members.
    """
    pipe.flush()
    fd = pipe.fileno()
    with open(path, "rb", buffering=0) as src:
        if hasattr(os, "splice"):
            while os.splice(src.fileno(), fd, 1 << 30):  # blocks while the pipe is full; 0 at the end
                pass
        else:  # not Linux
            while data := src.read(1 << 20):
                pipe.write(data)
            pipe.flush()
    _wait_until_read(fd)
    path.unlink()


def _wait_until_read(fd: int) -> None:
    """Return once the pipe behind ``fd`` is empty, or its reader has closed it."""
    unread = array.array("i", [0])
    poller = select.poll()
    poller.register(fd, 0)  # POLLERR (no reader left) is always reported
    while True:
        fcntl.ioctl(fd, termios.FIONREAD, unread)
        if not unread[0] or any(events & select.POLLERR for _, events in poller.poll(0)):
            return
        time.sleep(0.005)


class _ProgressLogger(threading.Thread):
    """Logs the bytes of the member converted so far at a steady cadence."""

    def __init__(self, member: MemberInfo, pipeline: _ChunkPipeline, log: Log) -> None:
        super().__init__(name=f"progress-{member.name}", daemon=True)
        self.member, self.pipeline, self.log = member, pipeline, log
        self._stop_event = threading.Event()
        self.started = time.monotonic()

    def run(self) -> None:
        while not self._stop_event.wait(_PROGRESS_SECONDS):
            elapsed = time.monotonic() - self.started
            self.log(
                f"{self.member.name}: converted {_progress_text(self.pipeline.bytes_fed, self.member.size, elapsed)}"
            )

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)


def _progress_text(done: int, total: int, elapsed: float) -> str:
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = (total - done) / rate if rate > 0 else float("nan")
    share = 100 * done / total if total else 100.0
    return f"{done / 1e9:.2f} of {total / 1e9:.2f} GB ({share:.0f}%), {rate / 1e6:.0f} MB/s, ETA {eta:.0f} s"
