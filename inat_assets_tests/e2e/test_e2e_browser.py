"""The UI as a person sees it, in Debian's chromium driven by Playwright: the global lineage and the
image batches' partitions page name every asset and show none of them failed (red)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from inat_assets.cli.ui import lineage_url
from inat_assets_tests.e2e.conftest import FilledDemo
from inat_assets_tests.e2e.harness import artifacts_dir

pytestmark = pytest.mark.e2e

# Without the networking flags Chromium calls Google's hosts at start, which this closed network refuses.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]


# Wide enough that the sample's graph is drawn with full nodes (name, status, checks); narrower, Dagster
# zooms out to name-only boxes with shortened names.
VIEWPORT = {"width": 2400, "height": 1300}


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
            viewport=VIEWPORT,
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


# Each asset node of the lineage graph, with its full name (a tooltip attribute: the visible name may be
# shortened with an ellipsis) and the red colour tokens of anything inside it. Dagster paints a failed
# materialization and a failed check with --color-background-red / --color-text-red / --color-accent-red.
_ASSET_NODES = """() => {
  const box = f => ({x: +f.getAttribute('x'), y: +f.getAttribute('y'),
                     w: +f.getAttribute('width'), h: +f.getAttribute('height')});
  const objects = [...document.querySelectorAll('svg foreignObject')];
  // Group boxes are foreignObjects whose whole text is the group's name; an asset node is drawn inside one.
  const groups = objects.filter(f => !f.querySelector('[class*="assetNodeContainer"]') && f.textContent.trim())
                        .map(f => ({name: f.textContent.trim(), ...box(f)}));
  return [...document.querySelectorAll('[class*="assetNodeContainer"]')].map(node => {
    const at = box(node.closest('foreignObject'));
    const group = groups.find(g => at.x >= g.x && at.y >= g.y && at.x + at.w <= g.x + g.w && at.y + at.h <= g.y + g.h);
    return {
      name: (node.querySelector('[data-tooltip]') || node).getAttribute('data-tooltip') || node.textContent,
      group: group ? group.name : null,
      text: node.textContent,
      red: [...node.querySelectorAll('[style]'), node].map(e => e.getAttribute('style') || '')
             .filter(style => /--color-[a-z-]*red/.test(style)),
    };
  });
}"""


def drawn_names(nodes: list[dict]) -> set[str]:
    """Full asset keys of the drawn nodes: a node shows the last part of its key (``fetch_parquet``) inside
    its group's box, so a prefixed key (``plants/fetch_parquet``) is matched by the group box that holds it."""
    return {f"{n['group']}/{n['name']}" if n["group"] and n["group"] != n["name"] else n["name"] for n in nodes} | {
        n["name"] for n in nodes
    }


def _asset_nodes_with_status(page: Any, expected: set[str], timeout_ms: float = 60_000) -> list[dict]:
    """The asset nodes once every expected one is drawn with its status loaded ("Loading..." gone)."""
    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        nodes = page.evaluate(_ASSET_NODES)
        ready = expected <= drawn_names(nodes) and not any("Loading" in n["text"] for n in nodes)
        if ready or time.monotonic() > deadline:
            return nodes
        page.wait_for_timeout(500)


def test_lineage_opens_with_the_whole_graph_and_no_asset_red(filled_demo: FilledDemo, page: Any) -> None:
    expected = set(filled_demo.expected.parents)
    groups = {node.group for node in filled_demo.ui.client.asset_graph().values()}
    filled_demo.ui.client.set_nux_seen()  # Dagster's newsletter dialog would cover the graph
    page.goto(lineage_url(filled_demo.ui.base_url, groups), wait_until="networkidle")
    nodes = _asset_nodes_with_status(page, expected)
    _shoot(page, "lineage")
    names = drawn_names(nodes)
    assert expected <= names, f"asset nodes missing from the lineage: {sorted(expected - names)}"
    red = {n["name"]: n["red"] for n in nodes if n["red"]}
    assert not red, f"assets shown red (failed materialization or check): {red}"
    for node in nodes:
        if node["name"] == "dwca_source":  # an observable source: observed, not materialized
            assert "Never observed" not in node["text"], node["text"]
        else:
            assert "Materialized" in node["text"] or "100% filled" in node["text"], node["text"]


def test_partitions_page_shows_every_batch_materialized(filled_demo: FilledDemo, page: Any) -> None:
    filled_demo.ui.client.set_nux_seen()
    for key, statuses in filled_demo.partitions.items():
        page.goto(f"{filled_demo.ui.base_url}/assets/{key}?view=partitions", wait_until="networkidle")
        page.get_by_text(f"Materialized ({len(statuses.materialized)})").wait_for(timeout=60_000)
        _shoot(page, f"partitions-{key.replace('/', '-')}")
        body = page.inner_text("body")
        assert "Failed (0)" in body and "Missing (0)" in body, body[:2000]
        for batch in statuses.materialized:
            assert batch in body, f"{batch} is not listed on the partitions page of {key}"


def test_training_dataset_plots_render_in_the_asset_metadata(filled_demo: FilledDemo, page: Any) -> None:
    """The plots are markdown images with a data: URI; the UI draws them in its Show Markdown dialog."""
    filled_demo.ui.client.set_nux_seen()
    # The chain's run built plants/training_dataset (unpartitioned) before any batch: empty, plots drawn.
    page.goto(f"{filled_demo.ui.base_url}/assets/plants/training_dataset", wait_until="networkidle")
    page.locator("tr", has_text="plot_photos_per_class").get_by_text("Show Markdown").click()
    image = page.locator('img[alt="photos_per_class"]')
    image.wait_for(timeout=30_000)
    _shoot(page, "training-dataset-plot")
    assert image.get_attribute("src").startswith("data:image/png;base64,")
    assert image.evaluate("img => img.complete ? img.naturalWidth : 0") > 100  # decoded, not a broken image
