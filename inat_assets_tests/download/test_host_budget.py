"""The host budget ledger's rules, on both stores: a SQLite file and a real PostgreSQL database."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from inat_assets.download import HostLimits
from inat_assets.download.config import DownloadConfig
from inat_assets.download.host_budget import AsyncLedger, budget_wait, open_ledger, redact, sqlite_url
from inat_assets.download.politeness import HostGates
from inat_assets.download.processes import child_config
from inat_assets.errors import DownloadError


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "budget.sqlite")
    return request.getfixturevalue("postgres_url")


def test_two_connections_see_one_budget_one_clock_and_one_pause(ledger_url: str) -> None:
    first, second = open_ledger(ledger_url), open_ledger(ledger_url)  # two workers
    try:
        limits = HostLimits(requests_per_second=2.0, bytes_per_hour=1000)
        assert first.claim("h", limits).slot_wait == 0.0
        # The second worker's request gets the next slot, half a second later, not one of its own.
        assert 0.4 < second.claim("h", limits).slot_wait <= 0.5
        first.record("h", 600)
        second.record("h", 500)
        assert first.used("h", 60) == second.used("h", 60) == 1100
        refused = second.claim("h", limits)
        assert not refused.granted and refused.wait > 58 * 60 and "per hour budget used up" in (refused.why or "")
        assert second.claim("other", limits).granted  # budgets are per host
        first.pause("other", 30)
        paused = second.claim("other", limits)
        assert not paused.granted and 25 < paused.wait <= 30 and "paused after throttling" in (paused.why or "")
    finally:
        first.close()
        second.close()


def test_concurrent_claims_never_share_a_slot(ledger_url: str) -> None:
    rps, per_thread, threads = 10.0, 25, 4  # 100 slots, 0.1 s apart: 10 s of slots, claimed in well under that
    ledger = open_ledger(ledger_url)

    def clock(cur: Any) -> float:
        return ledger._now(cur)

    def next_slot(cur: Any) -> float:
        cur.execute("SELECT next_slot FROM inat_host_clock WHERE host = 'h'")
        return float(cur.fetchone()[0])

    def claim_many() -> None:
        own = open_ledger(ledger_url)  # a connection per thread, as per worker
        try:
            for _ in range(per_thread):
                assert own.claim("h", HostLimits(requests_per_second=rps)).granted
        finally:
            own.close()

    try:
        started = ledger._run(clock, write=False)
        workers = [threading.Thread(target=claim_many) for _ in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(60)
        # Every claim moved the clock by one slot: two claims reading the same next_slot (a lost
        # update) would leave it short of 100 slots after the start.
        assert ledger._run(next_slot, write=False) >= started + threads * per_thread / rps
    finally:
        ledger.close()


def test_unlimited_hosts_never_reach_the_ledger(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "budget.sqlite")
    gates = HostGates(url)
    try:
        asyncio.run(gates.for_host("bucket").acquire(HostLimits()))
        gates.for_host("bucket").record(5000)
    finally:
        gates.close()
    assert not (tmp_path / "budget.sqlite").exists()  # never even connected


def test_a_gate_records_and_pauses_through_the_ledger(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "budget.sqlite")
    limits = HostLimits(requests_per_second=100.0, bytes_per_day=10_000)
    gates = HostGates(url)
    try:
        gate = gates.for_host("static")
        asyncio.run(gate.acquire(limits))
        gate.record(4000)
        gate.pause(120)
    finally:
        gates.close()  # waits for the queued record and pause
    ledger = open_ledger(url)
    try:
        assert ledger.used("static", 24 * 60) == 4000
        assert ledger.claim("static", limits).wait > 100  # another process sees the pause
    finally:
        ledger.close()


def test_a_ledger_that_cannot_be_reached_stops_the_run_with_a_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("inat_assets.download.host_budget._RETRY_BASE", 0.01)
    ledger = AsyncLedger(open_ledger("postgresql://inat:secret@127.0.0.1:1/nowhere"))
    try:
        with pytest.raises(DownloadError) as caught:
            asyncio.run(ledger.claim("static", HostLimits(requests_per_second=5.0)))
    finally:
        ledger.close()
    message = str(caught.value)
    assert "127.0.0.1:1/nowhere" in message and "secret" not in message and "***" in message


def test_ledger_urls_are_checked() -> None:
    with pytest.raises(DownloadError, match="absolute path"):
        open_ledger("sqlite:///relative.db")
    with pytest.raises(DownloadError, match="not a ledger URL"):
        open_ledger("redis://localhost")
    assert redact("postgresql://u:pw@h:5/d") == "postgresql://u:***@h:5/d"
    assert redact("postgresql://u@h/d") == "postgresql://u@h/d"


def test_children_of_a_run_with_a_shared_ledger_keep_the_whole_limits(tmp_path: Path) -> None:
    limits = HostLimits(8.0, 4000, None)
    config = DownloadConfig(processes=4, concurrency=64, host_limits={"h": limits},
                            host_budget=sqlite_url(tmp_path / "b.sqlite"))
    child = child_config(config)
    assert child.concurrency == 16 and child.limits_for("h") == limits  # one budget, drawn on by all four


def test_budget_wait_is_one_rule() -> None:
    now = 1_000_000.0
    minutes = [(int((now - 30 * 60) // 60), 600), (int(now // 60), 500)]
    wait, why = budget_wait("h", HostLimits(bytes_per_hour=1000), minutes, now)
    assert 29 * 60 <= wait <= 31 * 60 and why and "per hour" in why
    assert budget_wait("h", HostLimits(bytes_per_hour=5000), minutes, now) == (0.0, None)
