"""``download-images``: download the photos of a fetch list (Parquet) into batch folders.

    download-images --parquet fetch.parquet --output images/ [--size medium] [--contact me@example.org]

Input: the project's ``fetch.parquet`` (columns ``photo_id``, ``url``) or the original workflow's
file (``foo`` = photo id, ``identifier`` = URL, optional ``format``), read in batches, never whole.
Output: ``<output>/<batch-key>/<photo_id>.<ext>`` with batch keys ``batch-NNNNNN`` = photo id //
span, the same folders as the ``image_batches`` asset: the span recorded in ``<output>/batches.json``,
else ``--batch-span``, else the span of the data dir the fetch list is in (its ``batches.json``), else
a round span giving at least 500,000 photos per folder (the image_batches default); it is recorded in
``<output>/batches.json``.
And ``<output>/manifest.parquet`` (one row per photo; see inat_assets.download.MANIFEST_SCHEMA).
``--output`` and ``--parquet`` may be object-store URLs (``s3://bucket/prefix``; AWS_* variables):
photos are then PUT one object each, the manifest uploaded once complete.
A rerun skips every photo already on disk and retries only failures. A photo id listed twice is
fetched once. Rows whose photo id is unusable (text, a fraction, NaN, negative, beyond 2^63, null)
are reported and left out; the others are downloaded. Exit status: 0 when every photo is ok or
cached, 1 when some failed or some rows had an unusable photo id, 2 for unusable arguments, input
or output (unwritable or full, or in use by another download-images), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import TextIO

import pyarrow.parquet as pq

from inat_assets.batches import span_for_folder
from inat_assets.cli.progress import clock, progress_display
from inat_assets.download import (
    BatchFolders,
    DownloadConfig,
    DownloadSummary,
    PhotoTask,
    allowed_hosts_from_env,
    parse_photo_id,
    run_download,
)
from inat_assets.download.config import MAX_AUTO_PROCESSES, SMALL_RUN
from inat_assets.download.manifest import os_error_cause
from inat_assets.download.object_writer import photo_writer
from inat_assets.errors import InatAssetsError, InputError, StorageError
from inat_assets.photos import PHOTO_SIZES, with_size
from inat_assets.storage import StorePath, store_path
from inat_assets.store import Location

# (photo id column, URL column) per known input layout, most specific first.
LAYOUTS = (("photo_id", "url"), ("foo", "identifier"))



def open_fetch_list(path: StorePath) -> tuple[pq.ParquetFile, str, str, str | None]:
    """The Parquet file (local, or on a store: read in ranges) and its (id column, URL column, format column or None)."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        parquet = pq.ParquetFile(path.path, filesystem=path.fs) if isinstance(path, Location) else pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for "not Parquet"
        raise InputError(f"{path}: not a readable Parquet file ({exc})") from exc
    names = set(parquet.schema_arrow.names)
    for id_col, url_col in LAYOUTS:
        if {id_col, url_col} <= names:
            fmt = "format" if id_col == "foo" and "format" in names else None
            return parquet, id_col, url_col, fmt
    expected = " or ".join(f"({a}, {b})" for a, b in LAYOUTS)
    raise InputError(f"{path}: needs columns {expected}; found: {', '.join(sorted(names)) or 'none'}")


@dataclass
class InputRows:
    """Rows of the fetch list that produced no task: skipped on purpose, or with an unusable id."""

    skipped: int = 0  # no URL, or a format that is not an image
    bad_ids: int = 0
    examples: list[str] = field(default_factory=list)  # the first few bad ids: "row N: value"

    def bad_id(self, row: int, value: object) -> None:
        self.bad_ids += 1
        if len(self.examples) < 5:
            self.examples.append(f"row {row:,}: {value!r}")


def iter_tasks(parquet: pq.ParquetFile, id_col: str, url_col: str, fmt_col: str | None, size: str,
               rows: InputRows) -> Iterator[PhotoTask]:
    """Tasks from the file, one record batch in memory at a time. Rows with an unusable photo id
    are counted with examples (row numbers from 1) in ``rows``; rows without URL or with a non-image
    ``format`` (compared case-insensitively) are counted as skipped."""
    columns = [id_col, url_col] + ([fmt_col] if fmt_col else [])
    row = 0
    for batch in parquet.iter_batches(batch_size=8192, columns=columns):
        ids = batch.column(0).to_pylist()
        urls = batch.column(1).to_pylist()
        formats = batch.column(2).to_pylist() if fmt_col else None
        for i, (value, url) in enumerate(zip(ids, urls, strict=True)):
            row += 1
            if not url or (formats is not None and not str(formats[i] or "image/").lower().startswith("image/")):
                rows.skipped += 1
                continue
            photo_id = parse_photo_id(value)
            if photo_id is None:
                rows.bad_id(row, value)
                continue
            yield PhotoTask(photo_id, with_size(str(url), size))


def print_summary(summary: DownloadSummary, rows: InputRows, stream: TextIO | None = None) -> None:
    stream = stream or sys.stderr
    c = summary.counts
    print(f"done in {clock(summary.seconds)}: {summary.total:,} photos, ok {c['ok']:,}, cached {c['cached']:,}, "
          f"failed permanently {c['failed_permanent']:,}, failed after retries {c['failed_transient']:,}; "
          f"{summary.bytes / 1e6:,.1f} MB at {summary.images_per_second:,.1f} images/s", file=stream)
    if rows.skipped:
        print(f"{rows.skipped:,} input rows skipped (no URL, or not an image format)", file=stream)
    if summary.duplicates:
        print(f"{summary.duplicates:,} input rows repeat an earlier photo id (fetched once)", file=stream)
    if rows.bad_ids:
        print(f"{rows.bad_ids:,} input rows have an unusable photo id and were not downloaded "
              f"(first: {'; '.join(rows.examples)})", file=stream)
    for reason, count in summary.top_errors:
        print(f"  {count:>8,}  {reason}", file=stream)
    for warning in summary.warnings:
        print(f"warning: {warning}", file=stream)
    print(f"manifest: {summary.manifest_path}", file=stream)
    if summary.transient_failed:
        print("photos that failed after retries are fetched again by a rerun", file=stream)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="download-images", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.split("\n")[4:]))
    parser.add_argument("--parquet", required=True,
                        help="fetch list (photo_id, url) or (foo, identifier): a path or a store URL (s3://...)")
    parser.add_argument("--output", required=True,
                        help="folder (or store URL, s3://bucket/prefix) for batch folders and manifest.parquet")
    parser.add_argument("--size", choices=PHOTO_SIZES, default="original", help="rewrite /original.<ext> URLs to this size")
    parser.add_argument("--concurrency", type=int, default=DownloadConfig.concurrency,
                        help=f"requests in flight (default {DownloadConfig.concurrency})")
    parser.add_argument("--processes", type=int, default=None,
                        help="worker processes (default: one per available core, at most "
                             f"{MAX_AUTO_PROCESSES}; 1 for fewer than {SMALL_RUN:,} photos)")
    parser.add_argument("--allow-host", action="append", default=[], metavar="HOST",
                        help="also allow this host (repeatable); base list: INAT_ALLOWED_HOSTS or the two iNat hosts")
    parser.add_argument("--retries", type=int, default=5, help="retries after a transient failure (default 5)")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="read timeout in seconds; connect gets a third of it, a whole request 4x (default 30)")
    parser.add_argument("--contact", default="", help="e-mail or URL added to the User-Agent (iNaturalist asks for one)")
    parser.add_argument("--batch-span", type=int, default=0,
                        help="photo ids per batch folder (default: <output>/batches.json, the data dir's, or ~500,000 photos)")
    parser.add_argument("--no-other-host", action="store_true", help="do not try the other iNat host on 403/404")
    parser.add_argument("--progress-interval", type=float, default=None,
                        help="seconds between progress updates (default: 0.2 for the bar on a terminal, 1 for lines)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or lines")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if min(args.concurrency, args.processes or 1) < 1 or args.batch_span < 0 or args.retries < 0 or args.timeout <= 0:
        print("download-images: --concurrency, --processes and --timeout must be positive, --batch-span >= 0, "
              "--retries >= 0",
              file=sys.stderr)
        return 2
    try:
        # Both through the one parse of paths and store URLs (inat_assets.storage): never a local "s3:" folder.
        fetch_list = store_path(args.parquet, what="--parquet")
        output = store_path(args.output, what="--output")
        parquet, id_col, url_col, fmt_col = open_fetch_list(fetch_list)
    except (InputError, StorageError) as exc:
        print(f"download-images: {exc}", file=sys.stderr)
        return 2

    hosts = tuple(dict.fromkeys([*allowed_hosts_from_env(), *(h.strip().lower() for h in args.allow_host)]))
    config = replace(
        DownloadConfig(),
        concurrency=args.concurrency, processes=args.processes, allowed_hosts=hosts, retries=args.retries,
        read_timeout=args.timeout, connect_timeout=max(args.timeout / 3, 1.0), request_deadline=args.timeout * 4,
        contact=args.contact, try_other_host=not args.no_other_host,
    )
    try:
        output.mkdir(parents=True, exist_ok=True)  # nothing to create on a store
    except OSError as exc:
        print(f"download-images: cannot create the output folder {output}: {os_error_cause(exc)}", file=sys.stderr)
        return 2
    manifest = output / "manifest.parquet"
    try:
        span = span_for_folder(output, fetch_list, id_col, args.batch_span, record=parquet.metadata.num_rows > 0)
    except InatAssetsError as exc:  # a span other than the recorded one, an unreadable batches.json
        print(f"download-images: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"download-images: cannot record the batch span in {output}: {os_error_cause(exc)}", file=sys.stderr)
        return 2
    rows = InputRows()
    # A live bar when stderr is a terminal, periodic lines when it is a pipe or a log (inat_assets.cli.progress).
    progress = None if args.quiet else progress_display(sys.stderr)
    started = time.monotonic()
    try:
        with progress or contextlib.nullcontext():  # the bar ends (cursor back) before any message below
            summary = run_download(
                iter_tasks(parquet, id_col, url_col, fmt_col, args.size, rows),
                BatchFolders(output, span),  # type: ignore[arg-type]
                manifest,
                config,
                writer=photo_writer(output),  # objects, one PUT each, when --output is a store URL
                previous_manifest=manifest,
                on_progress=progress,
                progress_interval=args.progress_interval or (progress.interval if progress else 1.0),
                total=parquet.metadata.num_rows,
            )
    except KeyboardInterrupt:
        print(f"interrupted after {time.monotonic() - started:.0f} s; finished files are kept, "
              "rerun to continue", file=sys.stderr)
        return 130
    except InatAssetsError as exc:  # output unwritable or full, manifest in use: the message says what to do
        print(f"download-images: {exc}", file=sys.stderr)
        return 2
    print_summary(summary, rows)
    return 1 if summary.failed or rows.bad_ids else 0


if __name__ == "__main__":
    raise SystemExit(main())
