"""Training dataset at scale: index and WebDataset shards of N synthetic photos, with peak RSS.

    .venv/bin/python bench/training.py                         # 1,000,000 photos, 10,000 classes
    .venv/bin/python bench/training.py --photos 100000 --keep

Generates (kept in --workdir between runs) observations.parquet and fetch.parquet with the fetch
list's columns, one tiny real JPEG file per photo (~300 bytes; 4 KiB on disk each) and one manifest
per batch of --batch-span photo ids (1 % failed, 0.1 % exact duplicates). Then runs, each in its own
subprocess so that peak RSS is its own (os.wait4):

- index:  build_training_dataset with every export off and no plots (index, splits, ATTRIBUTION.csv, card);
- full:   the same plus WebDataset shards (1 GB), COCO JSON and the plots.

DuckDB gets --memory-limit and a spill folder, as the project's DuckDB resource gives it.

Measured 2026-11-27 on the shared 2-core machine (load average ~8 from other jobs), 1,000,000
photos (825,124 kept with the research preset; 1 % failed, 683 duplicates), 10,000 classes:
- --memory-limit 1GB:   index 135.5 s, peak RSS 1,400 MiB; full 651.6 s, peak RSS 1,395 MiB
- --memory-limit 512MB: index 127.5 s, peak RSS 662 MiB;   full 402.8 s, peak RSS 664 MiB
  (stages of the full run: select 11.5, splits 14.2, index 63.2, attribution 6.0, webdataset 240.4
  for 6 shards / 3.5 GB incl. train_mini, coco 63.2, plots 3.9 s)
- --memory-limit 256MB: the index COPY (a join of four inputs sorted by split) runs out of memory.
Peak RSS follows DuckDB's limit, not the photo count: the exports stream the index in batches.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LICENCES = "['CC0', 'CC-BY', 'CC-BY', 'CC-BY', 'CC-BY-NC', 'CC-BY-SA']"


def generate(workdir: Path, photos: int, classes: int, batch_span: int, image_bytes: int = 300) -> None:
    import duckdb

    from inat_assets.testing.mirror import served_bytes

    marker = workdir / "generated.json"
    if marker.exists() and json.loads(marker.read_text()) == [photos, classes, batch_span, image_bytes]:
        return
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    started = time.monotonic()
    observations = photos // 2
    with duckdb.connect() as con:
        con.execute(
            f"""COPY (SELECT i AS id, 'https://www.inaturalist.org/observations/' || i AS occurrenceID,
                         'user' || (hash(i) % {max(classes // 2, 1)}) AS inaturalistLogin, 'User ' || i AS recordedBy
                  FROM range({observations}) t(i)) TO '{workdir / "observations.parquet"}' (FORMAT parquet)"""
        )
        # Two photos per observation; taxa spread as a long tail (class k gets weight ~1/k).
        con.execute(
            f"""COPY (
                SELECT p AS photo_id, p // 2 AS observation_id, 'https://static.example.org/photos/' || p || '/original.jpg' AS url,
                       'image/jpeg' AS format, l AS license,
                       CASE l WHEN 'CC0' THEN 'http://creativecommons.org/publicdomain/zero/1.0/'
                              ELSE 'http://creativecommons.org/licenses/' || lower(substr(l, 4)) || '/4.0/' END AS license_url,
                       'Holder ' || (p // 2) AS rights_holder, 'Creator ' || (p // 2) AS creator,
                       'Genus' || (t // 10) || ' species' || t AS scientific_name, t AS taxon_id, 'species' AS taxon_rank,
                       'Plantae' AS kingdom, 'Tracheophyta' AS phylum, 'Magnoliopsida' AS "class", 'Order' || (t // 1000) AS "order",
                       'Family' || (t // 100) AS family, 'Genus' || (t // 10) AS genus, 'US' AS country_code,
                       DATE '2024-01-01' AS event_date, '2024-01-01' AS event_date_raw, 'wild' AS captive
                FROM (SELECT p, {LICENCES}[1 + (hash(p * 7) % 6)::INTEGER] AS l,
                             least(floor(exp(((hash((p // 2) * 13) % 1000000) / 1000000.0) * ln({classes})))::BIGINT - 1, {classes - 1}) AS t
                      FROM range({photos}) r(p))
                ORDER BY photo_id
            ) TO '{workdir / "fetch.parquet"}' (FORMAT parquet, ROW_GROUP_SIZE 32768)"""
        )
    photo_dir, manifests = workdir / "photos", workdir / "manifests"
    manifests.mkdir()
    for start in range(0, photos, batch_span):
        batch = f"batch-{start // batch_span:06d}"
        folder = photo_dir / batch
        folder.mkdir(parents=True)
        for p in range(start, min(start + batch_span, photos)):
            (folder / f"{p}.jpg").write_bytes(served_bytes(p, image_bytes=image_bytes))
        with duckdb.connect() as con:
            con.execute(
                f"""COPY (SELECT p AS photo_id, 'https://static.example.org/photos/' || p || '/original.jpg' AS url,
                             '{folder}/' || p || '.jpg' AS path,
                             CASE WHEN p % 100 = 37 THEN 'failed_permanent' ELSE 'ok' END AS status, 200 AS http_status,
                             {image_bytes}::BIGINT AS bytes, sha256((CASE WHEN p % 1000 = 5 THEN p - 1 ELSE p END)::VARCHAR) AS sha256,
                             'image/jpeg' AS content_type, 1 AS attempts, NULL::VARCHAR AS error, 0.01 AS seconds,
                             8 AS width, 8 AS height
                      FROM range({start}, {min(start + batch_span, photos)}) r(p))
                TO '{manifests / (batch + ".parquet")}' (FORMAT parquet)"""
            )
    marker.write_text(json.dumps([photos, classes, batch_span, image_bytes]))
    print(f"generated {photos:,} photos in {time.monotonic() - started:.0f} s", flush=True)


def run_variant(workdir: Path, variant: str, memory_limit: str, threads: int) -> dict:
    import duckdb

    from inat_assets.training import TrainingOptions, build_training_dataset

    exports = (
        {"coco": False}
        if variant == "index"
        else {"coco": True, "webdataset": {"shard_max_bytes": 1_000_000_000}}
    )
    options = TrainingOptions.model_validate({"licences": {"preset": "research"}, "exports": exports, "mini_per_class": 50})
    out = workdir / f"out-{variant}"
    spill = Path(tempfile.mkdtemp(prefix="spill-", dir=workdir))
    started = time.monotonic()
    with duckdb.connect(config={"memory_limit": memory_limit, "threads": threads, "temp_directory": str(spill)}) as con:
        result = build_training_dataset(
            con, options, workdir / "fetch.parquet", workdir / "observations.parquet", workdir / "manifests", out,
            plots=variant != "index",
        )  # fmt: skip
    seconds = time.monotonic() - started
    shutil.rmtree(spill, ignore_errors=True)
    return {"variant": variant, "seconds": round(seconds, 1), "rows": result.rows, "classes": result.classes,
            "shards": len(result.exports.get("webdataset", [])), "stages": result.seconds}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=1_000_000)
    parser.add_argument("--classes", type=int, default=10_000)
    parser.add_argument("--batch-span", type=int, default=10_000)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "inat-bench-training")
    parser.add_argument("--memory-limit", default="1GB")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the generated inputs and outputs")
    parser.add_argument("--generate-only", action="store_true", help="only generate the inputs (kept)")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant in this process
    args = parser.parse_args()
    workdir = args.workdir / f"{args.photos}"
    if args.variant:
        print(json.dumps(run_variant(workdir, args.variant, args.memory_limit, args.threads)))
        return 0
    generate(workdir, args.photos, args.classes, args.batch_span)
    if args.generate_only:
        return 0
    for variant in ("index", "full"):
        cmd = [sys.executable, __file__, "--photos", str(args.photos), "--workdir", str(args.workdir),
               "--memory-limit", args.memory_limit, "--threads", str(args.threads), "--variant", variant]  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        out = proc.stdout.read() if proc.stdout else ""
        if status != 0:
            print(f"{variant}: failed (status {status})", file=sys.stderr)
            return 1
        report = json.loads(out.strip().splitlines()[-1])
        print(f"{variant:>6}: {report['seconds']:>7.1f} s  peak RSS {usage.ru_maxrss / 1024:,.0f} MiB  "
              f"{report['rows']:,} photos, {report['classes']:,} classes, {report['shards']} shards; seconds per stage {report['stages']}")  # fmt: skip
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
