"""Archive zip -> observations.parquet + media.parquet: the original workflow against ours, side by side.

    .venv/bin/python bench/convert.py                      # 5M observations, 10M media rows, 3 rounds
    .venv/bin/python bench/convert.py --observations 200000 --rounds 1
    .venv/bin/python bench/convert.py --stages             # where the time goes, per member

Builds a synthetic archive with the sample generator (cached in --workdir, default /work/bench-data,
outside git; 5M observations take ~5 min to build, 0.82 GB zipped, 6.4 GB of CSV), then runs,
each in its own subprocess so that CPU time and peak RSS are measured per variant (os.wait4):

- original: `unzip` the archive, then DuckDB `COPY (SELECT * FROM read_csv(<member>, AUTO_DETECT=TRUE))
  TO '<table>.parquet' (FORMAT PARQUET)` for both members (the original instructions' statements);
- ours-stream / ours-extract: `convert_member` with default settings (read mode forced).

The archive has no malformed lines by default: the original statements abort on the first one
(`--malformed` shows that), while ours set them aside.

Prints wall seconds and CPU seconds (medians over rounds), peak RSS, each variant's ratio to the
original (ratio of medians, and median of the per-round ratios), and the scratch disk each needs
besides the outputs (unzip holds both members; extract at most one file per feeder slot plus the
one being written, each a chunk and a record long, deleted once DuckDB has read it).

Measured 2026-11-27 on the quiet 2-core Intel Xeon @ 2.50GHz VM (23 GB, ext4), 5M observations
(3.75 GB observations.csv, 2.74 GB media.csv), 3 rounds:

    variant         median s   cpu s  peak RSS MB  x original per-round x  cpu x scratch GB
    original            75.0    99.9         1206        1.00        1.00   1.00       6.50
    ours-stream         37.3    69.1          770        0.50        0.50   0.69       0.00
    ours-extract        36.8    69.9          703        0.49        0.49   0.70       0.17

On the quiet 2-core AMD EPYC VM (23 GB, ext4; DuckDB 2.0.1), same archive, 2026-12-05, three runs:

    run (rounds)                   original s (unzip s)  stream s  x      extract s  x
    1 (3), no sync between runs    63.2 (31-33)          32.0      0.51   32.7       0.52
    2 (3), no sync between runs    70.8 (36-39)          33.0      0.47   33.3       0.47
    3 (5), sync before each run    66.1 (34-37)          31.9      0.48   32.3       0.49

Run 3 in full (the script as it is now: the previous run's writes are synced before each run):

    variant         median s   cpu s  peak RSS MB  x original per-round x  cpu x scratch GB
    original            66.1    86.3         1148        1.00        1.00   1.00       6.50
    ours-stream         31.9    60.2          769        0.48        0.49   0.70       0.00
    ours-extract        32.3    61.0          713        0.49        0.49   0.71       0.17

Ours took 31-34 s in every round of the three runs; the original's unzip, which writes 6.5 GB to
disk, took 31 to 39 s, and it moves the ratio. Over all 11 rounds the median per-round ratio is
0.49 in both modes (stream 0.45-0.52, extract 0.45-0.55). Ours keeps both cores busy for 96 % of
its time (a /proc/stat sampler: 2.4 idle core-seconds of 62, in the tail of each member's COPY and
at start); converting both members at once (two connections, as a multiprocess executor would run
the two assets) took 31.8 s against 30.5-30.9 s one after the other, with 3.5 s more CPU: no gain.

On 2026-11-27, per-round ratios: stream 0.48, 0.50, 0.55; extract 0.49, 0.49, 0.57. In round 3 both of ours used
15-20 % more CPU seconds for the same work (79.8 and 84.7 s against 67-70 s in rounds 1-2; the
original's CPU rose 5 %): the VM, not the code. Three earlier 1-3-round runs the same hour:
stream 0.48-0.52x, extract 0.49-0.55x. Ours stays at about 1.9 busy cores throughout (a /proc/stat
sampler: idle only in the first second and for ~0.5 s between the members); CPU is the floor, and
DuckDB's parse and encode are 84 % of it (below), so 0.5x is about as far as a DuckDB COPY goes
on two cores. What got it there from 0.66x/0.99x (profiled with perf):

- inflate with ISA-L's streaming decompressor (`isal.igzip_lib.IgzipDecompressor`): 4.1 s of CPU
  for observations.csv against 7.2 s with `isal_zlib.decompressobj`, which copied the unconsumed
  input on every call and allocated a fresh output of max_length each time (page faults);
- the quote count reuses one buffer instead of allocating a bool array per piece (1.2 %);
- `extract` no longer inflates the whole member before DuckDB starts: each chunk file is spliced
  into its pipe as soon as it is written and deleted once read (deleting them at the end cost 45 ms
  each on this ext4, mounted with `discard`, 5 s of idle cores);
- 16 MB chunks and a shrinking tail (the last chunks take a quarter of what remains), so both
  DuckDB threads run out of work together; no rejects pass when there are no rejects.

Where the time goes (`--stages`, same machine and hour, CPU seconds, one stage after the other):

    observations.csv 3.75 GB  inflate 5.1 s (8%)  normalize+chunk 4.2 s (7%)  parse 30.0 s (49%)  encode 21.5 s (35%)  write 0.2 s
    media.csv        2.74 GB  inflate 1.5 s (6%)  normalize+chunk 2.1 s (8%)  parse 11.7 s (44%)  encode 11.2 s (42%)  write 0.2 s

(normalize+chunk includes writing the chunk files to the page cache.) DuckDB's parse and Parquet
encoding are 84-86 % of the work; neither changed with the codec (zstd 1, zstd -5, snappy, none:
same CPU), Parquet V2 encodings, dictionary limits, bloom filters, row group size, buffer size,
DuckDB's allocator settings, reading files instead of pipes, or per-thread output files (500k
observations). A perf profile of the COPY puts 17 % of DuckDB's CPU in copying each row into the
Parquet writer's row-group buffer (ColumnDataCollection::Append), which no setting avoids.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = ("original", "ours-stream", "ours-extract")


def build_archive(workdir: Path, observations: int, media_per_observation: float, malformed: bool) -> Path:
    from inat_assets.testing.sample import SampleSpec, write_sample_archive

    archive = workdir / f"bench-{observations}{'-malformed' if malformed else ''}.zip"
    if not archive.exists():
        started = time.monotonic()
        spec = SampleSpec(
            observations=observations, seed=1, mean_photos=media_per_observation, malformed_lines=malformed
        )
        info = write_sample_archive(archive, spec)
        print(
            f"built {archive} in {time.monotonic() - started:.0f} s: {info.observations_valid:,} observations, "
            f"{info.media_valid:,} media rows, {archive.stat().st_size / 1e9:.2f} GB zipped",
            flush=True,
        )
    return archive


def stages(archive: Path, workdir: Path, stage_memory: str) -> None:
    """Where the time goes, per member: CPU seconds of each stage, run one after the other.

    inflate (ISA-L), normalize + cut into chunks (csv_stream; the chunk files' writes included),
    DuckDB's parse of the chunk files into a table, then the Parquet encoding of that table and the
    write (the write calls' time from DuckDB's profiler, taken out of the encoding).
    """
    import duckdb

    from inat_assets.dwca.archive import inspect_archive, iter_member_bytes
    from inat_assets.dwca.convert import (
        CHUNK_BYTES,
        MAX_LINE_BYTES,
        _read_csv_sql,
        configure_duckdb,
        sql_string,
    )
    from inat_assets.dwca.csv_stream import CsvStreamNormalizer, RecordChunker

    info = inspect_archive(archive)
    out = Path(tempfile.mkdtemp(prefix="stages-", dir=workdir))
    try:
        for member in (info.observations, info.media):
            cpu = time.process_time()
            sum(map(len, iter_member_bytes(archive, member.name)))
            inflate = time.process_time() - cpu
            cpu = time.process_time()
            sources = []
            for chunk in RecordChunker(CHUNK_BYTES, MAX_LINE_BYTES).split(
                CsvStreamNormalizer(MAX_LINE_BYTES), iter_member_bytes(archive, member.name)
            ):
                sources.append(out / f"chunk-{chunk.index:06d}.csv")
                with open(sources[-1], "wb") as fh:
                    fh.writelines(chunk.views())
            normalize = time.process_time() - cpu - inflate  # the chunk files' writes are in here too
            with duckdb.connect() as con:
                # Parse and encode measured apart: the parsed rows are held in a table first (memory
                # limit raised so that no spill is timed), then written; CPU time over all threads.
                configure_duckdb(con, temp_dir=out / "spill", memory_limit=stage_memory)
                con.execute("SET preserve_insertion_order = false")
                cpu = time.process_time()
                con.execute(f"CREATE TABLE parsed AS {_read_csv_sql(member, sources, 'rejects')}").fetchall()
                parse = time.process_time() - cpu
                con.execute(f"PRAGMA enable_profiling = 'json'; PRAGMA profiling_output = {sql_string(out / 'profile.json')}")
                cpu = time.process_time()
                con.execute(
                    f"COPY parsed TO {sql_string(out / 'table.parquet')} (FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL 1)"
                ).fetchall()
                encode = time.process_time() - cpu
                con.execute("PRAGMA disable_profiling")
            write = float(json.loads((out / "profile.json").read_text())["io"]["total_write_time"])
            encode -= write
            total = inflate + normalize + parse + encode + write
            print(
                f"{member.name:17s} {member.size / 1e9:5.2f} GB  inflate {inflate:6.1f} s ({inflate / total:4.0%})  "
                f"normalize+chunk {normalize:5.1f} s ({normalize / total:4.0%})  parse {parse:6.1f} s ({parse / total:4.0%})  "
                f"encode {encode:6.1f} s ({encode / total:4.0%})  write {write:4.1f} s ({write / total:4.0%})",
                flush=True,
            )
            for source in sources:
                source.unlink()
    finally:
        shutil.rmtree(out, ignore_errors=True)


def disk_needed(archive: Path) -> dict[str, int]:
    """Scratch bytes each variant holds at its peak besides the Parquet outputs (from the member sizes)."""
    from inat_assets.dwca.archive import inspect_archive
    from inat_assets.dwca.convert import CHUNK_BYTES, MAX_LINE_BYTES

    info = inspect_archive(archive)
    return {
        "original": info.observations.size + info.media.size,  # unzip extracts both members
        "ours-stream": 0,  # named pipes; chunks in flight are in memory
        # Chunk files waiting for DuckDB: one per feeder slot plus the one being written, each at most
        # a chunk and a record long; deleted once read.
        "ours-extract": (_feeder_slots() + 1) * (CHUNK_BYTES + MAX_LINE_BYTES),
    }


def _feeder_slots() -> int:
    import duckdb

    from inat_assets.dwca.convert import _ChunkPipeline

    with duckdb.connect() as con:
        return _ChunkPipeline.feeder_slots(con)


def run_variant(variant: str, archive: Path, out: Path) -> dict[str, float]:
    """Runs inside the child process."""
    import duckdb

    started = time.monotonic()
    if variant == "original":
        extracted = out / "extracted"
        subprocess.run(["unzip", "-q", "-o", str(archive), "observations.csv", "media.csv", "-d", str(extracted)], check=True)
        unzipped = time.monotonic()
        with duckdb.connect() as con:
            for table in ("observations", "media"):
                con.execute(
                    f"COPY (SELECT * FROM read_csv('{extracted}/{table}.csv', AUTO_DETECT=TRUE)) "
                    f"TO '{out}/{table}.parquet' (FORMAT PARQUET)"
                )
        shutil.rmtree(extracted)
        return {"unzip_s": unzipped - started, "duckdb_s": time.monotonic() - unzipped}

    from inat_assets.dwca.archive import inspect_archive
    from inat_assets.dwca.convert import configure_duckdb, convert_member

    info = inspect_archive(archive)
    rows = {}
    with duckdb.connect() as con:
        configure_duckdb(con, temp_dir=out / "scratch")  # the defaults: 1 GB memory limit, all cores
        for member in (info.observations, info.media):
            result = convert_member(
                con, archive, member, out / f"{member.table}.parquet", out / f"{member.table}.rejects.parquet",
                out / "scratch", read_mode=variant.removeprefix("ours-"),  # type: ignore[arg-type]
            )  # fmt: skip
            rows[member.table] = result.rows
    return {"observations": rows["observations"], "media": rows["media"]}


def measure(variant: str, archive: Path, workdir: Path) -> tuple[float, float, dict]:
    out = Path(tempfile.mkdtemp(prefix=f"{variant}-", dir=workdir))
    # The previous run's writes go to disk now, outside the timing, not into the next run's time
    # (the original's unzip writes 6.5 GB; its own duckdb phase or the next variant paid the writeback).
    os.sync()
    started = time.monotonic()
    child = subprocess.Popen(
        [sys.executable, __file__, "--child", variant, "--archive", str(archive), "--out", str(out)],
        stdout=subprocess.PIPE,
        text=True,
    )
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.monotonic() - started
    detail = json.loads(child.stdout.read() or "{}") if child.stdout else {}
    shutil.rmtree(out, ignore_errors=True)
    if status != 0:
        raise SystemExit(f"{variant} failed (status {status})")
    detail["cpu_s"] = usage.ru_utime + usage.ru_stime
    return seconds, usage.ru_maxrss / 1024, detail  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--observations", type=int, default=5_000_000)
    parser.add_argument("--media-per-observation", type=float, default=2.0, help="mean photos per observation")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--malformed",
        action="store_true",
        help="include the sample's malformed lines (the original workflow then aborts on the first one)",
    )
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--workdir", type=Path, default=Path("/work/bench-data"), help="archive cache and outputs (not in git)")
    parser.add_argument("--stages", action="store_true", help="only the breakdown of where the time goes")
    parser.add_argument("--stage-memory", default="8GB", help="DuckDB memory limit for --stages (the parsed table is held)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--archive", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_variant(args.child, args.archive, args.out)))
        return

    args.workdir.mkdir(parents=True, exist_ok=True)
    archive = build_archive(args.workdir, args.observations, args.media_per_observation, args.malformed)
    if args.stages:
        stages(archive, args.workdir, args.stage_memory)
        return
    variants = args.variants.split(",")
    results: dict[str, list[tuple[float, float, float]]] = {v: [] for v in variants}
    for round_no in range(1, args.rounds + 1):
        for variant in variants:  # interleaved, so drift in machine load hits every variant alike
            seconds, rss_mb, detail = measure(variant, archive, args.workdir)
            results[variant].append((seconds, rss_mb, detail["cpu_s"]))
            print(f"round {round_no} {variant:13s} {seconds:7.1f} s  peak RSS {rss_mb:6.0f} MB  {detail}", flush=True)

    # Medians of the per-round ratios as well: each round runs the variants back to back, so a
    # ratio within a round shares its machine load (2 shared cores: rounds drifted 251-423 s).
    print(
        f"\n{'variant':14s} {'median s':>9s} {'cpu s':>7s} {'peak RSS MB':>12s} {'x original':>11s} "
        f"{'per-round x':>11s} {'cpu x':>6s} {'scratch GB':>10s}"
    )
    base = statistics.median(s for s, _, _ in results["original"]) if "original" in results else None
    base_cpu = statistics.median(c for _, _, c in results["original"]) if "original" in results else None
    disk = disk_needed(archive)
    for variant, runs in results.items():
        median = statistics.median(s for s, _, _ in runs)
        cpu = statistics.median(c for _, _, c in runs)
        ratio = f"{median / base:.2f}" if base else "-"
        paired = (
            f"{statistics.median(r[0] / o[0] for r, o in zip(runs, results['original'], strict=True)):.2f}"
            if base
            else "-"
        )
        cpu_ratio = f"{cpu / base_cpu:.2f}" if base_cpu else "-"
        print(
            f"{variant:14s} {median:9.1f} {cpu:7.1f} {max(r for _, r, _ in runs):12.0f} {ratio:>11s} {paired:>11s} "
            f"{cpu_ratio:>6s} {disk[variant] / 1e9:10.2f}"
        )


if __name__ == "__main__":
    main()
