"""How long the full archive takes on N workers, and what limits it: a projection from measured figures.

    .venv/bin/python bench/projection.py                       # measure the run queue (3 rounds), then project
    .venv/bin/python bench/projection.py --queue-json q.json   # reuse a queue measurement written by --write-json
    .venv/bin/python bench/projection.py --inputs figures.json --workers 1,4,16,64

Two parts:

1. MEASURED here: what the Dagster daemon sustains on this machine. A real `dagster-daemon run` on a
   temporary DAGSTER_HOME (SQLite, the queued run coordinator, the default run launcher: one process per
   run, as on a single machine) and a code location with one trivial asset over dynamic partitions. One
   sensor tick requests N partition runs at once, as `<dataset>_batch_fill` does; the bench reads the
   runs' events (enqueued, dequeued, started, succeeded) and reports: runs enqueued per second (the
   sensor's submission), runs dequeued and launched per second while slots are free, the per-run start
   latency and CPU seconds of a run process, the daemon's own CPU per run, and end-to-end runs/s. Rounds
   are interleaved per setting; medians are printed (the machine has 2 cores shared with other jobs, so
   wall times are noisy: CPU seconds per run are the steadier figure).

2. PROJECTED from inputs: per-worker download rate and CPU per image (bench/download.py), conversion
   rate (bench/convert.py), client CPU per photo PUT to the store (bench/object_store.py), photo sizes,
   the share of photos on the budgeted host. Defaults are today's measurements on this machine or published limits, each labelled
   in the output; override any with a flag or with ``--inputs FILE`` (a JSON object with the same keys
   as the flags, dashes as underscores), which is how the other benches' results are fed in.

The model, per photo size: every worker runs one image batch at a time (INAT_BATCH_SPAN photos).
A worker's rate is the least of its latency-bound rate (measured), its CPU-bound rate (cores / CPU
per image, download + upload) and its network link (bytes per photo). Then the whole run is capped by:

- ``static.inaturalist.org``: one IP's budget (iNaturalist: 5 req/s, 5 GB/hour, 24 GB/day per IP; the
  downloader holds 4.5 GB/hour and 22 GB/day), shared by all workers behind that IP; it does not grow
  with workers (more IPs to get around it is exactly what iNaturalist asks people not to do);
- the open-data bucket: S3 serves 5,500 GET/s per prefix; photos are under ``photos/<id>/``, so this is
  a per-prefix limit that a wide download spreads over many prefixes; counted here as one prefix's
  worth (a conservative floor: S3 answers 503 SlowDown before it repartitions);
- the store: S3 takes 3,500 PUT/s per prefix; each batch writes under its own
  ``photos/<size>/<batch>/`` prefix, but a fresh bucket starts as one partition, so the floor is
  3,500 PUT/s until S3 splits it under sustained load;
- the cluster's egress (``--egress-gbps``, all workers share it);
- the run queue: batches / (runs per second the daemon launches), plus each run's start-up.

The conversion (archive -> tables -> fetch list) is one run on one machine before any batch; it does
not shrink with workers and is added in front.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from inat_assets.batches import DEFAULT_PHOTOS_PER_BATCH

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent

# --- 1. the run queue, measured ----------------------------------------------------------------------

# The code location of the measurement: one asset over dynamic partitions and one sensor that requests
# every partition in its first tick, the way inat_assets.automation.batch_fill_sensor requests batches
# (RunRequest per partition, in-process executor). The asset body records the run process's own CPU
# seconds at that point: the cost of starting a run (imports, loading the code, storage), which is what
# every image batch pays before its first download.
BENCH_LOCATION = '''
import json, os, resource, time

import dagster as dg

PARTITIONS = dg.DynamicPartitionsDefinition(name="bench_batches")
RUNS = int(os.environ["QUEUE_BENCH_RUNS"])
OUT = os.environ["QUEUE_BENCH_OUT"]
IN_PROCESS = {"execution": {"config": {"in_process": {}}}}


@dg.asset(partitions_def=PARTITIONS)
def trivial(context: dg.AssetExecutionContext) -> None:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    with open(os.path.join(OUT, context.run_id + ".json"), "w") as f:
        json.dump({"cpu": usage.ru_utime + usage.ru_stime, "maxrss_kb": usage.ru_maxrss, "at": time.time()}, f)


@dg.sensor(
    asset_selection=[trivial], minimum_interval_seconds=1, default_status=dg.DefaultSensorStatus.RUNNING
)
def burst(context: dg.SensorEvaluationContext):
    if context.cursor:
        return dg.SkipReason("requested already")
    keys = [f"batch-{i:06d}" for i in range(RUNS)]
    return dg.SensorResult(
        run_requests=[dg.RunRequest(partition_key=k, run_config=IN_PROCESS) for k in keys],
        dynamic_partitions_requests=[PARTITIONS.build_add_request(keys)],
        cursor="done",
    )


defs = dg.Definitions(assets=[trivial], sensors=[burst])
'''


def _instance_yaml(max_concurrent_runs: int) -> str:
    # The packaged inat_assets/instance/dagster.yaml minus the pool (the trivial asset has none) and with
    # the run limit under test; the dequeue interval stays Dagster's default (5 s), as in the product.
    return textwrap.dedent(
        f"""\
        run_coordinator:
          module: dagster.core.run_coordinator
          class: QueuedRunCoordinator
        concurrency:
          runs:
            max_concurrent_runs: {max_concurrent_runs}
        telemetry:
          enabled: false
        """
    )


@dataclass
class QueueRound:
    runs: int
    max_concurrent_runs: int
    enqueue_runs_per_s: float  # the sensor tick's submissions
    dequeue_runs_per_s: float  # dequeue + launch while slots are free (first burst)
    launch_seconds: float  # median gap between consecutive launches within a burst
    start_latency_s: float  # median dequeue -> RUN_START (process start, code load)
    run_wall_s: float  # median RUN_START -> RUN_SUCCESS of the trivial asset
    end_to_end_runs_per_s: float  # runs / (first enqueue -> last success)
    run_cpu_s: float  # median CPU seconds of one run process up to the asset body
    run_rss_mb: float  # median peak RSS of a run process
    daemon_cpu_s_per_run: float  # daemon + code server CPU seconds / runs
    wall_s: float


def _tree_cpu(pid: int) -> float:
    import psutil

    total = 0.0
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system  # own CPU only: finished runs are counted by the runs
    return total


def _stop_group(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM to the daemon's own process group (started with start_new_session), then SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)


def measure_queue_round(runs: int, max_concurrent_runs: int, timeout: float, keep: Path | None = None) -> QueueRound:
    from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter

    root = Path(tempfile.mkdtemp(prefix="queue-bench-"))
    try:
        home, out, code = root / "home", root / "out", root / "code"
        for folder in (home, out, code):
            folder.mkdir()
        (home / "dagster.yaml").write_text(_instance_yaml(max_concurrent_runs))
        (code / "queue_bench_location.py").write_text(BENCH_LOCATION)
        env = {
            **os.environ,
            "DAGSTER_HOME": str(home),
            "QUEUE_BENCH_RUNS": str(runs),
            "QUEUE_BENCH_OUT": str(out),
            "PYTHONPATH": str(code),
        }
        log = (keep or root) / f"daemon-{max_concurrent_runs}-{time.time_ns()}.log"
        started = time.monotonic()
        with open(log, "wb") as log_file:
            daemon = subprocess.Popen(
                [str(VENV_BIN / "dagster-daemon"), "run", "-m", "queue_bench_location", "-d", str(code)],
                env=env,
                cwd=code,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: the runs it launches are stopped with it
            )
        daemon_cpu = 0.0
        try:
            instance = DagsterInstance.from_config(str(home))
            done = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}
            while True:
                if daemon.poll() is not None:
                    raise SystemExit(f"dagster-daemon exited ({daemon.returncode}); see {log}")
                records = instance.get_run_records(RunsFilter())
                finished = sum(1 for r in records if r.dagster_run.status in done)
                if len(records) >= runs and finished >= runs:
                    break
                if time.monotonic() - started > timeout:
                    raise SystemExit(f"{finished}/{runs} runs finished after {timeout:.0f} s; see {log}")
                daemon_cpu = max(daemon_cpu, _tree_cpu(daemon.pid))
                time.sleep(0.5)
            daemon_cpu = max(daemon_cpu, _tree_cpu(daemon.pid))
            failed = [r.dagster_run.run_id for r in records if r.dagster_run.status != DagsterRunStatus.SUCCESS]
            if failed:
                raise SystemExit(f"{len(failed)} runs did not succeed (e.g. {failed[0]}); see {log}")
            events: dict[str, dict[DagsterEventType, float]] = {}
            wanted = {
                DagsterEventType.RUN_ENQUEUED,
                DagsterEventType.RUN_STARTING,  # the daemon dequeued and launched it (no DEQUEUED event in 1.13)
                DagsterEventType.RUN_START,
                DagsterEventType.RUN_SUCCESS,
            }
            for record in records:
                run_id = record.dagster_run.run_id
                for entry in instance.all_logs(run_id, of_type=wanted):
                    events.setdefault(run_id, {})[entry.dagster_event.event_type] = entry.timestamp
            instance.dispose()
        finally:
            _stop_group(daemon)
        per_run = [json.loads(p.read_text()) for p in out.glob("*.json")]
        return summarize_round(runs, max_concurrent_runs, events, per_run, daemon_cpu, time.monotonic() - started)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def summarize_round(
    runs: int,
    max_concurrent_runs: int,
    events: Mapping[str, Mapping[object, float]],
    per_run: Sequence[Mapping[str, float]],
    daemon_cpu: float,
    wall: float,
) -> QueueRound:
    from dagster import DagsterEventType as E

    enq = sorted(e[E.RUN_ENQUEUED] for e in events.values())
    deq = sorted(e[E.RUN_STARTING] for e in events.values())
    ends = [e[E.RUN_SUCCESS] for e in events.values()]
    start_latency = [e[E.RUN_START] - e[E.RUN_STARTING] for e in events.values()]
    run_wall = [e[E.RUN_SUCCESS] - e[E.RUN_START] for e in events.values()]
    # The first burst: as many runs as there are slots are dequeued in one pass of the daemon; the gaps
    # between them are its launch cost per run (gaps over 1 s belong to later passes).
    burst = deq[: max(2, min(max_concurrent_runs, len(deq)))]
    gaps = [b - a for a, b in itertools.pairwise(deq) if b - a < 1.0]
    span_burst = burst[-1] - burst[0]
    return QueueRound(
        runs=runs,
        max_concurrent_runs=max_concurrent_runs,
        enqueue_runs_per_s=(len(enq) - 1) / (enq[-1] - enq[0]) if enq[-1] > enq[0] else math.inf,
        dequeue_runs_per_s=(len(burst) - 1) / span_burst if span_burst > 0 else math.inf,
        launch_seconds=statistics.median(gaps) if gaps else math.nan,
        start_latency_s=statistics.median(start_latency),
        run_wall_s=statistics.median(run_wall),
        end_to_end_runs_per_s=runs / (max(ends) - enq[0]),
        run_cpu_s=statistics.median(r["cpu"] for r in per_run),
        run_rss_mb=statistics.median(r["maxrss_kb"] for r in per_run) / 1024,
        daemon_cpu_s_per_run=daemon_cpu / runs,
        wall_s=wall,
    )


def measure_queue(runs: int, limits: Sequence[int], rounds: int, timeout: float) -> dict[str, dict[str, float]]:
    results: dict[int, list[QueueRound]] = {m: [] for m in limits}
    for round_no in range(1, rounds + 1):
        for limit in limits:  # interleaved, so drift in machine load hits every setting alike
            r = measure_queue_round(runs, limit, timeout)
            results[limit].append(r)
            print(
                f"round {round_no} max_concurrent_runs={limit:<3d} {r.wall_s:5.0f} s wall: enqueue {r.enqueue_runs_per_s:6.1f}/s, "
                f"dequeue {r.dequeue_runs_per_s:5.1f}/s, end-to-end {r.end_to_end_runs_per_s:5.2f} runs/s, "
                f"run start {r.start_latency_s:4.1f} s, run CPU {r.run_cpu_s:4.2f} s, daemon CPU/run {r.daemon_cpu_s_per_run:4.2f} s",
                flush=True,
            )
    summary: dict[str, dict[str, float]] = {}
    for limit, rows in results.items():
        summary[str(limit)] = {
            name: statistics.median(getattr(r, name) for r in rows)
            for name in asdict(rows[0])
            if name not in ("runs", "max_concurrent_runs")
        } | {"runs": rows[0].runs, "rounds": len(rows)}
    return summary


# --- 2. the projection ------------------------------------------------------------------------------

GB = 1e9


@dataclass(frozen=True)
class Figure:
    """One input of the projection: its value and where it came from (shown next to the table)."""

    value: float
    source: str


# Today's figures. "measured" = a bench script run on this 2-core VM (noisy: shared with other jobs);
# "published" = a documented limit; "estimate" = an assumption to replace with your own number.
DEFAULTS: dict[str, Figure] = {
    "photos": Figure(150e6, "estimate: research-grade archive mid-2026 (shared/reference/inat-dwca.md)"),
    "medium_bytes": Figure(10e12 / 150e6, "estimate: ~10 TB for 150 M medium photos (reference)"),
    "original_bytes": Figure(100e12 / 150e6, "estimate: ~100 TB for 150 M originals (reference)"),
    "static_share": Figure(
        0.05,
        "estimate: photos on static.inaturalist.org (licences outside the open-data bucket); measure yours "
        "with SELECT avg((url LIKE '%static.inaturalist.org%')::INT) FROM 'fetch.parquet'",
    ),
    "static_gb_per_hour": Figure(4.5, "product setting (iNaturalist: 5 GB/hour per IP)"),
    "static_gb_per_day": Figure(22.0, "product setting (iNaturalist: 24 GB/day per IP)"),
    "static_requests_per_s": Figure(5.0, "published: iNaturalist static host, per IP"),
    "s3_get_per_s": Figure(5500.0, "published: S3 GET/HEAD per prefix per second (open-data bucket)"),
    "store_put_per_s": Figure(3500.0, "published: S3 PUT per prefix per second (fresh bucket: one partition)"),
    "worker_cores": Figure(
        1.0, "product: a batch run downloads with 1 process (run config `processes`), its pod requests 1 CPU"
    ),
    "images_per_s": Figure(
        349.0,
        "measured: bench/download.py ours-1p (1 process), 50 ms latency, 40 KB, median of 3 (its docstring, "
        "2026-11-27, load 10-14: the wall rate follows the load; CPU per photo is the steadier figure)",
    ),
    "cpu_ms_per_image": Figure(
        1.0,
        "measured: bench/download.py ours-1p, 40 KB, 2026-11-27: 1.04 ms (50 ms) / 1.11 ms (0 ms) CPU per photo, "
        "all included (its SHA-256 of 40 KB too, ~0.1 ms, which the per-MB term adds again: slightly high)",
    ),
    "cpu_ms_per_mb": Figure(math.nan, "measured here: SHA-256 of the bytes (TLS decryption not included)"),
    "upload_cpu_ms_per_photo": Figure(
        2.6,
        "measured: bench/object_store.py, client CPU per photo PUT (ObjectWriter.write, botocore) on moto, "
        "40 KB, 16-64 in flight, median of 3 (3.2 ms with 1 in flight); 0 for a data dir on a local disk",
    ),
    "worker_link_gbps": Figure(1.0, "estimate: network link per worker"),
    "egress_gbps": Figure(10.0, "estimate: the cluster's shared egress (NAT) to the internet"),
    "batch_photos": Figure(
        float(DEFAULT_PHOTOS_PER_BATCH),
        "product default: INAT_BATCH_SPAN aims at inat_assets.batches.DEFAULT_PHOTOS_PER_BATCH photos per batch",
    ),
    "convert_rows_per_s": Figure(
        15e6 / 232.5,
        "measured: bench/convert.py ours-stream, 5M observations + ~10M media rows in 232.5 s (81.5 s CPU), "
        "median of 3, 2026-11-27 at load 10-15 on 2 cores; extrapolated linearly",
    ),
    "archive_rows": Figure(208e6 + 350e6, "estimate: 208 M observations + ~350 M media rows (reference)"),
    "fetch_list_photos_per_cpu_s": Figure(
        335e3 / 2.82, "measured: bench/fetch_list.py, 335k photos in 2.82 s CPU (docstring); linear"
    ),
    "run_start_seconds": Figure(math.nan, "measured here: queued -> running of one run (default launcher)"),
    "daemon_cpu_s_per_run": Figure(
        math.nan, "measured here: daemon + code server CPU per run (sensor tick, queue, launch, monitoring)"
    ),
    "daemon_cores": Figure(1.0, "estimate: cores given to the daemon pod; the run queue sustains cores / CPU per run"),
}


def sha256_ms_per_mb(megabytes: int = 64, rounds: int = 3) -> float:
    """CPU milliseconds to hash one MB (the downloader hashes every photo it writes)."""
    import hashlib

    block = os.urandom(1 << 20)
    times = []
    for _ in range(rounds):
        started = time.process_time()
        digest = hashlib.sha256()
        for _ in range(megabytes):
            digest.update(block)
        times.append((time.process_time() - started) * 1000 / megabytes)
    return statistics.median(times)


@dataclass
class Row:
    size: str
    workers: int
    per_worker: float  # photos/s of one worker after its own limits and the run start-up
    worker_limit: str
    open_rate: float  # photos/s from the open-data bucket after the shared caps
    open_limit: str  # what caps the open-data part
    days_open: float
    days_static: float
    days_total: float
    limit: str  # what decides the total
    caps: dict[str, float] = field(default_factory=dict)


def prefix_hours(f: Mapping[str, float]) -> float:
    """Archive -> tables -> fetch list: one run on one machine before any batch (does not scale with workers)."""
    return (f["archive_rows"] / f["convert_rows_per_s"] + f["photos"] / f["fetch_list_photos_per_cpu_s"]) / 3600


def project(f: Mapping[str, float], size: str, workers: int) -> Row:
    photo_bytes = f[f"{size}_bytes"]
    cpu_ms = f["cpu_ms_per_image"] + f["cpu_ms_per_mb"] * photo_bytes / 1e6 + f["upload_cpu_ms_per_photo"]
    worker_limits = {
        "latency": f["images_per_s"],
        "CPU": f["worker_cores"] * 1000 / cpu_ms,
        "worker link": f["worker_link_gbps"] * 1e9 / 8 / photo_bytes,
    }
    worker_limit = min(worker_limits, key=lambda k: worker_limits[k])
    batch = f["batch_photos"]
    # A worker runs one batch at a time: each batch pays the run's start-up before its first photo.
    per_worker = batch / (f["run_start_seconds"] + batch / worker_limits[worker_limit])
    caps = {
        "workers": workers * per_worker,
        "egress": f["egress_gbps"] * 1e9 / 8 / photo_bytes,
        "open-data GET/s": f["s3_get_per_s"],
        "store PUT/s": f["store_put_per_s"],
        "run queue": f["daemon_cores"] / f["daemon_cpu_s_per_run"] * batch,
    }
    open_limit = min(caps, key=lambda k: caps[k])
    static_rate = min(
        f["static_requests_per_s"],
        f["static_gb_per_hour"] * GB / 3600 / photo_bytes,
        f["static_gb_per_day"] * GB / 86400 / photo_bytes,
    )
    days_open = f["photos"] * (1 - f["static_share"]) / caps[open_limit] / 86400
    days_static = f["photos"] * f["static_share"] / static_rate / 86400
    return Row(
        size=size,
        workers=workers,
        per_worker=per_worker,
        worker_limit=worker_limit,
        open_rate=caps[open_limit],
        open_limit=open_limit,
        days_open=days_open,
        days_static=days_static,
        days_total=prefix_hours(f) / 24 + max(days_open, days_static),
        limit="static host budget" if days_static > days_open else open_limit,
        caps=caps,
    )


def print_projection(figures: Mapping[str, Figure], workers: Iterable[int]) -> list[Row]:
    values = {k: v.value for k, v in figures.items()}
    print("\nInputs:")
    for name, fig in figures.items():
        print(f"  {name:<28} {fig.value:>12,.4g}  {fig.source}")
    print(f"\nConversion + fetch list (one run on one machine, before any batch): {prefix_hours(values):.1f} h")
    rows: list[Row] = []
    scenarios = [
        (f"whole archive ({values['static_share']:.0%} of photos on static.inaturalist.org)", values),
        ("open-data photos only (a dataset of CC0 / CC BY / CC BY-NC photos: static share 0)", {**values, "static_share": 0.0}),
    ]
    for title, scenario in scenarios:
        header = (
            f"{'size':<9}{'workers':>8}{'photos/s/worker':>16} {'(limit)':<12}{'open photos/s':>14} {'(limit)':<16}"
            f"{'days open':>10}{'days static':>12}{'days total':>11}  {'bottleneck':<19} next open limit"
        )
        print(f"\n{title}\n{header}\n{'-' * len(header)}")
        for size in ("medium", "original"):
            for n in workers:
                r = project(scenario, size, n)
                rows.append(r)
                # Where the open-data part's limit moves when the binding one is lifted (S3 splits a prefix,
                # a wider egress, bigger batches).
                after = sorted(r.caps, key=lambda k: r.caps[k])[1]
                print(
                    f"{r.size:<9}{r.workers:>8}{r.per_worker:>16,.0f} {r.worker_limit:<12}{r.open_rate:>14,.0f} "
                    f"{r.open_limit:<16}{r.days_open:>10.1f}{r.days_static:>12.1f}{r.days_total:>11.1f}  "
                    f"{r.limit:<19} {after} ({r.caps[after]:,.0f}/s)"
                )
    runs_per_s = values["daemon_cores"] / values["daemon_cpu_s_per_run"]
    biggest = max(workers)
    for size in ("medium", "original"):
        # Below this many photos per batch the daemon, not the workers, sets the pace at the largest N.
        demand = project(values, size, biggest).caps["workers"]
        print(
            f"\nRun queue ({size}): {runs_per_s:.2f} runs/s = {runs_per_s * values['batch_photos']:,.0f} photos/s at "
            f"{values['batch_photos']:,.0f} photos per batch; {biggest} workers need {demand / values['batch_photos']:.2f} "
            f"runs/s, so batches under {demand / runs_per_s:,.0f} photos would make the queue the bottleneck."
        )
    return rows


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,4,16,64", help="comma-separated worker counts (default 1,4,16,64)")
    parser.add_argument("--queue-runs", type=int, default=24, help="runs per queue measurement (default 24)")
    parser.add_argument(
        "--queue-limits", default="4,24", help="max_concurrent_runs settings measured (default 4,24: slots vs none)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds per setting; medians are used (default 3)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per round before giving up")
    parser.add_argument("--queue-json", type=Path, help="read the queue figures from this file instead of measuring")
    parser.add_argument("--write-json", type=Path, help="write the queue figures measured here to this file")
    parser.add_argument("--inputs", type=Path, help="JSON object of figures (keys as below) overriding the defaults")
    for name, fig in DEFAULTS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=None, help=f"{fig.source}")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[Row]:
    args = _parse_args(argv)
    figures = dict(DEFAULTS)
    if args.queue_json:
        queue = json.loads(args.queue_json.read_text())
        queue_source = f"measured: {args.queue_json}"
    else:
        limits = [int(x) for x in args.queue_limits.split(",")]
        print(f"Run queue: {args.queue_runs} runs of a trivial asset per round, max_concurrent_runs {limits}, "
              f"{args.rounds} rounds (dagster-daemon, SQLite, default run launcher)", flush=True)
        queue = measure_queue(args.queue_runs, limits, args.rounds, args.timeout)
        queue_source = "measured here"
        if args.write_json:
            args.write_json.write_text(json.dumps(queue, indent=1))
    print(f"\n{'max_concurrent_runs':>20} {'enqueue/s':>10} {'launch/s':>9} {'runs/s':>7} {'start s':>8} "
          f"{'run CPU s':>10} {'run RSS MB':>11} {'daemon CPU s/run':>17}")
    for limit, q in queue.items():
        print(f"{limit:>20} {q['enqueue_runs_per_s']:>10.1f} {q['dequeue_runs_per_s']:>9.2f} "
              f"{q['end_to_end_runs_per_s']:>7.2f} {q['start_latency_s']:>8.1f} {q['run_cpu_s']:>10.2f} "
              f"{q['run_rss_mb']:>11.0f} {q['daemon_cpu_s_per_run']:>17.2f}")
    # The wall-clock launch rate above is this loaded 2-core machine's; the daemon's CPU per run is what a
    # daemon pod with its own core spends, so the projection's queue limit is cores / CPU per run.
    widest = queue[max(queue, key=int)]
    figures["daemon_cpu_s_per_run"] = Figure(
        statistics.median(q["daemon_cpu_s_per_run"] for q in queue.values()), f"{queue_source}: median over settings"
    )
    figures["run_start_seconds"] = Figure(
        widest["start_latency_s"], f"{queue_source}: launch -> running, median (a pod adds scheduling and image pull)"
    )
    figures["cpu_ms_per_mb"] = Figure(sha256_ms_per_mb(), DEFAULTS["cpu_ms_per_mb"].source)
    overrides = json.loads(args.inputs.read_text()) if args.inputs else {}
    for name in DEFAULTS:
        flag = getattr(args, name)
        value = flag if flag is not None else overrides.get(name)
        if value is not None:
            figures[name] = Figure(float(value), "given: " + ("--" + name.replace("_", "-") if flag is not None else str(args.inputs)))
    missing = [name for name, fig in figures.items() if math.isnan(fig.value)]
    if missing:
        raise SystemExit(f"no value for {', '.join(missing)}: pass --{missing[0].replace('_', '-')} or --inputs FILE")
    return print_projection(figures, [int(n) for n in args.workers.split(",")])


if __name__ == "__main__":
    main()
