"""bench/projection.py's model: which limit binds, and the days it gives (figures chosen to be checkable by hand)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("projection", Path(__file__).resolve().parents[1] / "bench" / "projection.py")
assert _spec and _spec.loader
projection = importlib.util.module_from_spec(_spec)
sys.modules["projection"] = projection  # its dataclasses look their module up there
_spec.loader.exec_module(projection)

FIGURES = {name: fig.value for name, fig in projection.DEFAULTS.items()} | {
    "photos": 100e6,
    "medium_bytes": 50e3,
    "original_bytes": 500e3,
    "static_share": 0.1,
    "images_per_s": 1000.0,
    "cpu_ms_per_image": 1.0,
    "cpu_ms_per_mb": 2.0,
    "upload_cpu_ms_per_photo": 0.0,  # a data dir on a local disk; the store's PUTs are tested below
    "worker_cores": 2.0,
    "worker_link_gbps": 1.0,
    "egress_gbps": 10.0,
    "run_start_seconds": 0.0,
    "daemon_cpu_s_per_run": 1.0,
    "daemon_cores": 1.0,
    "batch_photos": 50_000.0,
    "convert_rows_per_s": 1e6,
    "archive_rows": 360e6,  # 360 s at 1e6 rows/s
    "fetch_list_photos_per_cpu_s": 1e6,
}


def test_one_worker_is_limited_by_latency_and_many_by_the_store() -> None:
    one = projection.project(FIGURES, "medium", 1)
    assert one.worker_limit == "latency" and one.per_worker == pytest.approx(1000)  # CPU allows 2000/1.1 = 1818
    assert one.open_limit == "workers"
    many = projection.project(FIGURES, "medium", 64)
    assert many.open_limit == "store PUT/s" and many.open_rate == 3500
    # The static host: 10 M photos of 50 KB; 5 requests/s bind before 22 GB/day (5.09 photos/s) does.
    assert many.days_static == pytest.approx(10e6 / 5 / 86400)
    assert many.limit == "static host budget"
    originals = projection.project(FIGURES, "original", 64)  # 500 KB: the daily budget binds
    assert originals.days_static == pytest.approx(10e6 * 500e3 / 22e9)


def test_the_stores_put_cpu_makes_a_worker_cpu_bound() -> None:
    # 1.0 + 2.0 x 0.05 + 2.9 = 4.0 ms of CPU per photo on 2 cores: 500 photos/s, under the 1000 of latency.
    row = projection.project(FIGURES | {"upload_cpu_ms_per_photo": 2.9}, "medium", 1)
    assert row.worker_limit == "CPU" and row.per_worker == pytest.approx(500)


def test_originals_are_limited_by_the_link_then_egress_and_the_queue_by_small_batches() -> None:
    one = projection.project(FIGURES, "original", 1)
    assert one.worker_limit == "worker link" and one.per_worker == pytest.approx(1e9 / 8 / 500e3)
    assert projection.project(FIGURES, "original", 64).open_limit == "egress"
    small_batches = FIGURES | {"batch_photos": 1000.0, "store_put_per_s": math.inf, "static_share": 0.0}
    row = projection.project(small_batches, "medium", 64)
    assert row.open_limit == "run queue" and row.open_rate == pytest.approx(1000.0)  # 1 run/s x 1000 photos
    assert row.limit == "run queue"


def test_run_start_up_is_paid_once_per_batch_and_the_prefix_once() -> None:
    slow_start = FIGURES | {"run_start_seconds": 50.0, "static_share": 0.0}
    row = projection.project(slow_start, "medium", 1)
    assert row.per_worker == pytest.approx(50_000 / (50 + 50))  # 50 s start + 50 s of downloads per batch
    prefix_days = (360e6 / 1e6 + 100e6 / 1e6) / 86400
    assert row.days_total == pytest.approx(prefix_days + 100e6 / row.per_worker / 86400)
