"""What a shared host budget costs per request: HostGate.acquire + record through each ledger.

    .venv/bin/python bench/host_budget.py                 # 2,000 requests per ledger, medians of 3
    .venv/bin/python bench/host_budget.py --requests 500 --repeat 5

For each contender, one event loop runs ``--requests`` requests' worth of gate calls (acquire, then
record 100 KB) against a limited host (requests/s high enough never to wait, bytes per day far
from used up, so only the bookkeeping is measured), and the same count against an unlimited host.
Printed: microseconds of wall time and of CPU per request (this process only; PostgreSQL's own
CPU is not in it), and the ratio to the in-memory gate (no ledger, the baseline) run side by side.
PostgreSQL is started for the run (initdb + pg_ctl in a temporary folder, as the tests do; needs
Debian's postgresql package); without it that row is skipped with a note.

Measured 2026-11-27 on the 2-core dev VM while other jobs ran (load average 11-14; 2,000 requests,
medians of 3; three runs, so each cell is a range):

    ledger     limited host: wall us   cpu us   x memory (wall)   unlimited host: wall us
    memory                   11-23         5           1.0                  1.4-4.9
    sqlite                   393-851    164-184       28-49                 2.1-13.6
    postgres                2727-7042   524-668      206-407                1.5-5.8

The wall time is mostly waiting (thread hand-offs and a busy machine: CPU is 5-8x lower), so read the
CPU column: a request to static.inaturalist.org costs about 0.2 ms (SQLite) or 0.6 ms (PostgreSQL)
of this process's CPU, and at most ~7 ms of wall time, against the 200 ms between requests that its
5 requests/s allow. The open-data bucket pays nothing: the unlimited path never reaches the ledger
(its column is the same for every ledger, within noise).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' PostgreSQL helper

from inat_assets.download import HostLimits
from inat_assets.download.host_budget import sqlite_url
from inat_assets.download.politeness import HostGates

LIMITED = HostLimits(requests_per_second=1e6, bytes_per_hour=10**15, bytes_per_day=10**15)
UNLIMITED = HostLimits()
BODY = 100_000


async def _requests(gates: HostGates, host: str, limits: HostLimits, count: int) -> None:
    gate = gates.for_host(host)
    for _ in range(count):
        await gate.acquire(limits)
        gate.record(BODY)


def measure(url: str, host: str, limits: HostLimits, count: int) -> tuple[float, float]:
    """Wall and CPU microseconds per request (the ledger's queued records included: close waits)."""
    gates = HostGates(url)
    asyncio.run(_requests(gates, host, limits, 10))  # connect and create the tables outside the timing
    wall, cpu = time.perf_counter(), time.process_time()
    asyncio.run(_requests(gates, host, limits, count))
    gates.close()
    return (time.perf_counter() - wall) / count * 1e6, (time.process_time() - cpu) / count * 1e6


def median_of(repeat: int, run: Callable[[], tuple[float, float]]) -> tuple[float, float]:
    results = [run() for _ in range(repeat)]
    return statistics.median(r[0] for r in results), statistics.median(r[1] for r in results)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        ledgers = {"memory": "", "sqlite": sqlite_url(folder / "budget.sqlite")}
        try:
            from inat_assets_tests.postgres_server import postgres_server

            server = stack.enter_context(postgres_server())
            ledgers["postgres"] = server.create_database()
        except BaseException as exc:  # pytest.skip raises a BaseException subclass
            print(f"postgres: skipped ({exc})")
        rows = {}
        for name, url in ledgers.items():
            limited = median_of(args.repeat, lambda url=url: measure(url, "static", LIMITED, args.requests))
            unlimited = median_of(args.repeat, lambda url=url: measure(url, "bucket", UNLIMITED, args.requests))
            rows[name] = (*limited, unlimited[0])
        base = rows["memory"][0]
        print(f"{'ledger':10} {'limited host: wall us':>22} {'cpu us':>7} {'x memory':>9} {'unlimited host: wall us':>25}")
        for name, (wall, cpu, free) in rows.items():
            print(f"{name:10} {wall:22.0f} {cpu:7.0f} {wall / base:9.1f} {free:25.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
