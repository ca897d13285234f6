"""The training dataset export on an object store (moto S3 server) vs on local disk, side by side.

    .venv/bin/python bench/training_store.py                       # 2,000 photos of 20 KB, 3 rounds
    .venv/bin/python bench/training_store.py --photos 5000 --image-bytes 50000 --rounds 5

Generates the inputs of bench/training.py (observations, fetch list, one manifest per batch, one
JPEG per photo; here of --image-bytes), once on local disk and once on a moto S3 server on 127.0.0.1
(inat_assets.testing.s3) under the data directory's layout (manifests naming the photos' s3:// URLs).
Then builds the training dataset with every export (WebDataset shards, imagefolder, COCO, plots),
alternating local and store rounds, each in a fresh DuckDB connection:

- client CPU: this process's CPU time (DuckDB's threads, s3fs's event loop and upload threads included);
- server CPU: the moto process's CPU time (what the store spent; real S3 does this on its side);
- wall time, and wall time per stage (the build's own laps: select, splits, index, attribution,
  imagefolder, webdataset, coco, plots).

One extra store round counts the requests in the server's access log (S3Server.stop_recording), by kind. Medians over rounds;
ratios store / local. moto on loopback has no network latency, so against real S3 each request
adds a round trip: the requests counts say how many (concurrent windows of 64 hide most of them).
The machine is shared (2 cores, other agents): wall times are noisy, CPU seconds less so.

Measured 2026-11-27 (2,000 photos of 20 KB, 1,643 exported, 3 rounds, load average ~12 from other jobs):
    median      client CPU s   server CPU s   wall s
    local           1.59           0.00        4.75
    store          12.29          14.23       55.80   (7.7x client CPU, 11.8x wall of local)
    wall per stage, local / store: select 0.14 / 0.98, index 0.08 / 2.99, imagefolder 0.48 / 26.13,
    webdataset 0.56 / 20.41, coco 0.36 / 0.45, plots 2.93 / 2.34
    requests of one store build: GET 1,885 (1,643 photos + DuckDB's range reads), CopyObject 1,643,
    LIST 118, HEAD 117, PUT 25, DELETE 1 (the lease)
    s3fs alone, CPU ms per request (client / moto): PUT 2.48 / 3.32, GET 2.19 / 2.70, COPY 2.69 / 3.89
Where the time goes: one request per photo and export (a GET for the WebDataset shards, a CopyObject
for the imagefolder), each ~2.4 ms of client CPU in s3fs/aiobotocore: 3,286 x 2.4 = ~7.9 of the 12.3 s;
the export's own work is the local build's ~1.6 s; the rest is DuckDB reading the Parquet inputs
through fsspec and the index's upload and photo listing. The wall time here is moto's (~3 ms of
server CPU a request on a shared machine, ~60 requests/s); on S3 the windows of 64 requests hide the
latency and the client's ~400 requests per core-second become the limit. Before the ranged GET and
the direct CopyObject, s3fs added a HEAD to each (HEAD 1,947 of ~3,900 requests at 1,000 photos).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import duckdb

from inat_assets.storage import DataStore
from inat_assets.testing.s3 import S3Server, serve_s3
from inat_assets.training import TrainingOptions, build_training_dataset

OPTIONS = {
    "licences": {"preset": "research"},
    "mini_per_class": 5,
    "exports": {"webdataset": {"shard_max_bytes": 10_000_000}, "imagefolder": {}, "coco": True},
}
BUCKET = "inat-bench"


def _bench_training():  # the generator of bench/training.py (bench/ is not a package)
    spec = importlib.util.spec_from_file_location("bench_training", Path(__file__).with_name("training.py"))
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def place_on_store(workdir: Path, store: DataStore) -> None:
    """Tables, photos and manifests (paths rewritten to the photos' URLs) under the store's layout."""
    fs = store.root.fs  # type: ignore[union-attr]
    fs.put_file(str(workdir / "fetch.parquet"), store.fetch_list("plants").path)  # type: ignore[union-attr]
    fs.put_file(str(workdir / "observations.parquet"), store.table("observations").path)  # type: ignore[union-attr]
    for manifest in sorted((workdir / "manifests").glob("*.parquet")):
        batch = manifest.stem
        folder = store.photos_dir("original", batch)
        local = sorted((workdir / "photos" / batch).iterdir())
        fs.put([str(p) for p in local], [f"{folder.path}/{p.name}" for p in local])  # type: ignore[union-attr]
        rewritten = workdir / f"{batch}.store.parquet"
        with duckdb.connect() as con:
            con.execute(
                f"""COPY (SELECT * REPLACE ('{folder}/' || photo_id || '.jpg' AS path) FROM read_parquet('{manifest}'))
                TO '{rewritten}' (FORMAT parquet)"""
            )
        fs.put_file(str(rewritten), store.manifest("plants", batch).path)  # type: ignore[union-attr]
        rewritten.unlink()


def build(workdir: Path, store: DataStore | None) -> dict[str, float]:
    options = TrainingOptions.model_validate(OPTIONS)
    if store is None:
        inputs = (workdir / "fetch.parquet", workdir / "observations.parquet", workdir / "manifests", workdir / "out")
    else:
        inputs = (store.fetch_list("plants"), store.table("observations"), store.manifests_dir("plants"),
                  store.training_dir("plants"))  # fmt: skip
    with duckdb.connect(config={"threads": 2}) as con:
        result = build_training_dataset(con, options, *inputs)  # type: ignore[arg-type]
    return {**result.seconds, "rows": result.rows}


def _remove(store: DataStore) -> None:
    out = store.training_dir("plants")
    if out.exists():
        out.fs.rm(out.path, recursive=True)  # type: ignore[union-attr]


def measure(server: S3Server, run: object) -> tuple[float, float, float, dict]:
    cpu, server_cpu, wall = time.process_time(), server.cpu_seconds(), time.perf_counter()
    stages = run()  # type: ignore[operator]
    return time.process_time() - cpu, server.cpu_seconds() - server_cpu, time.perf_counter() - wall, stages


def requests(served: list[tuple[str, str]]) -> Counter:
    """The requests the server logged (S3Server.stop_recording), by kind."""
    kinds: Counter = Counter()
    for method, url in served:
        if method == "PUT" and "/imagefolder/" in url and not url.endswith(".jsonl"):
            kind = "PUT copy (photo)"
        elif "?delete" in url:
            kind = "POST bulk delete"
        elif method == "GET" and ("list-type" in url or "delimiter" in url or "prefix=" in url):
            kind = "GET list"
        elif "partNumber" in url or "uploads" in url or "uploadId" in url:
            kind = f"{method} multipart"
        else:
            kind = f"{method} object"
        kinds[kind] += 1
    return kinds


def request_costs(server: S3Server, store: DataStore, image_bytes: int, n: int = 512) -> dict[str, tuple[float, float]]:
    """Client and server CPU ms per request of s3fs alone (no export around it), in windows of 64 as the export sends them."""
    from inat_assets.training.exports import STORE_WINDOW, server_side_copy

    fs, root = store.root.fs, store.root.path  # type: ignore[union-attr]
    keys = [f"{root}/bench-requests/{i}.jpg" for i in range(n)]
    data = os.urandom(image_bytes)
    windows = [keys[i : i + STORE_WINDOW] for i in range(0, n, STORE_WINDOW)]
    costs = {}
    for name, run in (
        ("PUT", lambda w: fs.pipe(dict.fromkeys(w, data))),
        ("GET", lambda w: fs.cat_ranges(w, 0, None)),
        ("COPY", lambda w: server_side_copy(fs, [(k, k.replace("/bench-requests/", "/bench-copies/")) for k in w])),
    ):
        cpu, server_cpu = time.process_time(), server.cpu_seconds()
        for window in windows:
            run(window)
        costs[name] = (1000 * (time.process_time() - cpu) / n, 1000 * (server.cpu_seconds() - server_cpu) / n)
    fs.rm(keys + [k.replace("/bench-requests/", "/bench-copies/") for k in keys])
    return costs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=2000)
    parser.add_argument("--classes", type=int, default=50)
    parser.add_argument("--batch-span", type=int, default=500)
    parser.add_argument("--image-bytes", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-training-store-") as tmp, serve_s3(Path(tmp) / "moto") as server:
        os.environ.update(server.environment())
        import boto3

        boto3.client("s3").create_bucket(Bucket=BUCKET)
        workdir = Path(tmp) / "inputs"
        _bench_training().generate(workdir, args.photos, args.classes, args.batch_span, image_bytes=args.image_bytes)
        store = DataStore.from_setting(f"s3://{BUCKET}/inat", str(Path(tmp) / "scratch"))
        started = time.perf_counter()
        place_on_store(workdir, store)
        print(f"{args.photos:,} photos of {args.image_bytes:,} bytes placed on the store in {time.perf_counter() - started:.1f} s")

        runs: dict[str, list[tuple[float, float, float, dict]]] = {"local": [], "store": []}
        for _ in range(args.rounds):
            # Each round a first build on both sides (no previous index, nothing to delete).
            shutil.rmtree(workdir / "out", ignore_errors=True)
            _remove(store)
            runs["local"].append(measure(server, lambda: build(workdir, None)))
            runs["store"].append(measure(server, lambda: build(workdir, store)))
        per_request = request_costs(server, store, args.image_bytes)
        _remove(store)
        server.start_recording()
        build(workdir, store)
        kinds = requests(server.stop_recording())

    def med(kind: str, i: int) -> float:
        return statistics.median(r[i] for r in runs[kind])

    print(f"median of {args.rounds} rounds, {runs['local'][0][3]['rows']:,} photos exported "
          "(webdataset + imagefolder + coco + plots):")  # fmt: skip
    print(f"{'':8} {'client CPU s':>12} {'server CPU s':>12} {'wall s':>8}")
    for kind in ("local", "store"):
        ratio = "" if kind == "local" else (
            f"   ({med('store', 0) / med('local', 0):.2f}x client CPU, {med('store', 2) / med('local', 2):.2f}x wall of local)"
        )
        print(f"{kind:8} {med(kind, 0):12.2f} {med(kind, 1):12.2f} {med(kind, 2):8.2f}{ratio}")
    stages = [k for k in runs["local"][0][3] if k != "rows"]
    print("wall s per stage (median):")
    for stage in stages:
        local, remote = (statistics.median(r[3][stage] for r in runs[k]) for k in ("local", "store"))
        print(f"  {stage:12} local {local:7.2f}   store {remote:7.2f}")
    print("requests of one store build: " + ", ".join(f"{k} {n:,}" for k, n in kinds.most_common()))
    print("s3fs alone, CPU ms per request (client / moto): "
          + ", ".join(f"{k} {c:.2f} / {sv:.2f}" for k, (c, sv) in per_request.items()))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
