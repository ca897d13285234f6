"""One download worker of the shared-budget tests, as its own process (what a batch run is).

``python -m inat_assets_tests.download.budget_worker '<json>'`` downloads the photos it is given
from the test's mirror with the given host limits and ``host_budget``, printing ``NOTE <text>``
whenever the engine reports a wait (a budget used up) and ``DONE <ok>`` at the end.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from inat_assets.download import HostLimits, PhotoTask, Progress, run_download
from inat_assets_tests.download.conftest import fast_config


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    tasks = [PhotoTask(pid, f"{base}/photos/{pid}/original.jpg") for base, ids in spec["photos"] for pid in ids]
    config = fast_config(
        concurrency=spec["concurrency"],
        processes=spec.get("processes", 1),
        try_other_host=False,
        host_limits={host: HostLimits(*limits) for host, limits in spec["limits"].items()},
        host_budget=spec["host_budget"],
    )
    last: list[str | None] = [None]

    def progress(p: Progress) -> None:
        if p.note and p.note != last[0]:
            print(f"NOTE {p.note}", flush=True)
        last[0] = p.note

    out = Path(spec["dest"])
    summary = run_download(tasks, out, out / "manifest.parquet", config, on_progress=progress, progress_interval=0.05)
    print(f"DONE {summary.ok}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
