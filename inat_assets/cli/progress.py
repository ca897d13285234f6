"""What a person sees while photos download: a live bar on a terminal, periodic lines anywhere else.

``download-images`` and ``inat-assets demo`` both take the download engine's ``on_progress``
snapshots (``inat_assets.download.Progress``) through ``progress_display(stream)``:

- on an interactive terminal, a `rich <https://rich.readthedocs.io>`_ bar: photos done / total,
  photos/s, MB/s, ETA, failures so far and the engine's note (a host waiting for its byte budget);
- otherwise (a pipe, a file, a log collector, ``TERM=dumb``) one plain line per update, the format
  logs have always had: ``[####....]  40.0% 400/1,000 | ok 380 cached 10 failed 10 | 95/s | ...``.

Asset bodies never use this: under Dagster, progress goes to the run log (``context.log``).

The bar is refreshed only when a snapshot arrives (``auto_refresh=False``): no drawing thread competes
with the download's event loop for the GIL. Its cost, measured by ``bench/progress.py``, is about a
millisecond of CPU per update; at ``BAR_INTERVAL`` that is well under 1 % of one core (numbers there).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import replace
from types import TracebackType
from typing import Self, TextIO

from rich.console import Console
from rich.progress import BarColumn, SpinnerColumn, TextColumn
from rich.progress import Progress as RichProgress

from inat_assets.download import Progress

# Seconds between snapshots. A bar looks alive at 5 updates/s; a log gets one line per second, as it
# always has (download-images --progress-interval overrides both).
BAR_INTERVAL = 0.2
LINE_INTERVAL = 1.0


class _Display:
    """Shared by both displays: an ``on_progress`` callback with the interval it wants, used in a ``with``."""

    interval: float
    is_bar: bool

    def __call__(self, p: Progress) -> None:
        raise NotImplementedError

    def message(self, text: str) -> None:
        """A line of its own (above the bar on a terminal)."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def clock(seconds: float | None) -> str:
    """``H:MM:SS``."""
    s = int(seconds or 0)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def counts_text(p: Progress) -> str:
    """``400/1,000`` (or ``400`` with no total): the one figure the bar and the lines both show as is."""
    return f"{p.done:,}/{p.total:,}" if p.total is not None else f"{p.done:,}"


def bytes_per_second(p: Progress) -> float:
    return p.bytes / p.elapsed if p.elapsed > 0 else 0.0


def progress_line(p: Progress) -> str:
    """One self-contained line (for logs): bar, share, counts, rate, bytes, ETA, note."""
    if p.total:
        filled = int(20 * min(p.done / p.total, 1.0))
        head = f"[{'#' * filled}{'.' * (20 - filled)}] {100 * p.done / p.total:5.1f}% {counts_text(p)}"
    else:
        head = f"{counts_text(p)} photos"
    eta = f" | ETA {clock(p.eta_seconds)}" if p.eta_seconds is not None else ""
    note = f" | {p.note}" if p.note else ""
    return (f"{head} | ok {p.ok:,} cached {p.skipped:,} failed {p.failed:,} | {p.rate:,.0f}/s "
            f"| {p.bytes / 1e6:,.1f} MB{eta}{note}")


class LogLines(_Display):
    """One plain line per snapshot, for output that is not a terminal."""

    interval = LINE_INTERVAL
    is_bar = False

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def __call__(self, p: Progress) -> None:
        self.stream.write(progress_line(p) + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()


class TerminalBar(_Display):
    """A rich progress bar, redrawn in place on each snapshot."""

    interval = BAR_INTERVAL
    is_bar = True

    def __init__(self, console: Console, description: str = "photos") -> None:
        plain = {"markup": False}  # a note may contain brackets; never read it as rich markup
        self._progress = RichProgress(
            SpinnerColumn(),
            TextColumn("{task.description}", **plain),
            BarColumn(),
            TextColumn("{task.fields[counts]}", **plain),
            TextColumn("{task.fields[speed]}", **plain),
            TextColumn("ETA {task.fields[eta]}", **plain),
            TextColumn("failed {task.fields[failed]}", style="red", **plain),
            TextColumn("{task.fields[note]}", style="yellow", **plain),
            console=console,
            auto_refresh=False,
            # Engine warnings and demo lines printed meanwhile appear above the bar, not through it.
            redirect_stdout=True,
            redirect_stderr=True,
        )
        self._task = self._progress.add_task(description, total=None, counts="0", speed="", eta="-:--:--",
                                             failed="0", note="")
        self._progress.start()
        self._closed = False

    def __call__(self, p: Progress) -> None:
        self._progress.update(
            self._task,
            completed=p.done,
            total=p.total,
            counts=counts_text(p),
            speed=f"{p.rate:,.0f} photos/s {bytes_per_second(p) / 1e6:,.1f} MB/s",
            eta=clock(p.eta_seconds) if p.eta_seconds is not None else "-:--:--",
            failed=f"{p.failed:,}",
            note=p.note or "",
        )
        self._progress.refresh()

    def message(self, text: str) -> None:
        self._progress.console.print(text, markup=False, highlight=False)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._progress.stop()  # draws the final state and leaves it on screen


def is_interactive(stream: TextIO) -> bool:
    """A terminal a person watches: a tty (never a pipe or file, even with FORCE_COLOR set) that rich
    also finds interactive (not ``TERM=dumb``, not ``TTY_INTERACTIVE=0``)."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and Console(file=stream).is_interactive


def progress_display(stream: TextIO | None = None, *, description: str = "photos") -> TerminalBar | LogLines:
    """The bar on an interactive terminal, else plain lines; on ``stream`` (default stderr)."""
    stream = stream or sys.stderr
    if is_interactive(stream):
        return TerminalBar(Console(file=stream, force_terminal=True, force_interactive=True), description)
    return LogLines(stream)


class RunningTotal:
    """One ``Progress`` over several download runs (the demo's batches of one dataset, one run each).

    ``total`` is every run's photos together. Each run's latest snapshot counts once; a run that
    starts again under the same key (a retry) replaces its counts, and its bytes are added (they
    were downloaded). Rate and ETA are over the time since this object was made.
    """

    def __init__(self, total: int | None, show: Callable[[Progress], None], now: Callable[[], float]) -> None:
        self.total = total
        self.show = show
        self._now = now
        self._started = now()
        self._latest: dict[str, Progress] = {}
        self._earlier_bytes = 0  # of runs that were replaced by a retry under the same key

    def __call__(self, key: str, p: Progress) -> None:
        previous = self._latest.get(key)
        if previous is not None and p.elapsed < previous.elapsed:  # a new run of the same batch
            self._earlier_bytes += previous.bytes
        self._latest[key] = p
        runs = self._latest.values()
        done = sum(r.done for r in runs)
        elapsed = max(self._now() - self._started, 1e-9)
        rate = done / elapsed
        eta = max(self.total - done, 0) / rate if self.total is not None and rate > 0 else None
        self.show(replace(
            p, done=done, total=self.total, ok=sum(r.ok for r in runs), failed=sum(r.failed for r in runs),
            skipped=sum(r.skipped for r in runs), bytes=self._earlier_bytes + sum(r.bytes for r in runs),
            rate=rate, eta_seconds=eta, elapsed=elapsed,
        ))
