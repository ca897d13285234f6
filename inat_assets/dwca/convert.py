"""Convert one CSV member of the archive into a typed, ZSTD-compressed Parquet file.

The member is inflated and normalized on one thread and cut into chunks of whole records
(csv_stream.RecordChunker); one DuckDB query per chunk parses it on each of DuckDB's threads, and
pyarrow writes every chunk's rows into the one output file (see _ChunkPipeline for why, with the
numbers). Two ways to hand a chunk to DuckDB (``read_mode``), measured in bench/convert.py:

- ``stream``: through a named pipe. Needs no disk for the CSV.
- ``extract``: as a file in the scratch folder, deleted once read. Needs the chunks in flight on
  disk (a few times CHUNK_BYTES), never the member's size.
- ``auto`` (default): ``extract`` when the scratch folder has that room, else ``stream``.

Malformed lines never abort a conversion: DuckDB's ``store_rejects`` collects them, and they are
written to a rejects Parquet file with their line number in the member, byte offset, raw text and
reason.
"""

from __future__ import annotations

import os
import queue
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

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
# Bytes of CSV per DuckDB query (to be measured).
CHUNK_BYTES = 32 << 20
# DuckDB's own default row group size; fetch_list and training read these tables with DuckDB.
ROW_GROUP_ROWS = 122_880
_ARROW_TYPES = {"BIGINT": pa.int64(), "DOUBLE": pa.float64(), "VARCHAR": pa.string()}
_EXTRACT_HEADROOM = 1 << 30
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


def choose_read_mode(read_mode: str, scratch: Path, workers: int) -> Literal["stream", "extract"]:
    if read_mode not in ("auto", "stream", "extract"):
        raise ValueError(f"read mode must be auto, stream or extract, not {read_mode!r}")
    if read_mode != "auto":
        return read_mode  # type: ignore[return-value]
    in_flight = (2 * workers + 1) * (CHUNK_BYTES + MAX_LINE_BYTES)  # queued and in DuckDB, each up to a record longer
    return "extract" if shutil.disk_usage(scratch).free > in_flight + _EXTRACT_HEADROOM else "stream"


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
        mode = choose_read_mode(read_mode, scratch, _duckdb_threads(con))
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
    log(f"{member.name}: {member.size:,} bytes of CSV, read mode {mode}, {pipeline.workers} worker(s)")
    # A plain table, not a TEMP one: every worker's cursor is its own connection and appends to it.
    con.execute(
        f"CREATE TABLE {reject_table} (chunk BIGINT, line BIGINT, byte_offset BIGINT, error_message VARCHAR, "
        "csv_line VARCHAR)"
    )
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
        con.execute(f"DROP TABLE IF EXISTS {reject_table}")
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


def _read_csv_sql(member: MemberInfo, source: Path, reject_table: str) -> str:
    columns = ", ".join(
        f"{sql_string(name)}: {sql_string(kind)}"
        for name, kind in column_types(member.table, member.columns).items()
    )
    # Explicit dialect, no sniffing; the stream is normalized first (csv_stream: CR LF, bare CR,
    # over-long lines) and cut into whole records without the header line (header = false).
    # strict_mode stays on: off, DuckDB truncates rows with too many columns.
    # allow_quoted_nulls=false keeps `""` (empty string) apart from a missing value (NULL);
    # nullstr stays the empty field, so `NA` (Namibia) is text. buffer_size must stay well above
    # max_line_size: DuckDB drops a line longer than its buffer without a reject.
    return (
        f"SELECT * FROM read_csv({sql_string(source)}, header = false, auto_detect = false, delim = ',', "
        f"quote = '\"', escape = '\"', new_line = '\\n', strict_mode = true, encoding = 'utf-8', "
        f"columns = {{{columns}}}, allow_quoted_nulls = false, store_rejects = true, "
        f"rejects_table = {sql_string(reject_table)}, rejects_scan = {sql_string(reject_table + '_scans')}, "
        f"max_line_size = {MAX_LINE_BYTES}, buffer_size = {_BUFFER_BYTES})"
    )


def _arrow_schema(member: MemberInfo) -> pa.Schema:
    return pa.schema(
        [(name, _ARROW_TYPES[kind]) for name, kind in column_types(member.table, member.columns).items()]
    )


class _ChunkPipeline:
    """Inflate -> normalize -> record chunks (one thread) | DuckDB parses chunks (``workers`` threads) | one Parquet file.

    Why this shape (bench/convert.py, 2-core machine): DuckDB reads a pipe on one thread, and
    inflating a member is one thread whatever reads it; cutting the stream into whole records
    lets one DuckDB query per chunk run on every core while the next chunk inflates. Each query
    returns Arrow and pyarrow writes it into the one output file under a lock: pyarrow encodes
    the same table in half the CPU of DuckDB's Parquet writer (1.05 vs 2.1 s for 500k
    observations), which pays for the conversion to Arrow (about 0.7 s).

    ``extract`` hands each chunk to DuckDB as a scratch file, ``stream`` through a named pipe, so
    neither needs disk beyond the chunks in flight (at most ``2 * workers + 1`` of CHUNK_BYTES).
    Rejects go to ``reject_table`` with the line's number in the member (lines of the chunk's
    bytes counted before it) and its offset in the normalized stream.
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
        self.chunker = RecordChunker(CHUNK_BYTES, MAX_LINE_BYTES)
        self.workers = _duckdb_threads(con)
        self._queue: queue.Queue[CsvChunk | None] = queue.Queue(maxsize=self.workers)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._archive_error: BaseException | None = None
        self._worker_error: BaseException | None = None
        self._writer: pq.ParquetWriter | None = None
        self._newlines: dict[int, int] = {}  # chunk index -> its \n count, for the member's line numbers
        self.rows = 0

    @property
    def bytes_fed(self) -> int:
        return self.chunker.bytes_in

    def run(self, output: Path) -> int:
        """Write every valid row to ``output``; raise the first fault (the archive's first: it explains DuckDB's)."""
        threads = [threading.Thread(target=self._produce, name=f"chunk-{self.member.name}", daemon=True)]
        threads += [
            threading.Thread(target=self._work, name=f"convert-{self.member.name}-{i}", daemon=True)
            for i in range(self.workers)
        ]
        with pq.ParquetWriter(
            str(output), _arrow_schema(self.member), compression="zstd", compression_level=1
        ) as writer:
            self._writer = writer
            try:
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
            finally:
                self._stop.set()
                for thread in threads:
                    thread.join()
        if self._archive_error is not None:
            raise self._archive_error
        if self._worker_error is not None:
            raise self._worker_error
        self._number_reject_lines()
        return self.rows

    def _number_reject_lines(self) -> None:
        """Rejects carry (chunk, lines of the chunk before theirs); make that the member's line number."""
        first, starts = 1 + self.chunker.header_newlines, []
        for index in range(len(self._newlines)):
            starts.append((index, first))
            first += self._newlines[index]
        if not starts:
            return
        self.con.register("chunk_first_lines", pa.table({"chunk": [c for c, _ in starts], "first": [f for _, f in starts]}))
        try:
            self.con.execute(
                f"UPDATE {self.reject_table} SET line = line + c.first FROM chunk_first_lines c "
                f"WHERE {self.reject_table}.chunk = c.chunk"
            )
        finally:
            self.con.unregister("chunk_first_lines")

    def _produce(self) -> None:
        try:
            for chunk in self.chunker.split(self.normalizer, iter_member_bytes(self.archive, self.member.name)):
                if not self._put(chunk):
                    return
        except BaseException as exc:  # raised by run() on the caller's thread
            self._archive_error = exc
            self._stop.set()
        finally:
            for _ in range(self.workers):
                if not self._put(None):
                    break

    def _put(self, item: CsvChunk | None) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _next(self) -> CsvChunk | None:
        while not self._stop.is_set():
            try:
                return self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
        return None

    def _work(self) -> None:
        cursor = self.con.cursor()
        scan_rejects = f"{self.reject_table}_{threading.get_ident()}"
        try:
            while (chunk := self._next()) is not None:
                table = self._convert(cursor, chunk, scan_rejects)
                if not table.schema.equals(self._writer_schema()):
                    table = table.cast(self._writer_schema())
                with self._lock:
                    if table.num_rows:
                        self._writer.write_table(table, row_group_size=ROW_GROUP_ROWS)  # type: ignore[union-attr]
                    self.rows += table.num_rows
                del table
                self._keep_rejects(cursor, chunk, scan_rejects)
                self._newlines[chunk.index] = chunk.newlines()  # off the producer's thread: it is the serial stage
        except BaseException as exc:
            if self._worker_error is None:
                self._worker_error = exc
            self._stop.set()
        finally:
            cursor.close()

    def _writer_schema(self) -> pa.Schema:
        return self._writer.schema  # type: ignore[union-attr]

    def _convert(self, cursor: duckdb.DuckDBPyConnection, chunk: CsvChunk, scan_rejects: str) -> pa.Table:
        source = self.run_dir / f"chunk-{chunk.index:06d}.csv"
        if self.mode == "extract":
            with open(source, "wb") as fh:
                fh.writelines(chunk.views())
            try:
                return cursor.sql(_read_csv_sql(self.member, source, scan_rejects)).to_arrow_table()
            finally:
                source.unlink(missing_ok=True)
        os.mkfifo(source)
        feeder = _PipeFeeder(source, chunk.views())
        feeder.start()
        try:
            table = cursor.sql(_read_csv_sql(self.member, source, scan_rejects)).to_arrow_table()
            feeder.join_and_raise()
            return table
        finally:
            feeder.abandon()
            source.unlink(missing_ok=True)

    def _keep_rejects(self, cursor: duckdb.DuckDBPyConnection, chunk: CsvChunk, scan_rejects: str) -> None:
        """Append this chunk's rejects to the shared table with member line numbers and stream offsets."""
        try:
            positions = [
                int(p)
                for (p,) in cursor.execute(
                    f"SELECT DISTINCT line_byte_position FROM {scan_rejects} "
                    "WHERE line_byte_position IS NOT NULL ORDER BY 1"
                ).fetchall()
            ]
            if not positions:
                return
            # DuckDB's own `line` counts records from the chunk's start; the member's line number
            # counts every \n before the line (quoted ones too): here the chunk's, its first line's
            # number is added once every chunk is counted (_number_reject_lines).
            lines = chunk.newlines_before([max(p - 1, 0) for p in positions])  # line_byte_position: start + 1
            line_map = pa.table({"position": pa.array(positions, pa.int64()), "line": pa.array(lines, pa.int64())})
            view = f"{scan_rejects}_lines"
            cursor.register(view, line_map)
            try:
                cursor.execute(
                    f"""INSERT INTO {self.reject_table}
                    SELECT {chunk.index}, coalesce(m.line, r.line - 1), {chunk.offset} + r.line_byte_position,
                           r.error_message, r.csv_line
                    FROM {scan_rejects} r LEFT JOIN {view} m ON r.line_byte_position = m.position"""
                )
            finally:
                cursor.unregister(view)
        finally:
            cursor.execute(f"DROP TABLE IF EXISTS {scan_rejects}")
            cursor.execute(f"DROP TABLE IF EXISTS {scan_rejects}_scans")


def _duckdb_threads(con: duckdb.DuckDBPyConnection) -> int:
    row = con.execute("SELECT current_setting('threads')").fetchone()
    return max(1, int(row[0])) if row else 1


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
    """Writes one chunk into a named pipe; DuckDB reads the other end."""

    def __init__(self, fifo: Path, data: list[memoryview]) -> None:
        super().__init__(name=f"feed-{fifo.name}", daemon=True)
        self.fifo, self.data = fifo, data
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            # Buffered on purpose: a raw write to a pipe can return early (a signal mid-write) and
            # drop the rest of the chunk; BufferedWriter.write loops until every byte is written.
            with open(self.fifo, "wb", buffering=1 << 20) as pipe:
                pipe.writelines(self.data)
        except BrokenPipeError:
            pass  # the reader went away; DuckDB's own error is the one to report
        except BaseException as exc:  # reported by join_and_raise on the caller's thread
            self.error = exc

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
