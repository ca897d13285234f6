"""One writer per key on an object store, across machines: a lease object taken by conditional PUT.

`inat_assets.locks` uses flock, which only the processes of one kernel see. On a store, a lease is a
small JSON object (holder, purpose, expiry) at ``<data dir>/locks/<name>.lease``:

- taken with ``If-None-Match: *``: of two runs starting at once, S3 lets exactly one create it;
- renewed every ``seconds / 4`` by its holder with ``If-Match: <its ETag>``, so it never expires
  while the holder lives;
- taken over when expired (its holder died: killed pod, lost machine) with ``If-Match: <the ETag
  read>``, so of two runs taking over the same dead lease exactly one wins;
- deleted on release.

A dead run's lease therefore blocks the key for at most ``seconds`` (default 120 s: Dagster's retry
of a batch waits 30 s and more, doubling). Expiry is judged by the holder's clock written into the
record: machines must keep their clocks in sync (NTP) to within a small part of ``seconds``.
A holder that could not renew in time (stalled > ``seconds``) and was taken over logs it; its lease's
``lost`` is then True.

On stores without conditional writes (fsspec backends other than S3) take and takeover fall back to
check-then-write, which two simultaneous writers can both pass: see README, "Object storage".
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field

from inat_assets.locks import LockedError
from inat_assets.store.location import Location

log = logging.getLogger("inat_assets.store")

LEASE_SECONDS = 120.0
_POLL_SECONDS = 1.0


@dataclass
class Lease:
    """A held lease; ``release()`` stops renewing it and deletes it (same interface as locks.HeldLock)."""

    location: Location
    etag: str
    seconds: float
    purpose: str
    lost: bool = False
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _renew_forever(self) -> None:
        while not self._stop.wait(self.seconds / 4):
            with self._lock:
                if self._stop.is_set():
                    return
                etag = self.location.replace_if(self.etag, _record(self.purpose, self.seconds))
                if etag is None:
                    self.lost = True
                    log.warning("lease %s was taken over by another run (this one stalled for more than %.0f s)",
                                self.location, self.seconds)
                    return
                self.etag = etag

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            if self.lost:
                return
            try:
                if str(self.location.stat().etag or "") == self.etag:
                    self.location.unlink(missing_ok=True)
            except FileNotFoundError:
                pass

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _record(purpose: str, seconds: float) -> bytes:
    now = time.time()
    return json.dumps(
        {"pid": os.getpid(), "host": socket.gethostname(), "time": now, "expires": now + seconds, "purpose": purpose}
    ).encode()


def _describe(record: dict) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.get("time", 0)))
    left = max(0.0, float(record.get("expires", 0)) - time.time())
    return (f"pid {record.get('pid')} on {record.get('host')} ({record.get('purpose', 'a run')}, since {since}; "
            f"its lease runs out in {left:.0f} s unless renewed)")


def lease(location: Location, *, purpose: str, wait_seconds: float = 0.0, seconds: float = LEASE_SECONDS) -> Lease:
    """Take the lease at ``location``, waiting up to ``wait_seconds``; LockedError naming the holder if not."""
    deadline = time.monotonic() + wait_seconds
    while True:
        etag = location.create(_record(purpose, seconds))
        holder: dict = {}
        if etag is None:
            try:
                current = location.stat().etag
                holder = json.loads(location.read_bytes())
            except FileNotFoundError:
                continue  # released between our two requests: try to create it again
            except ValueError:
                holder = {}
            if current and float(holder.get("expires", 0)) < time.time():
                # Expired: its holder died without releasing it. If-Match makes one taker win.
                etag = location.replace_if(str(current), _record(purpose, seconds))
                if etag is not None:
                    log.warning("took over the expired lease %s of %s", location, _describe(holder))
        if etag is not None:
            held = Lease(location, etag, seconds, purpose)
            held._thread = threading.Thread(target=held._renew_forever, name=f"lease-{location.name}", daemon=True)
            held._thread.start()
            return held
        if time.monotonic() >= deadline:
            raise LockedError(
                f"{location} is held by {_describe(holder) if holder else 'another run'}. Wait for that run to "
                f"finish, or stop it; a lease whose run died expires by itself within {seconds:.0f} s."
            )
        time.sleep(_POLL_SECONDS)
