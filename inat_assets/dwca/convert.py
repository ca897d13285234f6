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
from inat_assets.dwca.schema import column_types
from inat_assets.storage import atomic_path

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
    log: Log = lambda _msg: None,
) -> ConversionResult:
    """Write ``member`` of ``archive`` to ``output`` (Parquet) and its malformed lines to ``rejects_output``."""
    started = time.monotonic()
    mode = choose_read_mode(read_mode, member.size, scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    source = scratch / f"{member.table}-{uuid.uuid4().hex[:8]}.csv"
    reject_table = f"rejects_{member.table}_{uuid.uuid4().hex[:8]}"
    log(f"{member.name}: {member.size:,} bytes of CSV, read mode {mode}")

    feeder: _PipeFeeder | None = None
    try:
        if mode == "stream":
            os.mkfifo(source)
            feeder = _PipeFeeder(archive, member, source)
            feeder.start()
        else:
            _extract(archive, member, source, log)

        progress = _ProgressLogger(con, member, feeder, log)
        progress.start()
        try:
            with atomic_path(output) as tmp_out:
                rows = _copy_csv_to_parquet(con, member, source, tmp_out, reject_table)
                if feeder:
                    feeder.join_and_raise()
        finally:
            progress.stop()
        with atomic_path(rejects_output) as tmp_rejects:
            rejected = _write_rejects(con, reject_table, tmp_rejects)
    finally:
        if feeder:
            feeder.abandon()
        source.unlink(missing_ok=True)

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


def _copy_csv_to_parquet(
    con: duckdb.DuckDBPyConnection, member: MemberInfo, source: Path, output: Path, reject_table: str
) -> int:
    columns = ", ".join(
        f"{sql_string(name)}: {sql_string(kind)}"
        for name, kind in column_types(member.table, member.columns).items()
    )
    # Explicit dialect, no sniffing. allow_quoted_nulls=false keeps `""` (empty string) apart from a
    # missing value (NULL); nullstr stays the empty field, so `NA` (Namibia) is text.
    read_csv = (
        f"read_csv({sql_string(source)}, header = true, auto_detect = false, delim = ',', quote = '\"', "
        f"escape = '\"', new_line = '\\n', encoding = 'utf-8', columns = {{{columns}}}, "
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


def _write_rejects(con: duckdb.DuckDBPyConnection, reject_table: str, output: Path) -> int:
    """One row per rejected line (DuckDB may report several errors for one line)."""
    con.execute(
        f"""
        COPY (
            SELECT line::BIGINT AS line,
                   min(line_byte_position)::BIGINT AS byte_offset,
                   string_agg(DISTINCT error_message, '; ' ORDER BY error_message) AS reason,
                   any_value(csv_line) AS raw_line
            FROM {reject_table}
            GROUP BY line
            ORDER BY line
        ) TO {sql_string(output)} (FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL 1)
        """
    )
    count = con.execute(f"SELECT count(DISTINCT line) FROM {reject_table}").fetchone()
    con.execute(f"DROP TABLE IF EXISTS {reject_table}")
    con.execute(f"DROP TABLE IF EXISTS {reject_table}_scans")
    return int(count[0]) if count else 0


def _extract(archive: Path, member: MemberInfo, target: Path, log: Log) -> None:
    started, written, last = time.monotonic(), 0, time.monotonic()
    with open(target, "wb") as out:
        for chunk in iter_member_bytes(archive, member.name):
            out.write(chunk)
            written += len(chunk)
            if time.monotonic() - last > _PROGRESS_SECONDS:
                last = time.monotonic()
                log(f"{member.name}: extracted {_progress_text(written, member.size, last - started)}")
    log(f"{member.name}: extracted {written:,} bytes in {time.monotonic() - started:.1f} s")


class _PipeFeeder(threading.Thread):
    """Inflates a member into a named pipe; DuckDB reads the other end."""

    def __init__(self, archive: Path, member: MemberInfo, fifo: Path) -> None:
        super().__init__(name=f"feed-{member.name}", daemon=True)
        self.archive, self.member, self.fifo = archive, member, fifo
        self.bytes_fed = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            # Buffered on purpose: a raw write to a pipe can return early (a signal mid-write) and
            # drop the rest of the chunk; BufferedWriter.write loops until every byte is written.
            with open(self.fifo, "wb", buffering=1 << 20) as pipe:
                for chunk in iter_member_bytes(self.archive, self.member.name):
                    pipe.write(chunk)
                    self.bytes_fed += len(chunk)
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
