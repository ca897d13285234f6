"""Convert one CSV member of the archive into a typed, ZSTD-compressed Parquet file with DuckDB.

Two ways to hand the CSV to DuckDB (`read_mode`), measured in bench/convert.py:

- ``stream``: the member is inflated in a background thread into a named pipe that DuckDB reads.
  Needs no disk beyond the output, but DuckDB runs a pipe-fed query on one thread.
- ``extract``: the member is first inflated to the scratch folder (deleted afterwards), so DuckDB
  reads it with all its threads. Needs the member's size free on disk; faster.
- ``auto`` (default): ``extract`` when the scratch folder has room for the member, else ``stream``.

Malformed lines never abort a conversion: DuckDB's ``store_rejects`` collects them, and they are
written to a rejects Parquet file with their line number, byte offset, raw text and reason.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import duckdb

from inat_assets.dwca.archive import MemberInfo, iter_member_bytes
from inat_assets.dwca.csv_stream import CsvStreamNormalizer
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


def choose_read_mode(read_mode: str, member_size: int, scratch: Path) -> Literal["stream", "extract"]:
    if read_mode not in ("auto", "stream", "extract"):
        raise ValueError(f"read mode must be auto, stream or extract, not {read_mode!r}")
    if read_mode != "auto":
        return read_mode  # type: ignore[return-value]
    free = shutil.disk_usage(scratch).free
    return "extract" if free > member_size + member_size // 10 + _EXTRACT_HEADROOM else "stream"


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
        mode = choose_read_mode(read_mode, member.size, scratch)
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
    source = run_dir / f"{member.table}.csv"
    reject_table = f"rejects_{member.table}_{uuid.uuid4().hex[:8]}"
    normalizer = CsvStreamNormalizer(MAX_LINE_BYTES)
    log(f"{member.name}: {member.size:,} bytes of CSV, read mode {mode}")
    feeder: _PipeFeeder | None = None
    try:
        if mode == "stream":
            os.mkfifo(source)
            feeder = _PipeFeeder(archive, member, source, normalizer)
            feeder.start()
        else:
            _extract(archive, member, source, normalizer, log)

        progress = _ProgressLogger(con, member, feeder, log)
        progress.start()
        try:
            with atomic_path(output) as tmp_out:
                try:
                    rows = _copy_csv_to_parquet(con, member, source, tmp_out, reject_table)
                except duckdb.Error as exc:
                    if feeder:
                        feeder.abandon()
                        feeder.raise_error()  # an archive fault explains DuckDB's error
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
                if feeder:
                    feeder.join_and_raise()
                if normalizer.crlf_normalized:
                    log(f"{member.name}: {normalizer.crlf_normalized:,} CR LF line ending(s) read as LF")
                rejected = _count_rejects(con, reject_table)
                _refuse_bad_share(archive, member, rows, rejected, max_reject_share, con, reject_table,
                                  normalizer, rejects_output)  # fmt: skip
                with atomic_path(rejects_output) as tmp_rejects:
                    _write_rejects(con, reject_table, normalizer, tmp_rejects)
            _failed_rejects_path(rejects_output).unlink(missing_ok=True)  # an older failure's, now stale
        finally:
            progress.stop()
    finally:
        if feeder:
            feeder.abandon()
        source.unlink(missing_ok=True)
        con.execute(f"DROP TABLE IF EXISTS {reject_table}")
        con.execute(f"DROP TABLE IF EXISTS {reject_table}_scans")
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


def _copy_csv_to_parquet(
    con: duckdb.DuckDBPyConnection, member: MemberInfo, source: Path, output: Path, reject_table: str
) -> int:
    columns = ", ".join(
        f"{sql_string(name)}: {sql_string(kind)}"
        for name, kind in column_types(member.table, member.columns).items()
    )
    # Explicit dialect, no sniffing; the stream is normalized first (csv_stream: CR LF, bare CR,
    # over-long lines). strict_mode stays on: off, DuckDB truncates rows with too many columns.
    # allow_quoted_nulls=false keeps `""` (empty string) apart from a missing value (NULL);
    # nullstr stays the empty field, so `NA` (Namibia) is text. buffer_size must stay well above
    # max_line_size: DuckDB drops a line longer than its buffer without a reject.
    read_csv = (
        f"read_csv({sql_string(source)}, header = true, auto_detect = false, delim = ',', quote = '\"', "
        f"escape = '\"', new_line = '\\n', strict_mode = true, encoding = 'utf-8', columns = {{{columns}}}, "
        f"allow_quoted_nulls = false, store_rejects = true, rejects_table = {sql_string(reject_table)}, "
        f"rejects_scan = {sql_string(reject_table + '_scans')}, "
        f"max_line_size = {MAX_LINE_BYTES}, buffer_size = {_BUFFER_BYTES})"
    )
    # Row order inside these tables carries no meaning; not preserving it lets DuckDB write row
    # groups from every thread (2.4-3.4x faster measured). ZSTD level 1 instead of DuckDB's default
    # 3: the Parquet encoding is most of the work, and level 1 cut it by a third (7.2 -> 4.9 s on
    # 2M observations) for files 1 % larger.
    con.execute("SET preserve_insertion_order = false")
    result = con.execute(
        f"COPY (SELECT * FROM {read_csv}) TO {sql_string(output)} (FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL 1)"
    ).fetchone()
    return int(result[0]) if result else 0


def _count_rejects(con: duckdb.DuckDBPyConnection, reject_table: str) -> int:
    count = con.execute(f"SELECT count(DISTINCT line) FROM {reject_table}").fetchone()
    return int(count[0]) if count else 0


def _write_rejects(
    con: duckdb.DuckDBPyConnection, reject_table: str, normalizer: CsvStreamNormalizer, output: Path
) -> None:
    """One row per rejected line (DuckDB may report several errors for one line).

    Lines the normalizer changed so that DuckDB rejects them (a bare CR, an over-long line) get the
    real reason: each event is matched to the rejected line that starts at or before it (DuckDB's
    ``line_byte_position`` is the line's start + 1).
    """
    events = normalizer.events
    con.execute("CREATE OR REPLACE TEMP TABLE stream_events (byte_offset BIGINT, reason VARCHAR)")
    if events:
        con.executemany("INSERT INTO stream_events VALUES (?, ?)", [(e.offset + 1, e.reason) for e in events])
    con.execute(
        f"""
        COPY (
            WITH lines AS (
                SELECT line::BIGINT AS line,
                       min(line_byte_position)::BIGINT AS byte_offset,
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


def _extract(
    archive: Path, member: MemberInfo, target: Path, normalizer: CsvStreamNormalizer, log: Log
) -> None:
    started, written, last = time.monotonic(), 0, time.monotonic()
    with open(target, "wb") as out:
        for chunk in normalizer.feed(iter_member_bytes(archive, member.name)):
            out.write(chunk)
            written += len(chunk)
            if time.monotonic() - last > _PROGRESS_SECONDS:
                last = time.monotonic()
                log(f"{member.name}: extracted {_progress_text(written, member.size, last - started)}")
    log(f"{member.name}: extracted {written:,} bytes in {time.monotonic() - started:.1f} s")


class _PipeFeeder(threading.Thread):
    """Inflates a member into a named pipe; DuckDB reads the other end."""

    def __init__(self, archive: Path, member: MemberInfo, fifo: Path, normalizer: CsvStreamNormalizer) -> None:
        super().__init__(name=f"feed-{member.name}", daemon=True)
        self.archive, self.member, self.fifo, self.normalizer = archive, member, fifo, normalizer
        self.bytes_fed = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            # Buffered on purpose: a raw write to a pipe can return early (a signal mid-write) and
            # drop the rest of the chunk; BufferedWriter.write loops until every byte is written.
            with open(self.fifo, "wb", buffering=1 << 20) as pipe:
                for chunk in self.normalizer.feed(iter_member_bytes(self.archive, self.member.name)):
                    pipe.write(chunk)
                    self.bytes_fed += len(chunk)
        except BrokenPipeError:
            pass  # the reader went away; DuckDB's own error is the one to report
        except BaseException as exc:  # reported by join_and_raise on the caller's thread
            self.error = exc

    def join_and_raise(self) -> None:
        self.join()
        self.raise_error()

    def raise_error(self) -> None:
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
    """Logs bytes fed (stream mode) or DuckDB's query progress (extract mode) at a steady cadence."""

    def __init__(
        self, con: duckdb.DuckDBPyConnection, member: MemberInfo, feeder: _PipeFeeder | None, log: Log
    ) -> None:
        super().__init__(name=f"progress-{member.name}", daemon=True)
        self.con, self.member, self.feeder, self.log = con, member, feeder, log
        self._stop_event = threading.Event()
        self.started = time.monotonic()

    def run(self) -> None:
        while not self._stop_event.wait(_PROGRESS_SECONDS):
            elapsed = time.monotonic() - self.started
            if self.feeder is not None:
                self.log(
                    f"{self.member.name}: converted {_progress_text(self.feeder.bytes_fed, self.member.size, elapsed)}"
                )
            else:
                share = self.con.query_progress()
                if share >= 0:
                    done = int(self.member.size * share / 100)
                    self.log(
                        f"{self.member.name}: converted {_progress_text(done, self.member.size, elapsed)}"
                    )

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)


def _progress_text(done: int, total: int, elapsed: float) -> str:
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = (total - done) / rate if rate > 0 else float("nan")
    share = 100 * done / total if total else 100.0
    return f"{done / 1e9:.2f} of {total / 1e9:.2f} GB ({share:.0f}%), {rate / 1e6:.0f} MB/s, ETA {eta:.0f} s"
