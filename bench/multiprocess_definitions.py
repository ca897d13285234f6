"""``inat_assets.definitions`` with Dagster's multiprocess executor instead of its in-process one.

The baseline of ``bench/dagster_overhead.py``: what a batch run cost before the definitions switched to
the in-process executor (each step in a second Python process). Dagster has no public way to swap the
executor of a built Definitions; ``Definitions`` is a dagster_shared record, and ``record.copy`` rebuilds
it through its constructor with that one field changed.
"""

import dagster as dg
from dagster_shared.record import copy

from inat_assets.definitions import defs as _in_process

defs = copy(_in_process, executor=dg.multiprocess_executor)
