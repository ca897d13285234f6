"""Byte budgets, host pauses and the small helpers around the engine."""

from __future__ import annotations

import asyncio
import time

import pytest

from inat_assets.download import HostLimits, allowed_hosts_from_env, batch_key
from inat_assets.download.files import sniff_image
from inat_assets.download.politeness import HostGate


def test_byte_budget_makes_the_host_wait_until_the_window_frees_up() -> None:
    gate = HostGate("static.example")
    limits = HostLimits(bytes_per_hour=1000, bytes_per_day=10_000)
    now = 1_000_000.0
    gate.record(600, now=now - 30 * 60)  # half an hour ago
    gate.record(500, now=now)
    wait, note = gate._budget_wait(limits, now)
    # The budget frees up when the bytes from 30 minutes ago leave the one-hour window.
    assert 29 * 60 <= wait <= 31 * 60
    assert note and "per hour budget used up" in note and "static.example" in note

    daily = HostLimits(bytes_per_day=1000)
    wait, note = gate._budget_wait(daily, now)
    assert wait > 23 * 3600 and note and "per day" in note
    assert gate._budget_wait(HostLimits(bytes_per_hour=5000), now) == (0.0, None)


def test_acquire_waits_on_pause_and_then_proceeds() -> None:
    gate = HostGate("h")
    gate.pause(0.3)
    started = time.monotonic()
    asyncio.run(gate.acquire(HostLimits()))
    assert time.monotonic() - started >= 0.29


def test_byte_budget_wait_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    gate = HostGate("h")
    notes: list[str | None] = []
    gate.record(2000)
    limits = HostLimits(bytes_per_hour=1000)
    calls = iter([(10.0, "h: budget used up"), (0.0, None)])
    monkeypatch.setattr(gate, "_budget_wait", lambda limits, now: next(calls))
    monkeypatch.setattr("inat_assets.download.politeness._MAX_SLEEP", 0.01)
    asyncio.run(gate.acquire(limits, notes.append))
    assert notes == ["h: budget used up", None]


def test_allowed_hosts_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INAT_ALLOWED_HOSTS", raising=False)
    assert "static.inaturalist.org" in allowed_hosts_from_env()
    monkeypatch.setenv("INAT_ALLOWED_HOSTS", " Mirror.Example , 127.0.0.1,")
    assert allowed_hosts_from_env() == ("mirror.example", "127.0.0.1")


def test_batch_key() -> None:
    assert batch_key(50027543, 50_000) == "batch-001000"
    assert batch_key(49_999, 50_000) == "batch-000000"
    with pytest.raises(ValueError):
        batch_key(1, 0)


def test_sniff_image() -> None:
    assert sniff_image(b"\xff\xd8\xff\xe0rest") == "jpg"
    assert sniff_image(b"\x89PNG\r\n\x1a\nrest") == "png"
    assert sniff_image(b"GIF89a....") == "gif"
    assert sniff_image(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "webp"
    assert sniff_image(b"<?xml version") is None
    assert sniff_image(b"") is None
