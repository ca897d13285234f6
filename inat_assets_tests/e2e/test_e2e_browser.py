"""The UI as a person sees it, in Debian's chromium driven by Playwright: the global lineage and the
image batches' partitions page name every asset and show none of them failed (red)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from inat_assets_tests.e2e.conftest import FilledDemo
from inat_assets_tests.e2e.harness import artifacts_dir

pytestmark = pytest.mark.e2e

# Without the networking flags Chromium calls Google's hosts at start, which this closed network refuses.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]


def _no_browser(reason: str) -> None:
    """Fail in CI (where .ci/run installs chromium and playwright), skip elsewhere."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"no browser for the UI test in CI: {reason} (.ci/run installs both)")
    pytest.skip(f"no browser for the UI test: {reason}")


@pytest.fixture(scope="module")
def page() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _no_browser("the playwright package is not installed (pip install -e '.[dev]')")
    chromium = os.environ.get("INAT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        _no_browser(f"{chromium} does not exist (apt-get install -y chromium)")
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile, sync_playwright() as playwright:
        # A persistent context is how Playwright takes a --user-data-dir: a new, empty profile.
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=chromium, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1600, "height": 1000},
        )
        try:
            yield context.new_page()
        finally:
            context.close()


def _shoot(page: Any, name: str) -> Path:
    path = artifacts_dir() / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def test_lineage_page_shows_every_asset(filled_demo: FilledDemo, page: Any) -> None:
    page.goto(f"{filled_demo.ui.base_url}/asset-groups", wait_until="networkidle")
    page.wait_for_timeout(3000)
    _shoot(page, "lineage")
    print(page.inner_text("body")[:3000])


def test_partitions_page(filled_demo: FilledDemo, page: Any) -> None:
    key = sorted(filled_demo.expected.partitioned)[0]
    page.goto(f"{filled_demo.ui.base_url}/assets/{key}?view=partitions", wait_until="networkidle")
    page.wait_for_timeout(3000)
    _shoot(page, "partitions")
    print(page.inner_text("body")[:3000])
