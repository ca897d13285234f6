"""Download benchmark: our engine vs a bare aiohttp loop vs img2dataset, against the local mirror.

    .venv/bin/python bench/download.py                  # 20,000 x 40 KB, latency 0 and 50 ms
    .venv/bin/python bench/download.py --count 5000 --repeat 3 --only ours,aiohttp
    .venv/bin/python bench/download.py --img2dataset-python /path/to/venv/bin/python

img2dataset pins old versions of many packages: give it a venv of its own
(``python -m venv /work/venvs/img2dataset && /work/venvs/img2dataset/bin/pip install img2dataset``)
and pass that venv's python. The mirror runs in its own process (so it does not share the clients'
GIL) and each contender runs in a fresh process, which reports wall time, CPU seconds (its
children included, so ours counts its worker processes and img2dataset its own) and peak memory
(RSS summed over its process tree, sampled every 250 ms when psutil is installed, otherwise the
largest ru_maxrss). Every contender fetches the same URL list into its own empty folder; the
parent checks the file count and total size afterwards. Repeats run round-robin, so a change in
the machine's load hits every contender alike; the table shows medians and the min-max of
images/s. aiohttp and img2dataset are optional: a contender that cannot be imported is skipped
with a note. Needs ``pip install -e .[bench]``.

Contenders: ``ours`` is the engine with its default settings (``DownloadConfig()``: worker
processes from the available cores, 2 here; concurrency 256; aiohttp under httpx; photo writes
in a helper thread). The variants change one thing: ``ours-1p`` one process, ``ours-httpcore``
one process on httpx's own stack (h11), ``ours-inline`` one process writing files on the event
loop, ``ours-c64`` concurrency 64. ``aiohttp`` is a bare loop at concurrency 64 that only
writes the bytes (no validation, hashing, atomic write or manifest); img2dataset 1.47 runs
without re-encoding, 2 processes x 64 threads.

Before each run the previous runs' files are synced to disk (outside any timing): left to the
kernel, the writeback of gigabytes of them landed on whichever contender ran next (the bare loop's
images/s at 0 ms swung between 2,031 and 4,197 across identical runs).

Measured 2026-12-05 on the quiet 2-core dev VM (AMD EPYC, SHA extensions, 23 GB), the defaults
(20,000 x 40 KB), ``--repeat 3 --only ours,aiohttp,img2dataset --img2dataset-python
/work/venvs/img2dataset/bin/python``, medians of 3, files on ext4 (/tmp), after url_parse.py:

    latency  contender      images/s  (min-max)  CPU ms/img  peak MB
    0 ms     ours             3277  (3115-3432)     0.52       227
             aiohttp          3903  (2135-4123)     0.26        47
             img2dataset      1380  (1343-1398)     1.07       215
    50 ms    ours             3099  (3049-3134)     0.53       224
             aiohttp          1219  (1218-1225)     0.34        46
             img2dataset      1400  (1342-1413)     1.04       209

Ratios of images/s, ours (defaults): 0.84x aiohttp and 2.37x img2dataset at 0 ms; 2.54x aiohttp and
2.21x img2dataset at 50 ms. The same at 0 ms with the files on tmpfs (``--workdir /dev/shm``, the
file system left out): ours 3548 (3433-3629) at 0.48 ms, aiohttp 4549 (4444-4565) at 0.22 ms,
img2dataset 1498 at 0.98 ms: 0.78x aiohttp, 2.37x img2dataset. Earlier the same day, before
url_parse.py, two runs on ext4: 0 ms 0.79x aiohttp (2,922 vs 3,705; 2,837 vs 3,583), 2.08x and 2.34x
img2dataset, 0.59-0.60 ms; 50 ms 2.29x and 2.14x aiohttp, 2.20x and 2.15x img2dataset; tmpfs 0.75x.
The file system's writeback makes ext4 runs noisier than tmpfs ones (note the bare loop's minimum
above). At 0 ms the two cores are saturated (ours, plus the mirror's 0.07-0.08 ms per image), so
images/s follows CPU per image; at 50 ms ours keeps 256 requests in flight to the bare loop's 64.

Where ours spends its CPU (py-spy, all three processes, 20,000 photos at 0 ms, files on tmpfs,
samples waiting on locks, queues and sleeps left out): aiohttp's Python half 27 %, the event loop
and its socket calls 15 %, sha256 of every body 11 %, writing the files 8 % (the helper threads'
open, write and rename), start-up imports 6 %, httpx's objects 4 % (Request and Response; the URL
parser was 9 % before url_parse.py, 20 us a URL), image validation 2 %, the parent 2 %, our
fetcher and engine 18 % (by leaf frame: reading the body, the host gates, the request clock,
handing on results), the rest scattered. What changed since 2026-11-27 (0.95-0.99 ms, 295-298 MB; that VM, an Intel Xeon
without SHA instructions, spent 13 % on sha256): the parent imports neither the HTTP stack nor
pandas (manifest columns built from buffers: 331 -> 268 MB, its CPU halved), one URL parse per
request and no header look-ups in httpx (-4 %), plain URLs parsed without httpx's general parser
(url_parse.py, 22 -> 2 us a URL: 3-5 % more images/s at 0 ms on tmpfs in two A/B pairs), one
timer for all requests' deadlines and read timeouts instead of a timer per request and per chunk (request_clock.py, -4 %), worker start-up
without httpcore, fsspec and importlib.metadata (0.46 -> 0.37 s of CPU each), manifest rows as
tuples (-3 %). Earlier figures, with each run's files deleted right after it and other jobs on the
machine, are in git history; they were noisier in both directions.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONTENDERS = ("ours", "ours-1p", "ours-httpcore", "ours-inline", "ours-c64", "aiohttp", "img2dataset")
# What each of ours changes from the defaults (DownloadConfig(), LocalWriter()).
VARIANTS: dict[str, dict[str, object]] = {
    "ours": {},
    "ours-1p": {"processes": 1},
    "ours-httpcore": {"processes": 1, "transport": "httpcore"},
    "ours-inline": {"processes": 1, "writer_threads": 0},
    "ours-c64": {"concurrency": 64},
}


# --- Children: one contender each -----------------------------------------------------------

class _Meter:
    """CPU and peak memory of this process and its children while the block runs."""

    def __enter__(self) -> _Meter:
        self.peak = 0
        self._stop = threading.Event()
        try:
            import psutil

            me = psutil.Process()

            def sample() -> None:
                while not self._stop.wait(0.25):
                    procs = [me, *me.children(recursive=True)]
                    total = 0
                    for p in procs:
                        with contextlib.suppress(psutil.Error):
                            total += p.memory_info().rss
                    self.peak = max(self.peak, total)

            self._thread: threading.Thread | None = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        except ImportError:
            self._thread = None
        self._cpu0 = self._cpu()
        self._t0 = time.perf_counter()
        return self

    @staticmethod
    def _cpu() -> float:
        own = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._t0
        self.cpu = self._cpu() - self._cpu0
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if not self.peak:
            own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            self.peak = max(own, kids) * 1024


def run_ours(urls: list[str], out: Path, variant: dict[str, object]) -> None:
    from urllib.parse import urlsplit

    from inat_assets.download import DownloadConfig, DownloadJob, PhotoTask, run
    from inat_assets.download.writer import LocalWriter

    settings = dict(variant)
    writer = LocalWriter(settings.pop("writer_threads", 1))  # type: ignore[arg-type]
    host = urlsplit(urls[0]).netloc  # host:port: a bare host would allow ports 80/443 only
    config = DownloadConfig(allowed_hosts=(host,), **settings)  # type: ignore[arg-type]
    tasks = (PhotoTask(int(u.split("/")[-2]), u) for u in urls)
    summary = run(DownloadJob(tasks, out, out / "manifest.parquet", config, total=len(urls), writer=writer))
    if summary.failed:
        print(f"ours: {summary.failed} failed: {summary.top_errors}", file=sys.stderr)


def run_aiohttp(urls: list[str], out: Path, concurrency: int) -> None:
    import aiohttp

    async def main() -> None:
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            it = iter(urls)

            async def worker() -> None:
                for url in it:
                    async with session.get(url) as response:
                        body = await response.read()
                    (out / f"{url.split('/')[-2]}.jpg").write_bytes(body)

            await asyncio.gather(*(worker() for _ in range(concurrency)))

    asyncio.run(main())


def run_img2dataset(urls: list[str], out: Path, concurrency: int) -> None:
    from img2dataset import download

    listing = out.parent / f"{out.name}-urls.txt"
    listing.write_text("\n".join(urls) + "\n")
    download(
        url_list=str(listing),
        input_format="txt",
        output_folder=str(out),
        output_format="files",
        processes_count=2,  # one per core; more only adds context switches here
        thread_count=concurrency,  # per process: twice the aiohttp loop's requests in flight
        resize_mode="no",
        disable_all_reencoding=True,
        encode_format="jpg",
        timeout=30,
        retries=0,
        number_sample_per_shard=10_000,
        distributor="multiprocessing",
        enable_wandb=False,
        compute_hash=None,
    )


RUNNERS: dict[str, Callable[[list[str], Path, int], None]] = {"aiohttp": run_aiohttp, "img2dataset": run_img2dataset}


def child(args: argparse.Namespace) -> int:
    urls = [f"{args.base}/photos/{i}/medium.jpg" for i in range(1, args.count + 1)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with _Meter() as meter:
        if args.child in VARIANTS:
            run_ours(urls, out, VARIANTS[args.child])
        else:
            RUNNERS[args.child](urls, out, args.concurrency)
    print(json.dumps({"seconds": meter.seconds, "cpu": meter.cpu, "peak": meter.peak}))
    return 0


# --- Parent -----------------------------------------------------------------------------------

def start_mirror(latency_ms: float, image_bytes: int) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "inat_assets.testing.mirror", "--latency-ms", str(latency_ms),
         "--image-bytes", str(image_bytes)],
        stdout=subprocess.PIPE, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("serving "):
        proc.kill()
        raise SystemExit(f"mirror did not start: {line!r}")
    return proc, line.split()[1]


def importable(python: str, module: str) -> bool:
    return subprocess.run([python, "-c", f"import {module}"], capture_output=True).returncode == 0


def measure(name: str, python: str, base: str, args: argparse.Namespace, out: Path, keep: bool) -> dict[str, float] | None:
    shutil.rmtree(out, ignore_errors=True)
    # Write the previous runs' files to disk first (outside any timing): otherwise the kernel's
    # writeback of up to gigabytes of them lands on whichever contender runs next, and dirty-page
    # throttling slows its writes (at 20,000 x 40 KB per run it halved the bare loop's images/s).
    os.sync()
    cmd = [python, str(Path(__file__).resolve()), "--child", name, "--base", base, "--count", str(args.count),
           "--concurrency", str(args.concurrency), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_ALBUMENTATIONS_UPDATE": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        print(f"  {name}: failed\n{done.stderr[-800:]}", file=sys.stderr)
        return None
    result = json.loads(done.stdout.strip().splitlines()[-1])
    files = [p for p in out.rglob("*.jpg")]
    result["files"] = len(files)
    result["bytes_ok"] = all(p.stat().st_size == args.image_bytes for p in files[:200])
    if not keep:
        shutil.rmtree(out, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=20_000, help="images per run (default 20,000)")
    parser.add_argument("--latency-ms", default="0,50", help="comma-separated server latencies")
    parser.add_argument("--image-bytes", type=int, default=40_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=1, help="runs per contender; medians are reported")
    parser.add_argument("--only", default=",".join(CONTENDERS), help="contenders to run")
    parser.add_argument("--workdir", default=None,
                        help="where contenders write (default: the system temp dir); e.g. /dev/shm to leave the disk out")
    parser.add_argument("--img2dataset-python", default=sys.executable,
                        help="interpreter that has img2dataset installed (it pins many packages; a separate venv is fine)")
    parser.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)

    pythons = {name: sys.executable for name in CONTENDERS} | {"img2dataset": args.img2dataset_python}
    modules = {name: "inat_assets.download" for name in VARIANTS} | {"aiohttp": "aiohttp", "img2dataset": "img2dataset"}
    names = [n for n in args.only.split(",") if n]
    for name in list(names):
        if not importable(pythons[name], modules[name]):
            print(f"note: {name} skipped ({modules[name]} is not importable by {pythons[name]})")
            names.remove(name)

    print(f"{args.count} images of {args.image_bytes} B; ours with default settings unless named "
          f"({', '.join(f'{k}: {v}' for k, v in VARIANTS.items() if v)}); aiohttp concurrency {args.concurrency}, "
          f"img2dataset 2 processes x {args.concurrency} threads; {os.cpu_count()} cores; {args.repeat} run(s) "
          f"each, interleaved, medians; files in {args.workdir or tempfile.gettempdir()}")
    work = Path(tempfile.mkdtemp(prefix="inat-bench-", dir=args.workdir))
    latencies = [float(x) for x in args.latency_ms.split(",")]
    # Every run's files stay until the end. Deleted after each run, they made the next run's file
    # creation several times dearer: ext4 (on this VM) skips the inodes of recently deleted files
    # when it allocates new ones; 10,000 x 40 KB written by two processes took 0.084 ms of CPU per
    # file after no deletion and 0.33-0.41 ms right after deleting the previous 10,000.
    needed = len(names) * args.repeat * len(latencies) * args.count * (args.image_bytes + 4096)
    keep = shutil.disk_usage(work).free > 1.2 * needed
    if not keep:
        print(f"note: {needed / 1e9:.1f} GB would not fit in {work}; each run's files are deleted after it, "
              "which makes file creation in the runs that follow dearer on ext4")
    try:
        for latency in latencies:
            proc, base = start_mirror(latency, args.image_bytes)
            runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
            try:
                for round_ in range(args.repeat):  # round-robin: drift in the machine's load hits everyone alike
                    for name in names:
                        mirror_cpu = _process_cpu(proc.pid)
                        out = work / f"{name}-{latency:g}ms-{round_}"
                        result = measure(name, pythons[name], base, args, out, keep)
                        if result:
                            result["mirror_cpu"] = _process_cpu(proc.pid) - mirror_cpu
                            runs[name].append(result)
            finally:
                proc.terminate()
                proc.wait()
            rows = {name: _summary(r, args.count) for name, r in runs.items() if r}
            print(f"\nlatency {latency:g} ms")
            print(f"  {'contender':<14} {'images/s':>9} {'(min-max)':>13} {'CPU ms/img':>10} {'peak MB':>8} "
                  f"{'mirror CPU':>10} {'files':>7}")
            for name, r in rows.items():
                flag = "" if r["files"] == args.count and r["bytes_ok"] else "  (INCOMPLETE)"
                spread = f"({r['rate_min']:.0f}-{r['rate_max']:.0f})"
                print(f"  {name:<14} {r['rate']:>9.0f} {spread:>13} {r['cpu_ms']:>10.2f} {r['peak_mb']:>8.0f} "
                      f"{r['mirror_ms']:>10.2f} {r['files']:>7}{flag}")
            for mine in (n for n in rows if n in VARIANTS):
                ratios = [f"{rows[mine]['rate'] / rows[other]['rate']:.2f}x {other}"
                          for other in ("aiohttp", "img2dataset") if other in rows]
                if ratios:
                    print(f"  {mine}: " + ", ".join(ratios) + " (images/s)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _summary(runs: list[dict[str, float]], count: int) -> dict[str, float]:
    rates = [count / r["seconds"] for r in runs]
    return {
        "rate": statistics.median(rates), "rate_min": min(rates), "rate_max": max(rates),
        "cpu_ms": statistics.median(r["cpu"] / count * 1000 for r in runs),
        "peak_mb": statistics.median(r["peak"] / 1e6 for r in runs),
        "mirror_ms": statistics.median(r["mirror_cpu"] / count * 1000 for r in runs),
        "files": min(r["files"] for r in runs),
        "bytes_ok": all(r["bytes_ok"] for r in runs),
    }


def _process_cpu(pid: int) -> float:
    """CPU seconds used so far by process ``pid`` (the mirror: is it the bottleneck?)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    raise SystemExit(main())
