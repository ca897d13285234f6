"""The one Definitions object: the shared archive and tables, every declared dataset, and the resources.

Datasets are Dagster Components declared in ``inat_assets/defs/datasets/<name>/defs.yaml``; they are
loaded here from the imported ``inat_assets.defs`` package, so ``dagster dev -w workspace.yaml``,
``dagster asset materialize -m inat_assets.definitions``, ``dg`` and an installed wheel (the image of
deploy/Dockerfile) all see the same graph.
"""

from pathlib import Path

import dagster as dg

import inat_assets.defs
from inat_assets.assets.archive import dwca_archive
from inat_assets.assets.tables import (
    media_parquet,
    media_reject_share,
    observations_parquet,
    observations_reject_share,
    unique_observation_ids,
)
from inat_assets.automation import (
    archive_automation_sensor,
    archive_check_schedule,
    automate_archive_chain,
    dwca_source,
    dwca_source_observation_job,
)
from inat_assets.resources import inat_resources

tables_job = dg.define_asset_job(
    "tables_job",
    # dwca_source is observed in the same run, so automation knows which archive version the tables came from.
    selection=dg.AssetSelection.assets(dwca_source.key)
    | dg.AssetSelection.assets(dwca_archive, observations_parquet, media_parquet),
    description="Observe the archive source -> archive -> observations/media Parquet (shared by every dataset).",
)


def _project_root() -> Path:
    """The folder holding the package: the repository in a checkout, site-packages once installed.

    Not dg.load_from_defs_folder: it finds the defs module through the pyproject.toml above the package,
    which a wheel does not ship, so a non-editable install failed with "Could not find config file". The
    tree is the same one it builds (ComponentTree for the same defs module); the root only feeds the
    `{{ context.project_root }}` template and state-backed components, neither used by the declarations.
    """
    return Path(inat_assets.defs.__file__).resolve().parents[2]


def _load_definitions() -> dg.Definitions:
    # Built in a function: Dagster's loaders refuse a module with more than one Definitions at its top.
    shared = dg.Definitions(
        assets=[dwca_source, *automate_archive_chain(dwca_archive, [observations_parquet, media_parquet])],
        asset_checks=[observations_reject_share, media_reject_share, unique_observation_ids],
        jobs=[tables_job, dwca_source_observation_job],
        schedules=[archive_check_schedule()],
        sensors=[archive_automation_sensor()],
        resources=inat_resources(),
        # In-process: one process per run instead of a run worker plus one subprocess per step, which
        # halves Dagster's per-run overhead (the batch-fill sensor's runs already use it). Trade-off: the
        # steps of one run execute one after another (observations and media Parquet no longer overlap).
        executor=dg.in_process_executor,
    )
    tree = dg.ComponentTree.from_module(defs_module=inat_assets.defs, project_root=_project_root())
    # The defs folder, not the tree's root: the root adds the catalogue of every installed component
    # library (for `dg list`), importing each one (dagster_aws alone: 0.7 s) in every process that loads
    # these definitions, each batch run included. The tree itself still goes to the UI.
    declared = tree.build_defs(Path(inat_assets.defs.__file__).parent)
    return dg.Definitions.merge(shared, declared, dg.Definitions(component_tree=tree))


defs = _load_definitions()
