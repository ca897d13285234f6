"""``inat_assets.definitions`` with Dagster's multiprocess executor instead of its in-process one.

The baseline of ``bench/dagster_overhead.py``: what a batch run cost before the definitions switched to
the in-process executor (each step in a second Python process).
"""

import dagster as dg

from inat_assets.definitions import defs as _in_process

defs = _in_process._replace(executor=dg.multiprocess_executor)
