"""What download-images shows while it runs: a live bar on a real terminal (a pty), lines into a pipe."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console

from inat_assets.cli.progress import LogLines, RunningTotal, TerminalBar, is_interactive, progress_line
from inat_assets.download import Progress
from inat_assets.testing.mirror import MirrorServer
from inat_assets_tests.download.conftest import ANY_PORT_A

REPO = Path(__file__).resolve().parents[2]
ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _command(mirror: MirrorServer, tmp_path: Path, photos: int) -> list[str]:
    ids = list(range(1, photos + 1))
    parquet = tmp_path / "fetch.parquet"
    pq.write_table(pa.table({"photo_id": ids, "url": [mirror.url(i) for i in ids]}), parquet)
    return [sys.executable, "-m", "inat_assets.cli.download_images", "--parquet", str(parquet),
            "--output", str(tmp_path / "out"), "--allow-host", ANY_PORT_A, "--retries", "0", "--concurrency", "4"]


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "NO_COLOR", "COLUMNS", "LINES"):
        env.pop(name, None)
    env["TERM"] = "xterm-256color"
    return env


def run_on_terminal(command: list[str]) -> tuple[int, str]:
    """Run with stdin, stdout and stderr on a fresh 200-column pseudo-terminal; everything it drew."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))
    proc = subprocess.Popen(command, stdin=slave, stdout=slave, stderr=slave, env=_env(), close_fds=True)
    os.close(slave)
    out = bytearray()
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed its side
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    return proc.wait(timeout=60), out.decode(errors="replace")


def test_a_terminal_gets_a_live_bar(mirror: MirrorServer, tmp_path: Path) -> None:
    # 2 photos take 0.8 s, so the bar is drawn several times before the end; photo 3 is gone.
    mirror.set_faults({3: ["404"], 10: ["slow:0.8"], 20: ["slow:0.8"]})
    code, drawn = run_on_terminal(_command(mirror, tmp_path, 30))
    assert code == 1, drawn  # one photo failed
    text = ESCAPE.sub("", drawn)
    assert "\x1b[" in drawn and "\r" in drawn  # drawn in place, with escape sequences
    frames = re.findall(r"(\d+)/30 (\d+) photos/s [\d.]+ MB/s ETA \d:\d\d:\d\d failed (\d+)", text)
    assert len(frames) >= 3, text  # redrawn while it ran (every 0.2 s), not only at the end
    assert frames[-1][0] == "30" and frames[-1][2] == "1"  # the final bar: every photo, one failure
    assert [int(f[0]) for f in frames] == sorted(int(f[0]) for f in frames)  # counts only grow
    assert "| ok " not in text  # not the log lines
    assert "30 photos, ok 29, cached 0, failed permanently 1" in text  # the summary after the bar


def test_a_pipe_gets_plain_lines(mirror: MirrorServer, tmp_path: Path) -> None:
    mirror.set_faults({3: ["404"]})
    env = {**_env(), "FORCE_COLOR": "1"}  # colour forced on is still no terminal: no bar in a log
    done = subprocess.run(_command(mirror, tmp_path, 30), env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert "\x1b" not in done.stderr and "\r" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("[")]
    assert lines and "100.0% 30/30 | ok 29 cached 0 failed 1 |" in lines[-1], done.stderr
    assert "30 photos, ok 29, cached 0, failed permanently 1" in done.stderr


def _progress(**fields: object) -> Progress:
    values: dict[str, object] = dict(done=400, total=1000, ok=380, failed=7, skipped=13, bytes=24_000_000,
                                     rate=95.4, eta_seconds=3725.0, elapsed=4.0, note=None)
    values.update(fields)
    return Progress(**values)  # type: ignore[arg-type]


def test_the_line_format() -> None:
    assert progress_line(_progress(note="static.inaturalist.org: daily budget used, waiting 3,600 s")) == (
        "[########............]  40.0% 400/1,000 | ok 380 cached 13 failed 7 | 95/s | 24.0 MB | ETA 1:02:05"
        " | static.inaturalist.org: daily budget used, waiting 3,600 s"
    )
    assert progress_line(_progress(total=None, eta_seconds=None)) == (
        "400 photos | ok 380 cached 13 failed 7 | 95/s | 24.0 MB"
    )


def test_the_bar_shows_counts_rates_eta_failures_and_the_note_as_is() -> None:
    screen = io.StringIO()
    bar = TerminalBar(Console(file=screen, force_terminal=True, width=200), "plants")
    with bar:
        bar(_progress(note="host [a] waiting for its budget"))  # brackets are text, not rich markup
    text = ESCAPE.sub("", screen.getvalue())
    assert "plants" in text and "400/1,000 95 photos/s 6.0 MB/s ETA 1:02:05 failed 7" in text
    assert "host [a] waiting for its budget" in text


def test_only_an_interactive_terminal_gets_the_bar() -> None:
    assert not is_interactive(io.StringIO())
    read, write = os.pipe()
    with os.fdopen(read) as _, os.fdopen(write, "w") as pipe:
        assert not is_interactive(pipe)
    lines = io.StringIO()
    LogLines(lines)(_progress())
    assert lines.getvalue().count("\n") == 1


def test_running_total_over_batches_and_a_retried_batch() -> None:
    shown: list[Progress] = []
    clock = iter([0.0, 2.0, 4.0, 6.0])
    total = RunningTotal(100, shown.append, lambda: next(clock))
    total("batch-1", _progress(done=30, total=30, ok=28, failed=2, skipped=0, bytes=3000, elapsed=5.0))
    total("batch-2", _progress(done=10, total=70, ok=10, failed=0, skipped=0, bytes=1000, elapsed=1.0))
    # batch-2 fails and runs again: its new run starts over (less elapsed) and finds its 10 photos on disk
    total("batch-2", _progress(done=25, total=70, ok=15, failed=0, skipped=10, bytes=1500, elapsed=0.5))
    last = shown[-1]
    assert (last.done, last.total, last.ok, last.failed, last.skipped) == (55, 100, 43, 2, 10)
    assert last.bytes == 3000 + 1000 + 1500  # every run's downloaded bytes
    assert last.elapsed == 6.0 and round(last.rate, 3) == round(55 / 6, 3)
    assert last.eta_seconds is not None and round(last.eta_seconds, 3) == round(45 / (55 / 6), 3)
