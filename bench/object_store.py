"""Parquet on an object store: DuckDB through a registered fsspec filesystem vs local staging, side by side.

    .venv/bin/python bench/object_store.py                 # 500k rows (~25 MB Parquet), 3 rounds
    .venv/bin/python bench/object_store.py --rows 2000000 --rounds 5

Starts a moto S3 server on 127.0.0.1 (inat_assets.testing.s3) and, for a fetch-list-shaped table
(photo_id sorted, url, licence, names; row groups of 32,768 like fetch.parquet), measures:

- write, direct: ``COPY ... TO 's3://...'`` through ``con.register_filesystem(s3fs)``;
- write, staged (baseline): ``COPY`` to a local file, then one upload (``put_file``), what
  `inat_assets.storage.atomic_path` does;
- read one batch (1 % of the id range, what an image batch reads), direct vs staged (download the
  whole object, then query it locally);
- read everything (count and a sum over url lengths), direct vs staged;
- photo PUTs from memory through `ObjectWriter.write` (what image_batches does on a store) with 1, 4,
  16 and 64 in flight: photos/s and CPU per photo, client and server.

And checks what a failed direct write leaves: DuckDB's error after part of the rows.

Client CPU is this process's CPU time (DuckDB's threads and s3fs's event loop included); server CPU
is the moto process's; wall time is noisy on a shared machine. Medians over rounds; ratios against
the staged baseline. moto on loopback has no network latency and little bandwidth limit, so against
real S3 the direct read of one batch gains more (fewer bytes) and the full read less.

Measured (2 cores shared with ~7 busy agents; medians of 3), client CPU s / server CPU s / wall s:

    4M rows, 88.2 MB       direct               staged (baseline)    direct / staged
    write                  8.00 / 0.95 / 20.82  7.94 / 0.48 / 25.46  1.01x / 1.98x / 0.82x
    one batch (1 % ids)    0.04 / 0.05 / 0.16   0.22 / 0.27 / 1.29   0.19x / 0.19x / 0.12x
    full read (2 columns)  0.29 / 0.03 / 0.49   0.48 / 0.27 / 1.94   0.61x / 0.11x / 0.25x

    500k rows, 11.1 MB
    write                  0.94 / 0.05 / 2.58   0.94 / 0.04 / 2.90   1.01x / 1.25x / 0.89x
    one batch (1 % ids)    0.05 / 0.05 / 0.12   0.03 / 0.01 / 0.14   1.85x / 5.00x / 0.82x
    full read (2 columns)  0.15 / 0.09 / 0.45   0.06 / 0.01 / 0.18   2.67x / 9.00x / 2.54x

A direct write that failed part-way left a truncated object under the final name (207 MB at 4M rows,
"No magic bytes found at end of file"), replacing the previous good one.
Photo PUTs, 400 x 40 KB, medians of 3 (in flight: photos/s, client / server CPU ms per photo):
    1: 61, 3.24 / 3.75    4: 89, 2.82 / 3.50    16: 88, 2.65 / 3.42    64: 102, 2.61 / 3.45
moto's own CPU (3.5 ms per PUT, on the same 2 cores) is the ceiling here; the client's 2.6 ms per PUT is
botocore's request pipeline (turning off its CRC32 checksum saved 0.2 ms: kept on).

Hence: writes are staged and uploaded once complete (the same client CPU, and never a broken object);
reads go through the registered filesystem: from tens of MB on, DuckDB fetches only the footer and the
row groups and columns it needs (one batch: 0.19x the CPU of downloading the object first, and the gap
grows with the file: a full-size fetch list is GBs), where a small file costs a few hundredths of a
second more.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import duckdb

from inat_assets.testing.s3 import S3Server, serve_s3

BUCKET = "inat-bench"


def _table_sql(rows: int) -> str:
    return f"""
        SELECT range * 7 AS photo_id, range // 3 AS observation_id,
               'https://inaturalist-open-data.s3.amazonaws.com/photos/' || (range * 7) || '/medium.jpg' AS url,
               ['CC0', 'CC-BY', 'CC-BY-NC'][range % 3 + 1] AS license,
               'Genus' || (range % 997) || ' species' || (range % 13) AS scientific_name,
               'creator ' || (range % 50021) AS creator,
               md5(range::VARCHAR) AS sha  -- incompressible, like a manifest's digests
        FROM range({rows}) ORDER BY photo_id
    """


def _put_photos(fs: object, count: int, in_flight: int, round_: int) -> None:
    """PUT ``count`` photos through ObjectWriter.write with ``in_flight`` engine workers (as the download engine)."""
    import asyncio

    from inat_assets.download.object_writer import ObjectWriter
    from inat_assets.store import Location
    from inat_assets.testing.mirror import served_bytes

    body = served_bytes(1, "medium", "jpg")  # a complete JPEG of the mirror's medium size
    writer = ObjectWriter(Location(fs, f"{BUCKET}/photos", Path(tempfile.gettempdir())))  # type: ignore[arg-type]
    folder = f"s3://{BUCKET}/photos/c{in_flight}-r{round_}"

    async def run() -> None:
        ids = iter(range(count))

        async def worker() -> None:
            for photo_id in ids:
                await writer.write(folder, photo_id, "jpg", body)

        await asyncio.gather(*(worker() for _ in range(in_flight)))
        await writer.aclose()

    asyncio.run(run())


def _measure(server: S3Server, run: Callable[[], object]) -> tuple[float, float, float]:
    cpu, server_cpu, wall = time.process_time(), server.cpu_seconds(), time.perf_counter()
    run()
    return time.process_time() - cpu, server.cpu_seconds() - server_cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--photos", type=int, default=400, help="photos PUT per concurrency level and round")
    args = parser.parse_args()

    with serve_s3() as server, tempfile.TemporaryDirectory() as tmp:
        os.environ.update(server.environment())
        import boto3
        import fsspec

        boto3.client("s3").create_bucket(Bucket=BUCKET)
        fs = fsspec.filesystem("s3", use_listings_cache=False)
        con = duckdb.connect()
        con.register_filesystem(fs)
        local = Path(tmp) / "staged.parquet"
        copy_options = "(FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL 1, ROW_GROUP_SIZE 32768)"
        con.execute(f"COPY ({_table_sql(args.rows)}) TO '{local}' {copy_options}")
        size = local.stat().st_size
        fs.put_file(str(local), f"{BUCKET}/table.parquet")
        lo = args.rows * 7 // 2
        hi = lo + args.rows * 7 // 100
        batch = f"SELECT count(*), sum(length(url)) FROM read_parquet('{{}}') WHERE photo_id >= {lo} AND photo_id < {hi}"
        full = "SELECT count(*), sum(length(url)) FROM read_parquet('{}')"

        def staged_read(query: str) -> Callable[[], object]:
            def run() -> object:
                fs.get_file(f"{BUCKET}/table.parquet", str(local))
                return con.execute(query.format(local)).fetchall()

            return run

        def staged_write() -> None:
            con.execute(f"COPY ({_table_sql(args.rows)}) TO '{local}' {copy_options}")
            fs.put_file(str(local), f"{BUCKET}/staged.parquet")

        cases: dict[str, Callable[[], object]] = {
            "write direct": lambda: con.execute(
                f"COPY ({_table_sql(args.rows)}) TO 's3://{BUCKET}/direct.parquet' {copy_options}"
            ),
            "write staged": staged_write,
            "one batch direct": lambda: con.execute(batch.format(f"s3://{BUCKET}/table.parquet")).fetchall(),
            "one batch staged": staged_read(batch),
            "full read direct": lambda: con.execute(full.format(f"s3://{BUCKET}/table.parquet")).fetchall(),
            "full read staged": staged_read(full),
        }
        results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in cases}
        for _ in range(args.rounds):
            for name, run in cases.items():  # interleaved, so load changes hit every case alike
                results[name].append(_measure(server, run))
        medians = {name: tuple(statistics.median(r[i] for r in runs) for i in range(3)) for name, runs in results.items()}
        print(f"{args.rows:,} rows, {size / 1e6:.1f} MB Parquet, {args.rounds} rounds; medians")
        print(f"{'case':18s} {'client CPU s':>12s} {'server CPU s':>12s} {'wall s':>8s}   ratio to staged (CPU / server / wall)")
        for name, (cpu, server_cpu, wall) in medians.items():
            base = medians[name.rsplit(" ", 1)[0] + " staged"]
            ratio = "" if name.endswith("staged") else "   " + " / ".join(
                f"{a / b:.2f}x" if b > 0 else "n/a" for a, b in zip((cpu, server_cpu, wall), base, strict=True)
            )
            print(f"{name:18s} {cpu:12.2f} {server_cpu:12.2f} {wall:8.2f}{ratio}")

        con.execute(f"COPY (SELECT range AS x FROM range(10)) TO 's3://{BUCKET}/good.parquet' (FORMAT parquet)")
        failing = (
            f"COPY (SELECT CASE WHEN range > {args.rows * 6} THEN error('boom') ELSE range END AS x, "
            f"'some text ' || range AS t FROM range({args.rows * 8})) TO 's3://{BUCKET}/good.parquet' "
            "(FORMAT parquet, ROW_GROUP_SIZE 100000)"
        )
        con.execute("SET threads = 1")  # the error then comes after the first row groups were written
        try:
            con.execute(failing)
        except duckdb.Error as exc:
            print(f"\nfailed direct write: {str(exc).splitlines()[0]}")
        info = fs.info(f"{BUCKET}/good.parquet")
        try:
            con.execute(f"SELECT count(*) FROM 's3://{BUCKET}/good.parquet'").fetchall()
            state = "still readable"
        except duckdb.Error as exc:
            state = f"unreadable: {str(exc).splitlines()[0]}"
        print(f"the object under the final name afterwards: {info['size']:,} bytes, {state}")

        from inat_assets.testing.mirror import served_bytes

        size = len(served_bytes(1, "medium", "jpg"))
        print(f"\nphoto PUTs from memory (ObjectWriter.write), {args.photos} x {size:,} bytes, medians of {args.rounds}")
        print(f"{'in flight':>9s} {'photos/s':>9s} {'client CPU ms/photo':>20s} {'server CPU ms/photo':>20s}")
        levels = (1, 4, 16, 64)
        puts: dict[int, list[tuple[float, float, float]]] = {n: [] for n in levels}
        for round_ in range(args.rounds):
            for n in levels:
                puts[n].append(_measure(server, lambda n=n, r=round_: _put_photos(fs, args.photos, n, r)))
        for n in levels:
            cpu, server_cpu, wall = (statistics.median(r[i] for r in puts[n]) for i in range(3))
            per = 1000 / args.photos
            print(f"{n:9d} {args.photos / wall:9.0f} {cpu * per:20.2f} {server_cpu * per:20.2f}")


if __name__ == "__main__":
    main()
