"""Per-host budgets shared by every download on one IP address: a small ledger in a database.

iNaturalist's limits (requests/s, bytes per hour, bytes per day) are per IP address and host, so
they must hold however many batch runs, worker processes and machines download at once. The
ledger keeps what every downloader needs to agree on, per host:

- ``inat_host_clock``: the time of the next free request slot and a pause deadline (after a 429
  or 503 from that host, every worker waits);
- ``inat_host_bytes``: bytes received per wall-clock minute, for the hour and day windows.

A ledger is named by a URL, a plain string, so ``DownloadConfig`` stays picklable for worker
processes (``DownloadConfig.host_budget``):

``""``                     no ledger: each run counts for itself (``politeness.HostGate``'s memory)
``sqlite:////abs/file.db`` a SQLite file; every process on this machine naming it shares it
``postgresql://user:pw@host:5432/db``  a PostgreSQL database (the Dagster instance's), shared by
                           every worker on every machine that reaches it; a driver suffix
                           (``postgresql+psycopg2://``, as the Dagster instance needs) is ignored

Only limited hosts use it: the open-data bucket (no limits) never touches the database. Each
call is one short transaction; for static.inaturalist.org at 5 requests/s that is at most about
10 transactions a second in total (a claim and a byte record per request), whatever the number
of workers: well within SQLite's and PostgreSQL's reach, so byte records are not batched.

The times are the database's clock for PostgreSQL (workers on several machines may disagree by
seconds; the database does not) and the wall clock for SQLite (one machine, one clock).

How far a budget can be overshot: a claim checks the bytes already recorded; a request in flight
records its bytes when its body has been read. So the bytes of the requests in flight at the
moment a window fills can still arrive: at most the sum over worker processes of the requests each
has in flight to that host (its ``concurrency``) times their body size, and never more than each
process's body memory budget (bodies reserve their size before they are read: at most 192 MB per
process, ``photo_fetcher._BUDGET_MAX``). In practice the request slots keep
that far lower: at 5 requests/s and about 1 s per photo, about 5 requests of ~2 MB are in flight,
~10 MB against the 4,500 MB hourly budget (0.2 %), and the budgets sit 10 % under iNaturalist's
own (4.5 of 5 GB/hour, 22 of 24 GB/day). Each process holds at most one claimed request slot it
has not used yet (``HostGate`` claims one at a time), so slots are never reserved far ahead.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

from inat_assets.download.config import HostLimits
from inat_assets.errors import DownloadError

log = logging.getLogger("inat_assets.download")

T = TypeVar("T")

HOUR_MINUTES = 60
DAY_MINUTES = 24 * 60
# A claim that fails on a connection error is retried this many times (reconnecting) before the
# run stops: a database restart takes seconds; downloading without the budget is not an option.
_ATTEMPTS = 4
_RETRY_BASE = 0.5

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS inat_host_clock ("
    " host TEXT PRIMARY KEY, next_slot DOUBLE PRECISION NOT NULL, paused_until DOUBLE PRECISION NOT NULL)",
    "CREATE TABLE IF NOT EXISTS inat_host_bytes ("
    " host TEXT NOT NULL, minute BIGINT NOT NULL, bytes BIGINT NOT NULL, PRIMARY KEY (host, minute))",
)


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n} B"  # pragma: no cover


def budget_wait(
    host: str, limits: HostLimits, minutes: Iterable[tuple[int, int]], now: float
) -> tuple[float, str | None]:
    """Seconds until the byte windows have room again (0 if they have), and a note saying why.

    ``minutes`` are (minute number, bytes) pairs in ascending minute order, ``now`` in seconds on
    the same clock. The windows are the last 60 (1,440) whole minutes. The one rule for the
    in-memory gate and the shared ledgers.
    """
    minute = int(now // 60)
    buckets = list(minutes)
    for limit, window, label in (
        (limits.bytes_per_hour, HOUR_MINUTES, "hour"),
        (limits.bytes_per_day, DAY_MINUTES, "day"),
    ):
        if limit is None:
            continue
        inside = [(m, b) for m, b in buckets if m > minute - window]
        used = sum(b for _, b in inside)
        if used < limit:
            continue
        # Wait until enough of the oldest minutes leave the window to get under the limit.
        for m, b in inside:
            used -= b
            if used < limit:
                wait = max((m + window) * 60 - now, 1.0)
                return wait, f"{host}: {fmt_bytes(limit)} per {label} budget used up, waiting {wait / 60:.0f} min"
    return 0.0, None


@dataclass(frozen=True)
class Claim:
    """The ledger's answer to "may a request to this host start?".

    ``wait > 0``: not now (a budget is used up or the host is paused), ask again after ``wait``
    seconds; ``why`` says which. ``wait == 0``: granted, and the request slot starts in
    ``slot_wait`` seconds (it is reserved: sleep, then send).
    """

    wait: float
    why: str | None = None
    slot_wait: float = 0.0

    @property
    def granted(self) -> bool:
        return self.wait <= 0


def redact(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def sqlite_url(path: Path | str) -> str:
    """The ledger URL of a SQLite file (absolute, so every process resolves it the same way)."""
    return "sqlite:///" + str(Path(path).expanduser().resolve())


class HostBudgetLedger(ABC):
    """The shared per-host state behind ``HostGate``: blocking calls, one transaction each.

    Not thread-safe: ``AsyncLedger`` calls it from one thread of its own.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._schema_ready = False

    # What a dialect provides ------------------------------------------------------------------
    @abstractmethod
    def _connect(self) -> None: ...

    @abstractmethod
    def _disconnect(self) -> None: ...

    @abstractmethod
    def _transaction(self, body: Callable[[Any], T], *, write: bool) -> T:
        """Run ``body(cursor)`` in one transaction (``write``: it may write) and commit."""

    @abstractmethod
    def _now(self, cur: Any) -> float:
        """Seconds since the epoch on the ledger's clock."""

    _lock_row = ""  # appended to the clock row's SELECT: "FOR UPDATE" where the dialect needs it
    _greatest = "max"
    _transient_errors: tuple[type[BaseException], ...] = ()

    def _sql(self, statement: str) -> str:
        return statement

    # Operations -----------------------------------------------------------------------------------
    def claim(self, host: str, limits: HostLimits) -> Claim:
        """Check the host's pause and byte windows; if they allow it, reserve the next request slot."""

        def body(cur: Any) -> Claim:
            now = self._now(cur)
            next_slot, paused_until = self._clock_row(cur, host)
            wait, why = 0.0, None
            if limits.bytes_per_hour is not None or limits.bytes_per_day is not None:
                minute = int(now // 60)
                # Old minutes go here, in the transaction that holds the host's row anyway: the
                # table stays at most 1,440 rows per host.
                cur.execute(self._sql("DELETE FROM inat_host_bytes WHERE host = ? AND minute <= ?"),
                            (host, minute - DAY_MINUTES))
                window = DAY_MINUTES if limits.bytes_per_day is not None else HOUR_MINUTES
                cur.execute(self._sql("SELECT minute, bytes FROM inat_host_bytes WHERE host = ? AND minute > ? "
                                      "ORDER BY minute"), (host, minute - window))
                wait, why = budget_wait(host, limits, [(int(m), int(b)) for m, b in cur.fetchall()], now)
            if paused_until > now and paused_until - now > wait:
                wait = paused_until - now
                why = f"{host}: paused after throttling, {wait:.0f} s left"
            if wait > 0:
                return Claim(wait, why)
            slot_wait = 0.0
            if limits.requests_per_second:
                slot = max(now, next_slot)
                cur.execute(self._sql("UPDATE inat_host_clock SET next_slot = ? WHERE host = ?"),
                            (slot + 1.0 / limits.requests_per_second, host))
                slot_wait = slot - now
            return Claim(0.0, None, slot_wait)

        return self._run(body, write=True)

    def record(self, host: str, nbytes: int) -> None:
        """Add ``nbytes`` received from ``host`` to the current minute."""
        if nbytes <= 0:
            return

        def body(cur: Any) -> None:
            minute = int(self._now(cur) // 60)
            cur.execute(self._sql(
                "INSERT INTO inat_host_bytes (host, minute, bytes) VALUES (?, ?, ?) ON CONFLICT (host, minute) "
                "DO UPDATE SET bytes = inat_host_bytes.bytes + excluded.bytes"), (host, minute, nbytes))

        self._run(body, write=True)

    def pause(self, host: str, seconds: float) -> None:
        """Hold every worker's requests to ``host`` for ``seconds`` (it answered 429 or 503)."""

        def body(cur: Any) -> None:
            now = self._now(cur)
            self._clock_row(cur, host)
            cur.execute(self._sql(f"UPDATE inat_host_clock SET paused_until = {self._greatest}(paused_until, ?) "
                                  "WHERE host = ?"), (now + seconds, host))

        self._run(body, write=True)

    def used(self, host: str, window_minutes: int) -> int:
        """Bytes recorded for ``host`` in the last ``window_minutes`` whole minutes."""

        def body(cur: Any) -> int:
            minute = int(self._now(cur) // 60)
            cur.execute(self._sql("SELECT COALESCE(SUM(bytes), 0) FROM inat_host_bytes WHERE host = ? AND minute > ?"),
                        (host, minute - window_minutes))
            return int(cur.fetchone()[0])

        return self._run(body, write=False)

    def close(self) -> None:
        self._disconnect()

    # Helpers ----------------------------------------------------------------------------------
    def _clock_row(self, cur: Any, host: str) -> tuple[float, float]:
        cur.execute(self._sql("INSERT INTO inat_host_clock (host, next_slot, paused_until) VALUES (?, 0, 0) "
                              "ON CONFLICT (host) DO NOTHING"), (host,))
        cur.execute(self._sql(f"SELECT next_slot, paused_until FROM inat_host_clock WHERE host = ? {self._lock_row}"),
                    (host,))
        next_slot, paused_until = cur.fetchone()
        return float(next_slot), float(paused_until)

    def _create_schema(self, cur: Any) -> None:
        for statement in _SCHEMA:
            cur.execute(statement)

    def _run(self, body: Callable[[Any], T], *, write: bool) -> T:
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                self._connect()
                if not self._schema_ready:
                    self._transaction(self._create_schema, write=True)
                    self._schema_ready = True
                return self._transaction(body, write=write)
            except self._transient_errors as exc:
                self._disconnect()
                if attempt == _ATTEMPTS:
                    raise DownloadError(
                        f"the shared host budget at {redact(self.url)} cannot be used: {exc}".strip()
                        + "; downloads stop rather than exceed iNaturalist's limits. Check that the database "
                        "is running and reachable (INAT_HOST_BUDGET, or the Dagster instance's storage), "
                        "then rerun: photos already on disk are kept."
                    ) from exc
                delay = _RETRY_BASE * 2 ** (attempt - 1)
                log.warning("host budget at %s: %s; retrying in %.1f s", redact(self.url), exc, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover


class SqliteLedger(HostBudgetLedger):
    """The ledger in a SQLite file: shared by the processes of one machine.

    WAL mode with ``synchronous=NORMAL``: a commit is a write to the log, no fsync (a power cut
    can lose the last few records, i.e. let a few photos' bytes go uncounted). ``BEGIN IMMEDIATE``
    takes the write lock up front, so a claim's check and reservation are one atomic step.
    """

    _transient_errors = (sqlite3.OperationalError,)

    def __init__(self, url: str, path: Path) -> None:
        super().__init__(url)
        self.path = path
        self._con: sqlite3.Connection | None = None

    def _connect(self) -> None:
        if self._con is not None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DownloadError(f"cannot create the folder of the host budget file {self.path}: {exc}") from exc
        con = sqlite3.connect(self.path, timeout=60.0, isolation_level=None, check_same_thread=False)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")
        self._con = con

    def _disconnect(self) -> None:
        if self._con is not None:
            con, self._con = self._con, None
            con.close()

    def _transaction(self, body: Callable[[Any], T], *, write: bool) -> T:
        assert self._con is not None
        cur = self._con.cursor()
        cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            result = body(cur)
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        cur.execute("COMMIT")
        return result

    def _now(self, cur: Any) -> float:
        return time.time()


class PostgresLedger(HostBudgetLedger):
    """The ledger in a PostgreSQL database, on the database's clock; the host's clock row is locked
    (``SELECT ... FOR UPDATE``) for the length of a claim, so claims of one host are serialised."""

    _lock_row = "FOR UPDATE"
    _greatest = "GREATEST"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        try:
            # psycopg2, the driver dagster-postgres runs on: one PostgreSQL driver for the whole project.
            import psycopg2
        except ImportError as exc:
            raise DownloadError(
                f"the host budget {redact(url)} is a PostgreSQL database, but psycopg2 is not installed: "
                "pip install 'inat-assets[postgres]'"
            ) from exc
        self._driver = psycopg2
        self._transient_errors = (psycopg2.OperationalError, psycopg2.InterfaceError)
        self._con: Any = None

    def _sql(self, statement: str) -> str:
        return statement.replace("?", "%s")

    def _connect(self) -> None:
        if self._con is None:
            # A SQLAlchemy-style scheme (postgresql+psycopg2://) names a driver libpq does not know.
            scheme, _, rest = self.url.partition("://")
            self._con = self._driver.connect(f"{scheme.split('+')[0]}://{rest}", connect_timeout=10)

    def _disconnect(self) -> None:
        if self._con is not None:
            con, self._con = self._con, None
            try:
                con.close()
            except Exception:  # a connection the server already dropped
                log.debug("closing the host budget connection failed", exc_info=True)

    def _transaction(self, body: Callable[[Any], T], *, write: bool) -> T:
        with self._con, self._con.cursor() as cur:  # psycopg2: commits, or rolls back on an exception
            return body(cur)

    def _now(self, cur: Any) -> float:
        cur.execute("SELECT EXTRACT(EPOCH FROM clock_timestamp())")
        return float(cur.fetchone()[0])

    def _create_schema(self, cur: Any) -> None:
        # Two workers creating the tables at once would collide on the catalog (CREATE ... IF NOT
        # EXISTS is not safe against a concurrent create): one at a time, under a transaction lock.
        cur.execute("SELECT pg_advisory_xact_lock(hashtext('inat_host_budget_schema'))")
        super()._create_schema(cur)


def open_ledger(url: str) -> HostBudgetLedger:
    """The ledger a ``host_budget`` URL names (see the module docstring); connects on first use."""
    scheme = url.partition("://")[0].lower()
    if scheme == "sqlite":
        # SQLAlchemy's form: sqlite:/// then the path, so an absolute path gives four slashes.
        path = unquote(url[len("sqlite:///"):]) if url.lower().startswith("sqlite:///") else ""
        if not path.startswith("/"):
            raise DownloadError(f"host budget {url!r}: a SQLite ledger needs an absolute path, sqlite:////abs/file.db")
        return SqliteLedger(url, Path(path))
    if scheme.split("+")[0] in ("postgresql", "postgres"):
        return PostgresLedger(url)
    raise DownloadError(
        f"host budget {redact(url)!r} is not a ledger URL: use sqlite:////absolute/file.db or "
        "postgresql://user:password@host:port/database (INAT_HOST_BUDGET)"
    )


class AsyncLedger:
    """A ledger for one event loop: its calls run on one thread of their own, so a database round
    trip never blocks the downloads; byte records and pauses are sent without waiting for them.

    A record or pause that failed is raised by the next ``claim`` (the run stops rather than
    download on an undercounted budget).
    """

    def __init__(self, ledger: HostBudgetLedger) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.ledger = ledger
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="inat-host-budget")
        self._failed: BaseException | None = None
        self._lock = threading.Lock()

    async def claim(self, host: str, limits: HostLimits) -> Claim:
        import asyncio

        self._raise_failure()
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.ledger.claim, host, limits)

    def record(self, host: str, nbytes: int) -> None:
        if nbytes > 0:
            self._executor.submit(self._background, self.ledger.record, host, nbytes)

    def pause(self, host: str, seconds: float) -> None:
        self._executor.submit(self._background, self.ledger.pause, host, seconds)

    def close(self) -> None:
        """Wait for the records still queued, then close the connection (a failure was logged)."""
        self._executor.submit(self._background, self.ledger.close)
        self._executor.shutdown(wait=True)

    def _background(self, call: Callable[..., None], *args: Any) -> None:
        try:
            call(*args)
        except BaseException as exc:
            log.error("host budget at %s: %s", redact(self.ledger.url), exc)
            with self._lock:
                self._failed = self._failed or exc

    def _raise_failure(self) -> None:
        with self._lock:
            failed = self._failed
        if failed is not None:
            raise failed
