"""``inat_assets.definitions`` with Dagster's multiprocess executor instead of its in-process one.

The baseline of ``bench/dagster_overhead.py``: what a batch run cost before the definitions switched to
the in-process executor (each step in a second Python process). Dagster has no public way to swap the
executor of a built Definitions; ``Definitions`` is a dagster_shared record, and ``record.copy`` rebuilds
it through its constructor with that one field changed.
"""

import dagster as dg
from dagster_shared.record import copy

import inat_assets.definitions as in_process

# The module, not its `defs`: Dagster refuses a module with two Definitions objects at its top level.
defs = copy(in_process.defs, executor=dg.multiprocess_executor)
