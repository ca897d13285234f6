"""Per-host politeness: request spacing, hourly and daily byte budgets, and pauses after throttling.

One ``HostGate`` per host name per download run (``HostGates``, owned by the run's Fetcher). Without
a ledger (``DownloadConfig.host_budget`` empty) the gate counts in memory and other runs and
processes are not seen. With one (``host_budget.py``), the clock, budgets and pauses of every
limited host are the ledger's, shared by every run that names it; unlimited hosts (the open-data
bucket) stay in memory and cost no database round trip.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from inat_assets.download.config import HostLimits
from inat_assets.download.host_budget import AsyncLedger, budget_wait, open_ledger

log = logging.getLogger("inat_assets.download")

_DAY_MINUTES = 24 * 60
_MAX_SLEEP = 30.0  # re-check budgets at least this often while waiting

WaitNote = Callable[[str | None], None]


class HostGate:
    """The request clock, byte windows and pause state for one host.

    Byte use is kept in one-minute buckets for the last 24 hours, so the windows are "the last
    60 (1,440) whole minutes". Methods run on whatever event loop calls them; the state is guarded
    by a threading lock because downloads in several threads may share a host.
    """

    def __init__(self, host: str, ledger: AsyncLedger | None = None) -> None:
        self.host = host
        self.ledger = ledger
        self._shared = False  # set by the first acquire: a ledger and a limited host
        self._turn: asyncio.Lock | None = None  # one claim of the ledger at a time per gate
        self._lock = threading.Lock()
        self._next_slot = 0.0
        self._paused_until = 0.0
        self._minutes: deque[list[int]] = deque()  # [minute number, bytes]
        self.throttled_in_a_row = 0

    # Bookkeeping ------------------------------------------------------------------------------
    def record(self, nbytes: int, now: float | None = None) -> None:
        if nbytes <= 0:
            return
        if self._shared:
            assert self.ledger is not None
            self.ledger.record(self.host, nbytes)  # queued; the gate's own minutes are not used
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
        if self._shared:
            assert self.ledger is not None
            self.ledger.pause(self.host, seconds)  # every worker of the ledger waits, not just this run

    def used(self, window_minutes: int, now: float | None = None) -> int:
        """Bytes this gate counted itself in the window (0 for a host kept in a ledger: ask the ledger)."""
        minute = int((time.monotonic() if now is None else now) // 60)
        with self._lock:
            return sum(b for m, b in self._minutes if m > minute - window_minutes)

    def _budget_wait(self, limits: HostLimits, now: float) -> tuple[float, str | None]:
        """Seconds until a byte window has room again (0 if it has), and a note saying why."""
        return budget_wait(self.host, limits, [(m, b) for m, b in self._minutes], now)

    # The gate -------------------------------------------------------------------------------
    async def acquire(self, limits: HostLimits, note: WaitNote | None = None) -> None:
        """Wait until a request to this host may start. Never fails; may wait hours on a budget."""
        if limits.unlimited and self._paused_until <= time.monotonic():
            return  # the common case for the open-data bucket: no lock, no sleep, no database
        if self.ledger is not None and not limits.unlimited:
            self._shared = True
            await self._acquire_shared(limits, note)
            return
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

    async def _acquire_shared(self, limits: HostLimits, note: WaitNote | None) -> None:
        """``acquire`` through the ledger. One request of this gate at a time claims and waits for its
        slot: this process then holds at most one reserved, unused slot, so slots are not booked far
        ahead of the budget checks (64 requests claiming at once would book 13 s ahead at 5/s)."""
        assert self.ledger is not None
        if self._turn is None:
            self._turn = asyncio.Lock()
        noted = False
        async with self._turn:
            while True:
                claim = await self.ledger.claim(self.host, limits)
                if claim.granted:
                    break
                if claim.why and claim.wait > 5 and not noted:
                    log.info("%s", claim.why)
                    if note:
                        note(claim.why)
                    noted = True
                await asyncio.sleep(min(claim.wait, _MAX_SLEEP))
            if noted and note:
                note(None)
            if claim.slot_wait > 0:
                await asyncio.sleep(claim.slot_wait)


class HostGates:
    """The gates of one download run, one per host, created on first use.

    Owned by the run's Fetcher and passed nowhere else: no module-level state, so two runs (or two
    tests) in one process never see each other's pauses or budgets.
    """

    def __init__(self, host_budget: str = "") -> None:
        self._gates: dict[str, HostGate] = {}
        self._lock = threading.Lock()
        # The ledger connects on its first claim: a run that only meets unlimited hosts never does.
        self.ledger = AsyncLedger(open_ledger(host_budget)) if host_budget else None

    def for_host(self, host: str) -> HostGate:
        gate = self._gates.get(host)
        if gate is None:
            with self._lock:
                gate = self._gates.setdefault(host, HostGate(host, self.ledger))
        return gate

    def close(self) -> None:
        """Send the byte records still queued to the ledger and close it (a no-op without one)."""
        if self.ledger is not None:
            self.ledger.close()
