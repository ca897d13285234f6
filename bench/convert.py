"""Archive zip -> observations.parquet + media.parquet: the original workflow against ours, side by side.

    .venv/bin/python bench/convert.py                      # 2M observations, 4M media rows, 3 rounds
    .venv/bin/python bench/convert.py --observations 200000 --rounds 1

Builds a synthetic archive with the sample generator (kept in --workdir between runs), then runs,
each in its own subprocess so that peak RSS is measured per variant (os.wait4):

- original: `unzip` the archive, then DuckDB `COPY (SELECT * FROM read_csv(<member>, AUTO_DETECT=TRUE))
  TO '<table>.parquet' (FORMAT PARQUET)` for both members (the original instructions' statements);
- ours-stream / ours-extract: `convert_member` with default settings (read mode forced).

The archive has no malformed lines by default: the original statements abort on the first one
(`--malformed` shows that), while ours set them aside.

Prints wall seconds (median over rounds), peak RSS, and each variant's ratio to the original.
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
    parser.add_argument("--observations", type=int, default=2_000_000)
    parser.add_argument("--media-per-observation", type=float, default=2.0, help="mean photos per observation")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--malformed",
        action="store_true",
        help="include the sample's malformed lines (the original workflow then aborts on the first one)",
    )
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--workdir", type=Path, default=Path("bench/out"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--archive", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_variant(args.child, args.archive, args.out)))
        return

    args.workdir.mkdir(parents=True, exist_ok=True)
    archive = build_archive(args.workdir, args.observations, args.media_per_observation, args.malformed)
    variants = args.variants.split(",")
    results: dict[str, list[tuple[float, float, float]]] = {v: [] for v in variants}
    for round_no in range(1, args.rounds + 1):
        for variant in variants:  # interleaved, so drift in machine load hits every variant alike
            seconds, rss_mb, detail = measure(variant, archive, args.workdir)
            results[variant].append((seconds, rss_mb, detail["cpu_s"]))
            print(f"round {round_no} {variant:13s} {seconds:7.1f} s  peak RSS {rss_mb:6.0f} MB  {detail}", flush=True)

    print(f"\n{'variant':14s} {'median s':>9s} {'cpu s':>7s} {'peak RSS MB':>12s} {'x original':>11s} {'cpu x':>6s}")
    base = statistics.median(s for s, _, _ in results["original"]) if "original" in results else None
    base_cpu = statistics.median(c for _, _, c in results["original"]) if "original" in results else None
    for variant, runs in results.items():
        median = statistics.median(s for s, _, _ in runs)
        cpu = statistics.median(c for _, _, c in runs)
        ratio = f"{median / base:.2f}" if base else "-"
        cpu_ratio = f"{cpu / base_cpu:.2f}" if base_cpu else "-"
        print(f"{variant:14s} {median:9.1f} {cpu:7.1f} {max(r for _, r, _ in runs):12.0f} {ratio:>11s} {cpu_ratio:>6s}")


if __name__ == "__main__":
    main()
