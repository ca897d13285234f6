"""Per-host politeness: request spacing, hourly and daily byte budgets, and pauses after throttling.

One ``HostGate`` per host name per download run (``HostGates``, owned by the run's Fetcher).
Other runs and other processes are not seen: see ``HostLimits``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from inat_assets.download.config import HostLimits

log = logging.getLogger("inat_assets.download")

_HOUR_MINUTES = 60
_DAY_MINUTES = 24 * 60
_MAX_SLEEP = 30.0  # re-check budgets at least this often while waiting

WaitNote = Callable[[str | None], None]


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n} B"  # pragma: no cover


class HostGate:
    """The request clock, byte windows and pause state for one host.

    Byte use is kept in one-minute buckets for the last 24 hours, so the windows are "the last
    60 (1,440) whole minutes". Methods run on whatever event loop calls them; the state is guarded
    by a threading lock because downloads in several threads may share a host.
    """

    def __init__(self, host: str) -> None:
        self.host = host
        self._lock = threading.Lock()
        self._next_slot = 0.0
        self._paused_until = 0.0
        self._minutes: deque[list[int]] = deque()  # [minute number, bytes]
        self.throttled_in_a_row = 0

    # Bookkeeping ------------------------------------------------------------------------------
    def record(self, nbytes: int, now: float | None = None) -> None:
        if nbytes <= 0:
            return
        minute = int((time.monotonic() if now is None else now) // 60)
        with self._lock:
            if self._minutes and self._minutes[-1][0] == minute:
                self._minutes[-1][1] += nbytes
            else:
                self._minutes.append([minute, nbytes])
            while self._minutes and self._minutes[0][0] <= minute - _DAY_MINUTES:
                self._minutes.popleft()

    def pause(self, seconds: float) -> None:
        """Hold every request to this host for ``seconds`` (after a 429 or 503)."""
        with self._lock:
            self._paused_until = max(self._paused_until, time.monotonic() + seconds)

    def used(self, window_minutes: int, now: float | None = None) -> int:
        minute = int((time.monotonic() if now is None else now) // 60)
        with self._lock:
            return sum(b for m, b in self._minutes if m > minute - window_minutes)

    def _budget_wait(self, limits: HostLimits, now: float) -> tuple[float, str | None]:
        """Seconds until a byte window has room again (0 if it has), and a note saying why."""
        minute = int(now // 60)
        for limit, window, label in (
            (limits.bytes_per_hour, _HOUR_MINUTES, "hour"),
            (limits.bytes_per_day, _DAY_MINUTES, "day"),
        ):
            if limit is None:
                continue
            inside = [(m, b) for m, b in self._minutes if m > minute - window]
            used = sum(b for _, b in inside)
            if used < limit:
                continue
            # Wait until enough of the oldest minutes leave the window to get under the limit.
            for m, b in inside:
                used -= b
                if used < limit:
                    wait = max((m + window) * 60 - now, 1.0)
                    return wait, (
                        f"{self.host}: {_fmt_bytes(limit)} per {label} budget used up, "
                        f"waiting {wait / 60:.0f} min"
                    )
        return 0.0, None

    # The gate -------------------------------------------------------------------------------
    async def acquire(self, limits: HostLimits, note: WaitNote | None = None) -> None:
        """Wait until a request to this host may start. Never fails; may wait hours on a budget."""
        if limits.unlimited and self._paused_until <= time.monotonic():
            return  # the common case for the open-data bucket: no lock, no sleep
        noted = False
        while True:
            with self._lock:
                now = time.monotonic()
                wait, why = self._budget_wait(limits, now)
                if self._paused_until > now and self._paused_until - now > wait:
                    wait = self._paused_until - now
                    why = f"{self.host}: paused after throttling, {wait:.0f} s left"
                if wait <= 0:
                    slot_wait = 0.0
                    if limits.requests_per_second:
                        slot = max(now, self._next_slot)
                        self._next_slot = slot + 1.0 / limits.requests_per_second
                        slot_wait = slot - now
                    break
            if why and wait > 5 and not noted:  # short pauses are routine; long ones get a note
                log.info("%s", why)
                if note:
                    note(why)
                noted = True
            await asyncio.sleep(min(wait, _MAX_SLEEP))
        if noted and note:
            note(None)
        if slot_wait > 0:
            await asyncio.sleep(slot_wait)


class HostGates:
    """The gates of one download run, one per host, created on first use.

    Owned by the run's Fetcher and passed nowhere else: no module-level state, so two runs (or two
    tests) in one process never see each other's pauses or budgets.
    """

    def __init__(self) -> None:
        self._gates: dict[str, HostGate] = {}
        self._lock = threading.Lock()

    def for_host(self, host: str) -> HostGate:
        gate = self._gates.get(host)
        if gate is None:
            with self._lock:
                gate = self._gates.setdefault(host, HostGate(host))
        return gate
