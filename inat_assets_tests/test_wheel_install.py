"""A wheel of the project, installed without the repository around it, loads the whole graph.

The tests elsewhere import the editable checkout, where a pyproject.toml sits above the package. An
installed wheel has none (deploy/Dockerfile installs one), and inat_assets.definitions once needed it to
find the dataset declarations ("Could not find config file"). Offline: the wheel is built with this venv's
setuptools (`--no-build-isolation`) and installed without dependencies into a folder of its own, which is
put first on PYTHONPATH so it wins over this venv's editable copy; the dependencies are this venv's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from inat_assets import definitions

REPO = Path(__file__).resolve().parents[1]
PACKAGE_SOURCES = ("pyproject.toml", "README.md", "inat_assets")


def copy_project_sources(dest: Path, sources: tuple[str, ...] = PACKAGE_SOURCES) -> Path:
    """What a package build reads, copied out of the checkout (a build writes build/ and *.egg-info there)."""
    dest.mkdir(parents=True, exist_ok=True)
    for source in sources:
        if (REPO / source).is_dir():
            shutil.copytree(REPO / source, dest / source, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(REPO / source, dest / source)
    return dest


def installed_graph(site: Path, cwd: Path) -> tuple[Path, set[str]]:
    """Where `inat_assets` is imported from with `site` first on the path, and the asset keys it loads."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INAT_", "DAGSTER_HOME", "PYTHONPATH"))}
    env.update(PYTHONPATH=str(site), DAGSTER_HOME=str(cwd), INAT_DATA_DIR=str(cwd / "data"))
    probe = subprocess.run(
        [sys.executable, "-c", "import json, inat_assets, inat_assets.definitions as d; print(json.dumps("
         "[inat_assets.__file__, sorted(k.to_user_string() for k in d.defs.resolve_all_asset_keys())]))"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr[-3000:]
    location, keys = json.loads(probe.stdout.strip().splitlines()[-1])
    return Path(location), set(keys)


def declared_datasets() -> list[str]:
    return sorted(p.parent.name for p in (REPO / "inat_assets" / "defs" / "datasets").glob("*/defs.yaml"))


def test_an_installed_wheel_loads_every_declared_dataset(tmp_path: Path) -> None:
    source = copy_project_sources(tmp_path / "source")
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(dist), str(source)],
        check=True, timeout=300,
    )  # fmt: skip
    (wheel,) = dist.glob("inat_assets-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    # The declarations are package data; without them the graph would load with no datasets at all.
    assert {f"inat_assets/defs/datasets/{name}/defs.yaml" for name in declared_datasets()} <= names
    assert not any(name.endswith("pyproject.toml") for name in names)

    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
        check=True, timeout=300,
    )  # fmt: skip
    shutil.rmtree(source)  # nothing of the checkout is left to find
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()

    location, keys = installed_graph(site, elsewhere)
    assert location.is_relative_to(site)
    assert not [p for p in location.parents if (p / "pyproject.toml").exists()], "a pyproject.toml is above the copy"
    # The same graph as the checkout's, which has every declared dataset's assets.
    assert keys == {k.to_user_string() for k in definitions.defs.resolve_all_asset_keys()}
    assert declared_datasets(), "no dataset declarations found in the checkout"
    for name in declared_datasets():
        assert {f"{name}/fetch_parquet", f"{name}/image_batches", f"{name}/training_dataset"} <= keys
