"""Locks: one holder at a time, the holder named in the refusal, released when the holder dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from inat_assets.locks import LockedError, acquire, is_held, locked


def test_second_taker_is_refused_with_the_holder_named(tmp_path: Path) -> None:
    lock_file = tmp_path / "out" / ".lock"
    with locked(lock_file, purpose="download-images"):
        assert is_held(lock_file)
        with pytest.raises(LockedError, match=rf"pid {os.getpid()} .*download-images"):
            acquire(lock_file, purpose="second", wait_seconds=0.3)
    assert not is_held(lock_file)
    acquire(lock_file, purpose="third").release()


def test_lock_of_a_killed_process_is_free(tmp_path: Path) -> None:
    lock_file = tmp_path / ".lock"
    code = (
        "import sys, time; from pathlib import Path; from inat_assets.locks import acquire; "
        f"acquire(Path({str(lock_file)!r}), purpose='child'); print('held', flush=True); time.sleep(60)"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held"
        assert is_held(lock_file)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        deadline = time.monotonic() + 5
        while is_held(lock_file) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not is_held(lock_file)
    finally:
        child.kill()
