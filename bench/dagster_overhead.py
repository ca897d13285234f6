"""What one Dagster partition run of ``<dataset>/image_batches`` costs around the download itself.

    .venv/bin/python bench/dagster_overhead.py                     # sample batch + 5,000 photos at 50 ms, x3
    .venv/bin/python bench/dagster_overhead.py --photos 20000 --repeat 5

A batch run is what the README, the UI and the batch-fill sensor launch: a fresh process that
imports Dagster, loads ``inat_assets.definitions``, opens the instance, writes the run's events and
runs the asset body. Here it is ``dagster asset materialize -m inat_assets.definitions --select
plants/image_batches --partition KEY`` (the README's command), with the definitions' in-process
executor and, as the baseline, with Dagster's multiprocess executor (the step in a second process;
``bench/multiprocess_definitions.py``), which the definitions used before. Per run:

    overhead = wall time of the command - the engine's own seconds (the ``seconds`` the asset records)

Two batches:

- the bundled sample (``inat-assets demo``'s span of 500 ids: ~50 photos per batch);
- a realistic one: N photos (``--photos``, default 5,000) in one batch from the local mirror at
  ``--latency-ms`` (default 50: real hosts are 20-200 ms away). The download engine's rate inside
  that run (photos / engine seconds) gives the time of a 50,000-photo batch (the old default) and
  of a batch of ``DEFAULT_PHOTOS_PER_BATCH``, without downloading 50,000 photos: the overhead does
  not grow with the batch (printed for two sizes to show it), the download time does, linearly.

Also the parts of the fixed cost, each a fresh process: Python start, ``import dagster``, and
loading the definitions. Medians of ``--repeat``; the machine is shared, so wall times are noisy;
the parts' CPU seconds are the steadier figures.

Measured 2026-11-27 on the 2-core dev VM while ~7 other jobs loaded it (load average 12-14: wall
times are several times the CPU times; the ratios held between that run and one at load ~6), medians
of 3, 5,000 photos at 50 ms:

    fixed parts          python start 0.03 s CPU; import dagster 1.2 s CPU; load the definitions 3.45 s
                         CPU (1.1 s of it importing dagster_aws, found by the dg components registry)
    sample batch         73 photos, engine 0.7 s: run overhead 32 s multiprocess (8.4 s CPU),
                         18 s in-process (4.7 s CPU): 46x / 27x the batch, whatever the batch size rule
    5,000 photos         engine alone 1.19 ms CPU per photo; overhead per run 32 s multiprocess,
                         18 s in-process, with the engine at 160 / 139 photos/s inside the run
    share of a batch     50,000 photos: 10.3 % multiprocess, 5.0 % in-process (load ~6: 10.4 %, 4.2 %)
                         250,000 photos: 2.1 % multiprocess, 1.0 % in-process

Hence ``DEFAULT_PHOTOS_PER_BATCH = 250_000`` (was 50,000), and the in-process executor for batch runs
wherever it can be chosen (the batch-fill sensor already asks for it): it halves the overhead.

Measured again 2026-12-05 on the quiet 2-core VM (AMD EPYC), ``--photos 50000``, medians of 3. The
engine had become 2-3x faster (url_parse.py and the rest of issue 9), so the same fixed cost weighed
more: with 250,000-photo batches it was 3.5 % in-process (overhead 3.34 s, engine at 2,731 photos/s).
Two changes: the definitions no longer build the component tree's root, which imported every
installed component library for dg's catalogue (loading them 2.61 -> 1.42 s; overhead 3.34 -> 2.91 s),
and batches of 500,000 photos:

    fixed parts          python start 0.03 s; import dagster 0.87 s; load the definitions 1.42 s wall (1.53 s CPU)
    sample batch         73 photos, engine 0.09 s: run overhead 5.2 s multiprocess, 2.9 s in-process
    50,000 photos        engine alone 0.54 ms CPU per photo, 2,913 photos/s; overhead per run 5.42 s
                         multiprocess, 2.91 s in-process, the engine at 2,955 / 2,773 photos/s inside the run
    share of a batch     50,000 photos: 32 % multiprocess, 16 % in-process
                         500,000 photos: 3.2 % multiprocess, 1.6 % in-process (the definitions' executor)

What is left of the 2.9 s is Dagster's own start (py-spy of a sample run: importing dagster 0.9 s, its
storage and CLI modules 0.8 s, the definitions' imports 0.8 s, the run itself 0.6 s).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.resources import files
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(Path(__file__).resolve().parent)]

import duckdb  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance  # noqa: E402
from download import start_mirror  # noqa: E402  (bench/download.py: the mirror in its own process)

from inat_assets.batches import DEFAULT_PHOTOS_PER_BATCH, batch_key, record_span  # noqa: E402
from inat_assets.dwca.convert import sql_string  # noqa: E402
from inat_assets.instance import open_instance  # noqa: E402
from inat_assets.storage import DataStore  # noqa: E402

DAGSTER = str(Path(sys.executable).with_name("dagster"))
ASSET = AssetKey(["plants", "image_batches"])
PARTITIONS = "plants_image_batches"
SIZE = "original"  # the shipped plants declaration's photo size
OLD_DEFAULT = 50_000  # photos per batch before this measurement
GOAL = 0.02  # issue 9: Dagster's share of a batch run at most 2 %


def child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of one command (its children included)."""
    cpu0, t0 = child_cpu(), time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t0, child_cpu() - cpu0
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{done.stdout[-1500:]}\n{done.stderr[-3000:]}")
    return wall, cpu


def environment(work: Path, mirror: str, span: int, sample: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INAT_")}
    return {
        **env,
        "PYTHONPATH": str(REPO),
        "DAGSTER_HOME": str(work / "dagster_home"),
        "INAT_DATA_DIR": str(work / "data"),
        "INAT_DWCA_SOURCE": str(sample),
        "INAT_PHOTO_MIRROR": mirror,
        "INAT_ALLOWED_HOSTS": "127.0.0.1:*",
        "INAT_BATCH_SPAN": str(span),
        "INAT_MAX_REJECT_SHARE": "0.02",  # the sample's deliberate malformed lines
    }


def partition_run(env: dict[str, str], key: str, in_process: bool) -> dict[str, float]:
    """One `dagster asset materialize` of a batch that is not on disk yet; its costs and the engine's."""
    store = DataStore.from_setting(env["INAT_DATA_DIR"])
    shutil.rmtree(store.photos_dir(SIZE, key), ignore_errors=True)
    store.manifest("plants", key).unlink(missing_ok=True)
    # The definitions run in-process; the multiprocess baseline is the same definitions with the other executor.
    source = ["-m", "inat_assets.definitions"] if in_process else ["-f", str(Path(__file__).with_name(
        "multiprocess_definitions.py"))]
    cmd = [DAGSTER, "asset", "materialize", *source, "--select", ASSET.to_user_string(), "--partition", key]
    wall, cpu = timed(cmd, env)
    instance = DagsterInstance.from_config(env["DAGSTER_HOME"])
    try:
        (record,) = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=ASSET, asset_partitions=[key]), limit=1
        ).records
        meta = {k: getattr(v, "value", v) for k, v in record.asset_materialization.metadata.items()}  # type: ignore[union-attr]
        events = len(instance.all_logs(record.run_id))
    finally:
        instance.dispose()
    engine = float(meta["seconds"])
    return {"wall": wall, "cpu": cpu, "engine": engine, "ok": float(meta["ok"]), "events": events,
            "overhead": wall - engine}


def engine_alone(base: str, photos: int, out: Path) -> dict[str, float]:
    """The same download without Dagster: the engine in this process, with image_batches' defaults."""
    from inat_assets.assets.images import ImageBatchConfig
    from inat_assets.download import PhotoTask, run_download
    from inat_assets.resources import inat_resources

    shutil.rmtree(out, ignore_errors=True)
    defaults = ImageBatchConfig()
    downloader = inat_resources(environ={}, data_dir=str(out), photo_mirror=base, allowed_hosts="127.0.0.1:*")
    config = downloader["downloader"].download_config(  # type: ignore[attr-defined]
        retries=defaults.retries, try_other_host=defaults.try_other_host, processes=defaults.processes)
    tasks = (PhotoTask(i, f"{base}/photos/{i}/original.jpg") for i in range(1, photos + 1))
    own = resource.getrusage(resource.RUSAGE_SELF)
    cpu0, t0 = own.ru_utime + own.ru_stime + child_cpu(), time.perf_counter()
    summary = run_download(tasks, out / "photos", out / "manifest.parquet", config, total=photos)
    own = resource.getrusage(resource.RUSAGE_SELF)
    cpu = own.ru_utime + own.ru_stime + child_cpu() - cpu0
    shutil.rmtree(out, ignore_errors=True)
    return {"wall": time.perf_counter() - t0, "cpu": cpu, "ok": float(summary.ok)}


def parts(env: dict[str, str], repeat: int) -> dict[str, tuple[float, float]]:
    steps = {
        "python start": "pass",
        "import dagster": "import dagster",
        "load inat_assets.definitions": "import inat_assets.definitions",
    }
    out = {}
    for name, code in steps.items():
        runs = [timed([sys.executable, "-c", code], env) for _ in range(repeat)]
        out[name] = (statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs))
    return out


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def sample_batch(work: Path, repeat: int) -> dict[str, dict[str, float]]:
    """The bundled sample through the README's commands; then its first batch, `repeat` times per executor."""
    sample = Path(str(files("inat_assets") / "sample_data" / "sample-dwca.zip"))
    mirror, base = start_mirror(0, 40_000)
    try:
        env = environment(work, base, 500, sample)
        open_instance(env["DAGSTER_HOME"]).dispose()  # the data dir's instance, with the packaged dagster.yaml
        timed([DAGSTER, "asset", "materialize", "-m", "inat_assets.definitions", "--select",
               "dwca_archive,observations_parquet,media_parquet,plants/fetch_parquet"], env)
        fetch_list = sql_string(DataStore.from_setting(env["INAT_DATA_DIR"]).fetch_list("plants"))
        with duckdb.connect() as con:  # the fullest batch of the sample
            (index,) = con.execute(f"SELECT photo_id // 500 FROM read_parquet({fetch_list}) GROUP BY 1 "
                                   "ORDER BY count(*) DESC, 1 LIMIT 1").fetchone()  # type: ignore[misc]
        key = batch_key(int(index) * 500, 500)
        return {executor: medians([partition_run(env, key, executor == "in-process") for _ in range(repeat)])
                for executor in ("multiprocess", "in-process")}
    finally:
        mirror.terminate()
        mirror.wait()


def realistic_batch(work: Path, photos: int, latency_ms: float, repeat: int) -> dict[str, dict[str, float]]:
    """`photos` photos in one batch (a synthetic fetch list on the mirror), `repeat` runs per executor."""
    mirror, base = start_mirror(latency_ms, 40_000)
    try:
        span = 10 ** len(str(photos))  # ids 1..photos all in batch-000000
        env = environment(work, base, span, Path("/nonexistent/not-used-by-image-batches.zip"))
        store = DataStore.from_setting(env["INAT_DATA_DIR"])
        store.fetch_list("plants").parent.mkdir(parents=True, exist_ok=True)
        ids = list(range(1, photos + 1))
        pq.write_table(pa.table({"photo_id": ids, "url": [f"{base}/photos/{i}/original.jpg" for i in ids]}),
                       store.fetch_list("plants"))
        record_span(store.batch_state(), span)
        key = batch_key(1, span)
        instance = open_instance(env["DAGSTER_HOME"])
        instance.add_dynamic_partitions(PARTITIONS, [key])
        instance.dispose()
        results: dict[str, list[dict[str, float]]] = {"engine alone": [], "multiprocess": [], "in-process": []}
        for _ in range(repeat):  # interleaved, so the machine's load changes hit every variant alike
            results["engine alone"].append(engine_alone(base, photos, work / "engine-alone"))
            for executor in ("multiprocess", "in-process"):
                results[executor].append(partition_run(env, key, executor == "in-process"))
        return {name: medians(runs) for name, runs in results.items()}
    finally:
        mirror.terminate()
        mirror.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=5000, help="photos in the realistic batch (default 5,000)")
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-sample", action="store_true")
    args = parser.parse_args(argv)
    print(f"{os.cpu_count()} cores, medians of {args.repeat}; overhead = wall of the run - the engine's seconds")

    with tempfile.TemporaryDirectory(prefix="inat-bench-dagster-") as tmp:
        work = Path(tmp)
        print("\nfixed parts, each a fresh process:        wall s    CPU s")
        for name, (wall, cpu) in parts(environment(work, "", 1, Path()), args.repeat).items():
            print(f"  {name:<38} {wall:7.2f}  {cpu:7.2f}")

        if not args.skip_sample:
            print("\nthe bundled sample, its fullest batch (span 500):")
            for executor, r in sample_batch(work / "sample", args.repeat).items():
                print(f"  {executor:<13} {r['ok']:5.0f} photos  run {r['wall']:6.2f} s (CPU {r['cpu']:5.2f} s), engine "
                      f"{r['engine']:5.2f} s, overhead {r['overhead']:5.2f} s = {r['overhead'] / r['engine']:6.1f}x the "
                      f"batch; {r['events']:.0f} events")

        print(f"\na realistic batch: {args.photos:,} photos at {args.latency_ms:g} ms latency, 40 KB each:")
        results = realistic_batch(work / "real", args.photos, args.latency_ms, args.repeat)
        alone = results.pop("engine alone")
        cpu_per_photo = alone["cpu"] / alone["ok"]
        print(f"  engine alone  {alone['wall']:6.2f} s, {alone['ok'] / alone['wall']:,.0f} photos/s, "
              f"{cpu_per_photo * 1e3:.2f} ms CPU per photo")
        for executor, r in results.items():
            rate = r["ok"] / r["engine"]
            print(f"  {executor:<13} run {r['wall']:6.2f} s (CPU {r['cpu']:5.2f} s), engine {r['engine']:6.2f} s = "
                  f"{rate:,.0f} photos/s; overhead {r['overhead']:5.2f} s; CPU beyond the engine alone "
                  f"{r['cpu'] - alone['cpu']:5.2f} s; {r['events']:.0f} events")
            for batch in sorted({OLD_DEFAULT, DEFAULT_PHOTOS_PER_BATCH}):
                seconds = batch / rate
                share = r["overhead"] / seconds
                flag = "within" if share <= GOAL else "above"
                print(f"      a {batch:,}-photo batch: {seconds:7.1f} s of download; the run's overhead is "
                      f"{100 * share:5.2f} % of it ({flag} the {GOAL:.0%} goal)")
            print(f"      photos per batch for {GOAL:.0%}: {r['overhead'] / GOAL * rate:,.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
