"""Advisory locks between runs: one writer per output, and telling live runs from dead ones.

A lock is ``fcntl.flock`` on a small file. The kernel drops it when the holding process dies, however
it dies (SIGKILL included), so a lock file left on disk by a dead run never blocks anyone, and
"is anyone holding this?" tells a live run's scratch from a dead run's. The file records who took
it (pid, host, time, purpose) so that a refusal can name the holder.

Local and mounted POSIX folders only; on an object store the same role is played by a lease object taken
with a conditional PUT (`inat_assets.store.lease`; `storage.acquire_guard` picks one or the other).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from inat_assets.errors import StorageError


class LockedError(StorageError):
    """Another live process holds the lock; the message names it and what to do."""


@dataclass
class HeldLock:
    path: Path
    _fd: int

    def release(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1


def _holder(path: Path, attempts: int = 10) -> str:
    # The holder writes its record just after taking the lock: a refusal in that instant reads an
    # empty or half-written file, so look again for up to ~0.5 s before giving up on naming it.
    info: dict = {}
    for attempt in range(attempts):
        try:
            info = json.loads(path.read_text())
            break
        except (OSError, ValueError):
            if attempt < attempts - 1:
                time.sleep(0.05)
    if not info:
        return "another process"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("time", 0)))
    return f"pid {info.get('pid')} on {info.get('host')} ({info.get('purpose', 'a run')}, since {started})"


def acquire(path: Path, *, purpose: str, wait_seconds: float = 0.0, poll: float = 0.2) -> HeldLock:
    """Take the lock at ``path`` (created if needed), waiting up to ``wait_seconds``.

    Raises LockedError naming the holder when it is still held after the wait, and StorageError
    when the lock file cannot be created (unwritable folder).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise StorageError(f"cannot create the lock file {path}: {exc.strerror or exc}") from exc
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise LockedError(
                    f"{path.parent} is in use by {_holder(path)}. Wait for that run to finish, or stop it; "
                    f"a lock whose process has died is released by the system, so nothing needs deleting."
                ) from None
            time.sleep(poll)
    record = {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time(), "purpose": purpose}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)
    return HeldLock(path, fd)


@contextlib.contextmanager
def locked(path: Path, *, purpose: str, wait_seconds: float = 0.0) -> Iterator[HeldLock]:
    lock = acquire(path, purpose=purpose, wait_seconds=wait_seconds)
    try:
        yield lock
    finally:
        lock.release()


def is_held(path: Path) -> bool:
    """True when a live process holds the lock at ``path`` (False when the file is absent)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops our probe lock, if we got it
    return False
