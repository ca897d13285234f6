"""Stage 1: the Darwin Core Archive zip (downloaded when INAT_DWCA_SOURCE is a URL)."""

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from inat_assets.dwca.archive import ArchiveInfo, inspect_archive
from inat_assets.dwca.source import last_modified_iso, local_archive, resolve_archive
from inat_assets.resources import DataStoreResource, DwcaResource

ARCHIVE_GROUP = "archive"


def locate_archive(dwca: DwcaResource, store: DataStoreResource) -> ArchiveInfo:
    """The archive that `dwca_archive` materialized, inspected again (reads only the zip directory and headers).

    On an object store, from a local copy of the stored archive (made once per version and machine)."""
    paths = store.get()
    return inspect_archive(local_archive(dwca.source(), paths.archive_dir(), paths.scratch_dir("archive")))


@asset(
    group_name=ARCHIVE_GROUP,
    kinds={"zip", "http"},
    description=(
        "iNaturalist's research-grade Darwin Core Archive. A local INAT_DWCA_SOURCE is used in place; "
        "a URL is downloaded to INAT_DATA_DIR/archive/ (resumable, skipped when unchanged). "
        "Validated as a zip; meta.xml and the CSV headers give the members and their columns."
    ),
)
def dwca_archive(context: AssetExecutionContext, dwca: DwcaResource, store: DataStoreResource) -> MaterializeResult:
    paths = store.get()
    source = resolve_archive(
        dwca.source(), paths.archive_dir(), log=context.log.info, cache_dir=paths.scratch_dir("archive")
    )
    info = inspect_archive(source.path)
    for warning in info.warnings:
        context.log.warning(warning)
    members = "\n".join(f"| {name} | {size:,} |" for name, size in sorted(info.members.items()))
    return MaterializeResult(
        metadata={
            "path": MetadataValue.path(source.stored_at or str(info.path)),
            "origin": source.origin,
            "size_bytes": info.size,
            "etag": source.etag or "",
            "last_modified": last_modified_iso(source.last_modified) or "",
            "bytes_downloaded": source.bytes_downloaded,
            "members": MetadataValue.md("| member | bytes |\n|---|---|\n" + members),
            "observations_member": info.observations.name,
            "media_member": info.media.name,
            "observation_columns": len(info.observations.columns),
            "media_columns": len(info.media.columns),
            "layout": info.layout,
            "extra_columns": ", ".join(info.extra_columns) or "none",
            "warnings": "\n".join(info.warnings) or "none",
        }
    )
