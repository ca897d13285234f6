"""The graph runs itself: a weekly look at the archive, automation conditions, and a batch-fill sensor.

- `dwca_source` is an observable source upstream of `dwca_archive`. Its data version is the archive's
  fingerprint (`inat_assets.dwca.observe`): size + mtime for a local file, ETag or Last-Modified for
  a URL (asked with a conditional HEAD). The schedule `dwca_source_weekly` observes it; nothing is
  downloaded to do so.
- `ARCHIVE_CHAIN_CONDITION` (on dwca_archive, the tables and the fetch lists) requests an asset when an
  upstream asset got a new data version, when its own code version (a dataset's declaration) changed,
  or when it is missing; the sensor `archive_automation` evaluates it. A new observation with the same
  version requests nothing.
- `batch_fill_sensor(image_asset, dataset)` requests that dataset's missing image batches a bounded
  number at a time and retries failed ones later with exponential backoff, up to a limit.

Everything here that can start a download is STOPPED until turned on (UI: Automation page, or
`dagster schedule start` / `dagster sensor start`); see the README's operating guide.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from dagster import (
    AssetDep,
    AssetExecutionContext,
    AssetKey,
    AssetPartitionStatus,
    AssetRecordsFilter,
    AssetsDefinition,
    AssetSelection,
    AssetSpec,
    AutomationCondition,
    AutomationConditionSensorDefinition,
    DagsterInstance,
    DagsterInvalidConfigError,
    DagsterRunStatus,
    DataVersion,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    DynamicPartitionsDefinition,
    ObserveResult,
    RunRequest,
    RunsFilter,
    ScheduleDefinition,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    define_asset_job,
    observable_source_asset,
    sensor,
)

from inat_assets.batches import read_outdated
from inat_assets.dwca.observe import ArchiveFingerprint, observe_archive
from inat_assets.errors import InatAssetsError
from inat_assets.resources import DataStoreResource, DwcaResource

ARCHIVE_GROUP = "archive"
DWCA_SOURCE_KEY = AssetKey("dwca_source")

# iNaturalist republishes the archive weekly; looking on Tuesday 04:00 UTC leaves a day's margin after
# a Monday publication. INAT_ARCHIVE_CHECK_CRON overrides it (any cron expression, UTC).
DEFAULT_ARCHIVE_CHECK_CRON = "0 4 * * 2"


# --- the source ------------------------------------------------------------------------------------

def _previous_fingerprint(instance: DagsterInstance) -> ArchiveFingerprint | None:
    """The last observation's validators, so the HEAD can be conditional (304 = unchanged)."""
    records = instance.fetch_observations(DWCA_SOURCE_KEY, limit=1).records
    observation = records[0].asset_observation if records else None
    if observation is None:
        return None
    meta = {k: getattr(v, "value", v) for k, v in observation.metadata.items()}
    version = observation.tags.get("dagster/data_version")
    if not version or not meta.get("source"):
        return None
    return ArchiveFingerprint(
        version=version,
        source=str(meta["source"]),
        etag=str(meta.get("etag") or "") or None,
        last_modified=str(meta.get("http_last_modified") or "") or None,
    )


@observable_source_asset(
    name=DWCA_SOURCE_KEY.path[-1],
    group_name=ARCHIVE_GROUP,
    tags={"dagster/kind/http": "", "dagster/kind/file": ""},  # observable_source_asset takes no kinds=
    description=(
        "The published archive at INAT_DWCA_SOURCE, looked at without downloading it: its data version is "
        "size + mtime of a local file, or the ETag (else Last-Modified) of a URL, asked with a conditional "
        "HEAD. Observed weekly by the schedule dwca_source_weekly; a new version makes dwca_archive stale."
    ),
)
def dwca_source(context: AssetExecutionContext, dwca: DwcaResource) -> ObserveResult:
    fingerprint = observe_archive(dwca.source(), previous=_previous_fingerprint(context.instance))
    state = "unchanged (HTTP 304)" if fingerprint.not_modified else f"version {fingerprint.version}"
    context.log.info(f"{dwca.dwca_source}: {state}")
    return ObserveResult(
        data_version=DataVersion(fingerprint.version),
        metadata={
            "source": fingerprint.source,
            "size_bytes": fingerprint.size if fingerprint.size is not None else -1,
            "modified": fingerprint.modified or "",
            "etag": fingerprint.etag or "",
            "http_last_modified": fingerprint.last_modified or "",
            "not_modified": fingerprint.not_modified,
        },
    )


dwca_source_observation_job = define_asset_job(
    "dwca_source_observation",
    selection=AssetSelection.assets(DWCA_SOURCE_KEY),
    description="Look at INAT_DWCA_SOURCE (HEAD or stat) and record its version; downloads nothing.",
)


def archive_check_schedule(cron: str | None = None) -> ScheduleDefinition:
    """`dwca_source_weekly`: observe the source on INAT_ARCHIVE_CHECK_CRON (default Tuesdays 04:00 UTC)."""
    return ScheduleDefinition(
        name="dwca_source_weekly",
        job=dwca_source_observation_job,
        cron_schedule=cron or os.environ.get("INAT_ARCHIVE_CHECK_CRON") or DEFAULT_ARCHIVE_CHECK_CRON,
        execution_timezone="UTC",
        default_status=DefaultScheduleStatus.STOPPED,
        description=(
            "Weekly look at the published archive. With the sensor archive_automation running, a new version "
            "rebuilds dwca_archive, the tables and the fetch lists; then the batch-fill sensors add the new batches."
        ),
    )


# --- automation conditions for the archive -> tables -> fetch list chain -------------------------------

# eager(): requested when missing or when a dependency was updated (a new data version of dwca_source
# counts; a repeated observation with the same version does not), never while a dependency is missing
# or in progress. Plus a changed code version: a dataset's declaration is its fetch list's code version.
ARCHIVE_CHAIN_CONDITION = AutomationCondition.eager().replace(
    "newly_missing",
    (AutomationCondition.newly_missing() | AutomationCondition.code_version_changed()).with_label(
        "newly_missing_or_code_version_changed"
    ),
)


def follow_upstream(asset: AssetsDefinition, *, observe_source: bool = False) -> AssetsDefinition:
    """``asset`` with ARCHIVE_CHAIN_CONDITION; with ``observe_source`` also downstream of `dwca_source`."""

    def automate(spec: AssetSpec) -> AssetSpec:
        deps = [*spec.deps, AssetDep(DWCA_SOURCE_KEY)] if observe_source else spec.deps
        return spec.replace_attributes(deps=deps, automation_condition=ARCHIVE_CHAIN_CONDITION)

    return asset.map_asset_specs(automate)


def automate_archive_chain(archive: AssetsDefinition, followers: Iterable[AssetsDefinition]) -> list[AssetsDefinition]:
    """dwca_archive downstream of dwca_source, and the archive, tables and fetch lists under the condition."""
    return [follow_upstream(archive, observe_source=True), *(follow_upstream(a) for a in followers)]


def archive_automation_sensor() -> AutomationConditionSensorDefinition:
    """`archive_automation`: evaluates every asset's automation condition (image batches have none)."""
    return AutomationConditionSensorDefinition(
        "archive_automation",
        target=AssetSelection.all(),
        default_status=DefaultSensorStatus.STOPPED,
        minimum_interval_seconds=60,
        description=(
            "Rebuilds dwca_archive, the tables and the fetch lists when the archive's observed version, a "
            "dataset declaration, or a missing asset asks for it."
        ),
    )


# --- the batch-fill sensor -----------------------------------------------------------------------------

ATTEMPT_TAG = "inat/batch_attempt"
# On Kubernetes every run is a pod; dagster-k8s takes a run's resource requests from this tag. Batch runs
# and the table conversion need very different pods (a core and ~0.5 GB vs DuckDB's memory and spill disk),
# so the batch runs carry their own (deploy/values.yaml).
K8S_CONFIG_TAG = "dagster-k8s/config"
IN_PROCESS_RUN_CONFIG = {"execution": {"config": {"in_process": {}}}}
PARTITION_TAG = "dagster/partition"
_IN_FLIGHT = [
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
]


def _env_number(name: str, default: float, cast: Callable[[str], float]) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = cast(raw)
    except ValueError:
        raise InatAssetsError(f"{name}={raw!r} is not a number; unset it or give e.g. {default}") from None
    if value < 0:
        raise InatAssetsError(f"{name}={raw!r} must be >= 0")
    return value


def batch_run_tags(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Tags of every image-batch run: INAT_BATCH_K8S_CONFIG (JSON) as `dagster-k8s/config`; none when unset."""
    environ = os.environ if environ is None else environ
    raw = environ.get("INAT_BATCH_K8S_CONFIG", "").strip()
    if not raw:
        return {}
    example = '{"container_config": {"resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}}'
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise InatAssetsError(f"INAT_BATCH_K8S_CONFIG is not JSON ({exc}); give e.g. {example}, or unset it") from None
    if not isinstance(value, dict):
        raise InatAssetsError(f"INAT_BATCH_K8S_CONFIG must be a JSON object such as {example}, not {raw!r}")
    tags = {K8S_CONFIG_TAG: json.dumps(value, separators=(",", ":"), sort_keys=True)}
    try:  # where dagster-k8s is installed (the deploy extra), a wrong key fails when the code loads, not at launch
        from dagster_k8s.job import get_user_defined_k8s_config
    except ImportError:
        return tags
    try:
        get_user_defined_k8s_config(tags)
    except DagsterInvalidConfigError as exc:
        raise InatAssetsError(f"INAT_BATCH_K8S_CONFIG is not a valid {K8S_CONFIG_TAG} tag: {exc}") from None
    return tags


@dataclass(frozen=True)
class BatchFillPolicy:
    """How many batch runs at once, and how failed batches are retried."""

    runs_in_flight: int = 4  # queued + running runs of the dataset's image asset, including other people's
    retry_limit: int = 5  # retries after the first failure; then the batch stays failed
    retry_base_seconds: float = 600.0  # wait before the first retry; doubles for each further failure
    retry_max_seconds: float = 6 * 3600.0

    @classmethod
    def from_env(cls) -> BatchFillPolicy:
        """INAT_BATCH_RUNS_IN_FLIGHT, INAT_BATCH_RETRY_LIMIT, INAT_BATCH_RETRY_BASE_SECONDS."""
        return cls(
            runs_in_flight=int(_env_number("INAT_BATCH_RUNS_IN_FLIGHT", cls.runs_in_flight, int)),
            retry_limit=int(_env_number("INAT_BATCH_RETRY_LIMIT", cls.retry_limit, int)),
            retry_base_seconds=_env_number("INAT_BATCH_RETRY_BASE_SECONDS", cls.retry_base_seconds, float),
        )

    def delay(self, failures: int) -> float:
        """Seconds from the ``failures``-th failure to the next attempt: base, 2*base, 4*base, ... (capped)."""
        return min(self.retry_base_seconds * 2 ** (failures - 1), self.retry_max_seconds)


@dataclass(frozen=True)
class FailedBatch:
    failures: int  # failed attempts counted so far
    retry_at: float  # epoch seconds; no retry before
    retrying: bool = False  # a retry was requested after the last counted failure


@dataclass(frozen=True)
class BatchFillPlan:
    requests: list[tuple[str, int]]  # (batch key, attempt number), in request order
    failed: dict[str, FailedBatch]  # the next cursor: every batch that is failed now, and only those
    gave_up: list[str] = field(default_factory=list)  # batches that just passed the retry limit


def plan_batch_fill(
    keys: Sequence[str],
    statuses: Mapping[str, AssetPartitionStatus | None],
    in_flight_keys: set[str],
    in_flight_runs: int,
    failed: Mapping[str, FailedBatch],
    policy: BatchFillPolicy,
    now: float,
    outdated: Collection[str] = (),
) -> BatchFillPlan:
    """Which batches to request now: due retries first, then missing and outdated batches (materialized,
    but their photos changed at the last fetch list) in key order, within the budget."""
    slots = max(0, policy.runs_in_flight - in_flight_runs)
    next_failed: dict[str, FailedBatch] = {}
    due: list[str] = []
    missing: list[str] = []
    gave_up: list[str] = []
    for key in keys:
        status = statuses.get(key)
        if key in in_flight_keys or status == AssetPartitionStatus.IN_PROGRESS:
            if key in failed:
                next_failed[key] = failed[key]
            continue
        if status == AssetPartitionStatus.FAILED:
            entry = failed.get(key)
            if entry is None or entry.retrying:  # a failure not counted yet
                failures = (entry.failures if entry else 0) + 1
                entry = FailedBatch(failures, now + policy.delay(failures))
                if failures == policy.retry_limit + 1:
                    gave_up.append(key)
            next_failed[key] = entry
            if entry.failures <= policy.retry_limit and now >= entry.retry_at:
                due.append(key)
        elif status is None or key in outdated:
            missing.append(key)
        # MATERIALIZED: done; dropping it from the cursor resets its failure count
    requests: list[tuple[str, int]] = []
    for key in [*due, *missing][:slots]:
        entry = next_failed.get(key)
        if entry is not None:
            next_failed[key] = replace(entry, retrying=True)
        requests.append((key, entry.failures + 1 if entry else 1))
    return BatchFillPlan(requests, next_failed, gave_up)


def still_outdated(instance: DagsterInstance, asset_key: AssetKey, record: Path) -> set[str]:
    """Batches the last fetch list found changed and that have not been materialized since."""
    keys, written_at = read_outdated(record)
    if not keys:
        return set()
    redone = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=asset_key, asset_partitions=keys, after_timestamp=written_at), limit=len(keys)
    ).records
    return set(keys) - {r.partition_key for r in redone}


def in_flight_batches(instance: DagsterInstance, asset_key: AssetKey) -> tuple[set[str], int]:
    """Partition keys of queued/running runs that materialize ``asset_key``, and how many such runs."""
    keys: set[str] = set()
    runs = 0
    for record in instance.get_run_records(RunsFilter(statuses=_IN_FLIGHT)):
        run = record.dagster_run
        if run.asset_selection is None or asset_key not in run.asset_selection:
            continue
        runs += 1
        if PARTITION_TAG in run.tags:
            keys.add(run.tags[PARTITION_TAG])
    return keys, runs


def encode_cursor(failed: Mapping[str, FailedBatch]) -> str:
    # One short entry per currently failed batch (~40 bytes): bounded by the number of batches.
    return json.dumps(
        {"failed": {k: [e.failures, round(e.retry_at, 1), int(e.retrying)] for k, e in sorted(failed.items())}},
        separators=(",", ":"),
    )


def decode_cursor(cursor: str | None) -> dict[str, FailedBatch]:
    if not cursor:
        return {}
    try:
        entries = json.loads(cursor)["failed"]
        return {k: FailedBatch(int(n), float(at), bool(r)) for k, (n, at, r) in entries.items()}
    except (ValueError, KeyError, TypeError):
        return {}  # an unreadable cursor only forgets retry counts; statuses come from the instance


def batch_fill_sensor(
    image_asset: AssetsDefinition,
    dataset: str,
    *,
    policy: BatchFillPolicy | None = None,
    clock: Callable[[], float] = time.time,
    minimum_interval_seconds: int = 60,
) -> SensorDefinition:
    """`<dataset>_batch_fill`: keeps up to ``policy.runs_in_flight`` batch runs of ``image_asset`` going.

    ``image_asset`` is a dataset's image asset, partitioned by a DynamicPartitionsDefinition of batch keys.
    """
    partitions_def = image_asset.partitions_def
    if not isinstance(partitions_def, DynamicPartitionsDefinition) or not partitions_def.name:
        raise InatAssetsError(f"{image_asset.key.to_user_string()} is not partitioned by named dynamic partitions")
    asset_key = image_asset.key
    policy = policy or BatchFillPolicy.from_env()
    run_tags = batch_run_tags()

    @sensor(
        name=f"{dataset}_batch_fill",
        asset_selection=[asset_key],
        default_status=DefaultSensorStatus.STOPPED,
        minimum_interval_seconds=minimum_interval_seconds,
        description=(
            f"Requests missing batches of {asset_key.to_user_string()}, at most {policy.runs_in_flight} runs in "
            f"flight (INAT_BATCH_RUNS_IN_FLIGHT); retries a failed batch after {policy.retry_base_seconds:.0f} s, "
            f"doubling, at most {policy.retry_limit} times (INAT_BATCH_RETRY_LIMIT), then leaves it failed."
        ),
    )
    def fill(context: SensorEvaluationContext, store: DataStoreResource) -> SensorResult:
        instance = context.instance
        keys = instance.get_dynamic_partitions(partitions_def.name)
        statuses = (instance.get_status_by_partition(asset_key, keys, partitions_def) if keys else None) or {}
        in_flight_keys, in_flight_runs = in_flight_batches(instance, asset_key)
        outdated = still_outdated(instance, asset_key, store.get().outdated_batches(dataset))
        plan = plan_batch_fill(
            keys, statuses, in_flight_keys, in_flight_runs, decode_cursor(context.cursor), policy, clock(), outdated
        )
        for key in plan.gave_up:
            context.log.warning(
                f"{asset_key.to_user_string()} {key}: failed {policy.retry_limit + 1} times; left failed. "
                "See its last run's log; materialize the partition by hand to try again."
            )
        requests = [
            RunRequest(
                partition_key=key,
                asset_selection=[asset_key],
                tags={**run_tags, ATTEMPT_TAG: str(attempt)},
                # A batch run has one step: the default multiprocess executor would only add a second
                # Python process per batch (~8 s of start-up on 2 busy cores, measured in the e2e test).
                run_config=IN_PROCESS_RUN_CONFIG,
            )
            for key, attempt in plan.requests
        ]
        skip = None
        if not requests:
            given_up = sum(1 for e in plan.failed.values() if e.failures > policy.retry_limit)
            skip = (
                f"{len(keys)} batches, {in_flight_runs} runs in flight, {len(plan.failed) - given_up} failed "
                f"(retrying), {given_up} failed for good"
            )
        return SensorResult(run_requests=requests, cursor=encode_cursor(plan.failed), skip_reason=skip)

    return fill
