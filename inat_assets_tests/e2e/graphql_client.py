"""A small client for the Dagster webserver's GraphQL API (what the UI itself calls), for the e2e tests.

Every document here is validated against the installed Dagster's schema by test_graphql_documents.py,
so a Dagster upgrade that renames a field fails there, in a second, not in a two-minute e2e run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

REPOSITORY_NAME = "__repository__"  # the repository a Definitions object becomes
ASSET_JOB = "__ASSET_JOB"  # the implicit job the UI's "Materialize" launches
RUN_DONE = {"SUCCESS", "FAILURE", "CANCELED"}

LOCATIONS = """
query Locations {
  workspaceOrError {
    __typename
    ... on Workspace { locationEntries { name loadStatus
      locationOrLoadError { __typename ... on PythonError { message } } } }
    ... on PythonError { message }
  }
}"""

ASSET_GRAPH = """
query AssetGraph {
  assetNodes {
    assetKey { path }
    dependencyKeys { path }
    groupName
    isPartitioned
    repository { name location { name } }
  }
}"""

LAUNCH_RUN = """
mutation LaunchRun($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}"""

LAUNCH_BACKFILL = """
mutation LaunchBackfill($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
    ... on PartitionSetNotFoundError { message }
  }
}"""

BACKFILL_STATUS = """
query Backfill($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { status }
    ... on PythonError { message }
  }
}"""

RUN_STATUS = """
query Run($id: ID!) {
  runOrError(runId: $id) {
    __typename
    ... on Run { status }
    ... on PythonError { message }
  }
}"""

RUNS = """
query Runs($filter: RunsFilter) {
  runsOrError(filter: $filter) {
    __typename
    ... on Runs { results { runId status tags { key value } } }
    ... on PythonError { message }
  }
}"""

RUN_EVENTS = """
query RunEvents($id: ID!) {
  logsForRun(runId: $id, limit: 10000) {
    __typename
    ... on EventConnection { events { __typename ... on StepEvent { stepKey } ... on MessageEvent { message } } }
    ... on PythonError { message }
  }
}"""

PARTITION_STATUSES = """
query PartitionStatuses($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    __typename
    ... on AssetNode {
      assetPartitionStatuses {
        __typename
        ... on DefaultPartitionStatuses {
          materializedPartitions failedPartitions unmaterializedPartitions materializingPartitions
        }
      }
    }
  }
}"""

SENSOR_STATE = """
query Sensor($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor { sensorState { id status } }
    ... on PythonError { message }
  }
}"""

START_SENSOR = """
mutation StartSensor($selector: SensorSelector!) {
  startSensor(sensorSelector: $selector) {
    __typename
    ... on Sensor { sensorState { id status } }
    ... on PythonError { message }
    ... on SensorNotFoundError { message }
    ... on UnauthorizedError { message }
  }
}"""

STOP_SENSOR = """
mutation StopSensor($id: String!) {
  stopSensor(id: $id) {
    __typename
    ... on StopSensorMutationResult { instigationState { status } }
    ... on PythonError { message }
    ... on UnauthorizedError { message }
  }
}"""

SCHEDULE_STATE = """
query Schedule($selector: ScheduleSelector!) {
  scheduleOrError(scheduleSelector: $selector) {
    __typename
    ... on Schedule { scheduleState { id status } }
    ... on PythonError { message }
  }
}"""

START_SCHEDULE = """
mutation StartSchedule($selector: ScheduleSelector!) {
  startSchedule(scheduleSelector: $selector) {
    __typename
    ... on ScheduleStateResult { scheduleState { id status } }
    ... on PythonError { message }
    ... on UnauthorizedError { message }
  }
}"""

STOP_SCHEDULE = """
mutation StopSchedule($id: String!) {
  stopRunningSchedule(id: $id) {
    __typename
    ... on ScheduleStateResult { scheduleState { id status } }
    ... on PythonError { message }
    ... on UnauthorizedError { message }
  }
}"""

SET_NUX_SEEN = """
mutation SetNuxSeen {
  setNuxSeen
}"""

DOCUMENTS = [
    SET_NUX_SEEN,
    LOCATIONS, ASSET_GRAPH, LAUNCH_RUN, LAUNCH_BACKFILL, BACKFILL_STATUS, RUN_STATUS, RUNS, RUN_EVENTS,
    PARTITION_STATUSES, SENSOR_STATE, START_SENSOR, STOP_SENSOR, SCHEDULE_STATE, START_SCHEDULE, STOP_SCHEDULE,
]

T = TypeVar("T")


class GraphQLError(AssertionError):
    """The webserver answered with errors, or a result of an unexpected type."""


@dataclass(frozen=True)
class AssetNode:
    key: str  # user string: "plants/image_batches"
    parents: frozenset[str]
    group: str
    partitioned: bool
    location: str


@dataclass(frozen=True)
class PartitionStatuses:
    materialized: frozenset[str]
    failed: frozenset[str]
    unmaterialized: frozenset[str]
    materializing: frozenset[str]


def asset_key_input(key: str) -> dict[str, list[str]]:
    return {"path": key.split("/")}


def _key(node: dict[str, Any]) -> str:
    return "/".join(node["path"])


class DagsterGraphQL:
    def __init__(self, base_url: str, timeout: float = 30.0) -> None:
        self.url = base_url.rstrip("/") + "/graphql"
        self.http = httpx.Client(timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def execute(self, document: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        response = self.http.post(self.url, json={"query": document, "variables": variables or {}})
        response.raise_for_status()
        body = response.json()
        if body.get("errors"):
            raise GraphQLError(f"GraphQL errors: {body['errors']}")
        return body["data"]

    @staticmethod
    def _expect(result: dict[str, Any], typename: str) -> dict[str, Any]:
        if result["__typename"] != typename:
            raise GraphQLError(f"expected {typename}, got {result}")
        return result

    # Workspace and graph ------------------------------------------------------------------------
    def location_statuses(self) -> dict[str, str]:
        """Code location -> load status ("LOADED", "LOADING"); a location that failed to load raises."""
        workspace = self._expect(self.execute(LOCATIONS)["workspaceOrError"], "Workspace")
        statuses = {}
        for entry in workspace["locationEntries"]:
            loaded = entry["locationOrLoadError"]
            if loaded and loaded["__typename"] == "PythonError":
                raise GraphQLError(f"code location {entry['name']} failed to load: {loaded['message']}")
            statuses[entry["name"]] = entry["loadStatus"]
        return statuses

    def asset_graph(self) -> dict[str, AssetNode]:
        return {
            _key(n["assetKey"]): AssetNode(
                key=_key(n["assetKey"]),
                parents=frozenset(_key(d) for d in n["dependencyKeys"]),
                group=n["groupName"],
                partitioned=n["isPartitioned"],
                location=n["repository"]["location"]["name"],
            )
            for n in self.execute(ASSET_GRAPH)["assetNodes"]
        }

    def set_nux_seen(self) -> None:
        """Dismiss Dagster's first-visit newsletter dialog for this instance (as its "Skip" does)."""
        assert self.execute(SET_NUX_SEEN)["setNuxSeen"] is True

    # Runs and backfills -------------------------------------------------------------------------
    def launch_assets(self, location: str, keys: Iterable[str], run_config: dict | None = None) -> str:
        """What the UI's "Materialize" button does for unpartitioned assets: a run of the asset job."""
        params = {
            "selector": {
                "repositoryLocationName": location,
                "repositoryName": REPOSITORY_NAME,
                "jobName": ASSET_JOB,
                "assetSelection": [asset_key_input(k) for k in keys],
            },
            "runConfigData": run_config or {},
        }
        result = self.execute(LAUNCH_RUN, {"params": params})["launchRun"]
        return self._expect(result, "LaunchRunSuccess")["run"]["runId"]

    def launch_backfill_all_partitions(self, keys: Sequence[str], run_config: dict | None = None) -> str:
        params = {
            "assetSelection": [asset_key_input(k) for k in keys],
            "allPartitions": True,
            "runConfigData": run_config or {},
        }
        result = self.execute(LAUNCH_BACKFILL, {"params": params})["launchPartitionBackfill"]
        return self._expect(result, "LaunchBackfillSuccess")["backfillId"]

    def backfill_status(self, backfill_id: str) -> str:
        result = self.execute(BACKFILL_STATUS, {"id": backfill_id})["partitionBackfillOrError"]
        return self._expect(result, "PartitionBackfill")["status"]

    def run_status(self, run_id: str) -> str:
        return self._expect(self.execute(RUN_STATUS, {"id": run_id})["runOrError"], "Run")["status"]

    def runs(self, tags: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """Runs (newest first) as {runId, status, tags: {key: value}}, optionally only those with these tags."""
        run_filter = {"tags": [{"key": k, "value": v} for k, v in (tags or {}).items()]}
        result = self._expect(self.execute(RUNS, {"filter": run_filter})["runsOrError"], "Runs")
        return [
            {"runId": r["runId"], "status": r["status"], "tags": {t["key"]: t["value"] for t in r["tags"]}}
            for r in result["results"]
        ]

    def run_event_types(self, run_id: str) -> list[tuple[str, str | None]]:
        """(event type, step key) of every event of a run, in order."""
        result = self._expect(self.execute(RUN_EVENTS, {"id": run_id})["logsForRun"], "EventConnection")
        return [(e["__typename"], e.get("stepKey")) for e in result["events"]]

    def partition_statuses(self, key: str) -> PartitionStatuses:
        node = self._expect(
            self.execute(PARTITION_STATUSES, {"key": asset_key_input(key)})["assetNodeOrError"], "AssetNode"
        )
        statuses = self._expect(node["assetPartitionStatuses"], "DefaultPartitionStatuses")
        return PartitionStatuses(
            materialized=frozenset(statuses["materializedPartitions"]),
            failed=frozenset(statuses["failedPartitions"]),
            unmaterialized=frozenset(statuses["unmaterializedPartitions"]),
            materializing=frozenset(statuses["materializingPartitions"]),
        )

    # Sensors and schedules (all default to STOPPED; these turn them on and off) -------------------
    @staticmethod
    def _selector(location: str, name_field: str, name: str) -> dict[str, str]:
        return {"repositoryLocationName": location, "repositoryName": REPOSITORY_NAME, name_field: name}

    def start_sensor(self, location: str, sensor: str) -> str:
        selector = self._selector(location, "sensorName", sensor)
        result = self._expect(self.execute(START_SENSOR, {"selector": selector})["startSensor"], "Sensor")
        return result["sensorState"]["status"]

    def stop_sensor(self, location: str, sensor: str) -> str:
        selector = self._selector(location, "sensorName", sensor)
        state = self._expect(self.execute(SENSOR_STATE, {"selector": selector})["sensorOrError"], "Sensor")
        result = self.execute(STOP_SENSOR, {"id": state["sensorState"]["id"]})["stopSensor"]
        return self._expect(result, "StopSensorMutationResult")["instigationState"]["status"]

    def start_schedule(self, location: str, schedule: str) -> str:
        selector = self._selector(location, "scheduleName", schedule)
        result = self.execute(START_SCHEDULE, {"selector": selector})["startSchedule"]
        return self._expect(result, "ScheduleStateResult")["scheduleState"]["status"]

    def stop_schedule(self, location: str, schedule: str) -> str:
        selector = self._selector(location, "scheduleName", schedule)
        state = self._expect(self.execute(SCHEDULE_STATE, {"selector": selector})["scheduleOrError"], "Schedule")
        result = self.execute(STOP_SCHEDULE, {"id": state["scheduleState"]["id"]})["stopRunningSchedule"]
        return self._expect(result, "ScheduleStateResult")["scheduleState"]["status"]


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.5) -> T:
    """Call ``probe`` until it returns something other than None/False; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = probe()
        except (httpx.TransportError, GraphQLError) as exc:  # not up yet, or a location still loading
            last_error, value = exc, None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}" + (f" (last error: {last_error})" if last_error else ""))
