"""deploy/: the Helm values and the Dockerfile, checked as far as this machine can go without a cluster.

No Docker daemon, no Kubernetes and no `helm` binary here. So:

- the values are checked against deploy/chart-values.schema.json (the keys of Dagster's chart, see its
  $comment for where they come from), so a misspelt key fails instead of being ignored by helm;
- `render_instance_yaml` writes the dagster.yaml the chart renders from them (a port of the chart's
  templates/configmap-instance.yaml and helpers/instance/*.tpl, for the keys these values use), and the
  installed dagster validates it, then each configured class (K8sRunLauncher, the Postgres storages,
  QueuedRunCoordinator, S3ComputeLogManager) validates its own config;
- the K8sRunLauncher is built from that config (with a kubeconfig file instead of the in-cluster one) and
  makes the Kubernetes Job of a batch run whose tags come from the product's own batch-fill sensor, so
  the pod resources of `INAT_BATCH_K8S_CONFIG` are those of a real Job object;
- the build context the Dockerfile copies is installed as the Dockerfile does (a normal install, the
  sources removed), and the chart's `dagster api grpc` command with the values' arguments serves
  `inat_assets.definitions` from that install.
"""

from __future__ import annotations

import copy
import importlib
import importlib.metadata
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dagster as dg
import jsonschema
import pytest
import yaml
from dagster import AssetKey, DagsterInstance, DagsterRun, instance_for_test
from dagster._api.list_repositories import sync_list_repositories_grpc
from dagster._config import process_config
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.instance.config import dagster_instance_config
from dagster._grpc.client import DagsterGrpcClient
from dagster._serdes.config_class import ConfigurableClassData
from dagster_k8s import K8sRunLauncher
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import construct_dagster_k8s_job

from inat_assets import definitions
from inat_assets.automation import (
    ATTEMPT_TAG,
    K8S_CONFIG_TAG,
    BatchFillPolicy,
    batch_fill_sensor,
    batch_run_tags,
)
from inat_assets.download.config import DEFAULT_HOST_LIMITS, STATIC_HOST
from inat_assets.download.host_budget import open_ledger
from inat_assets.errors import InatAssetsError
from inat_assets.instance import POSTGRES_URL_ENV, check_postgres_url
from inat_assets.resources import DataStoreResource, PhotoDownloaderResource, inat_resources
from inat_assets_tests.test_wheel_install import copy_project_sources, installed_graph

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
RELEASE, NAMESPACE = "inat", "inat"
FULLNAME = f"{RELEASE}-dagster"  # the chart's dagster.fullname for a release not containing "dagster"
JOB_IMAGE = "registry.example.org/inat-assets:0.1.0"


def load_values() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "values.yaml").read_text())


def code_deployment(values: Mapping[str, Any]) -> dict[str, Any]:
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    return deployment


def deployment_env(values: Mapping[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in code_deployment(values)["env"]}


# --- the chart's dagster.yaml, rendered from the values ----------------------------------------------


def _names(refs: list[Mapping[str, str]] | None) -> list[str]:
    return [ref["name"] for ref in refs or [] if "name" in ref]


def render_instance_yaml(values: Mapping[str, Any]) -> dict[str, Any]:
    """The chart's configmap-instance.yaml `dagster.yaml` for these values (the branches they use).

    Ported from dagster-io/dagster helm/dagster/templates: configmap-instance.yaml and
    helpers/instance/_postgresql.tpl, _run-launcher.tpl (K8sRunLauncher), _run-coordinator.tpl (queued),
    _compute-log-manager.tpl (S3), _concurrency.tpl. Anything else in the values is refused, so a new key
    cannot be silently left out of the rendering.
    """
    glob, pg = values["global"], values["postgresql"]
    postgres = {
        "postgres_db": {
            "username": pg["postgresqlUsername"],
            "password": {"env": "DAGSTER_PG_PASSWORD"},
            "hostname": pg["postgresqlHost"],
            "db_name": pg["postgresqlDatabase"],
            "port": pg["service"]["port"],
            "params": pg.get("postgresqlParams") or {},
            **({"scheme": pg["postgresqlScheme"]} if pg.get("postgresqlScheme") else {}),
        }
    }
    assert values["runLauncher"]["type"] == "K8sRunLauncher", "only the K8sRunLauncher branch is ported"
    k8s = values["runLauncher"]["config"]["k8sRunLauncher"]
    launcher: dict[str, Any] = {
        "load_incluster_config": k8s["loadInclusterConfig"],
        **({"kubeconfig_file": k8s["kubeconfigFile"]} if k8s.get("kubeconfigFile") else {}),
        "job_namespace": k8s.get("jobNamespace") or NAMESPACE,
        "image_pull_policy": k8s["imagePullPolicy"],
        **({"image_pull_secrets": values["imagePullSecrets"]} if values.get("imagePullSecrets") else {}),
        "service_account_name": glob["serviceAccountName"],
        "dagster_home": glob["dagsterHome"],
        "instance_config_map": f"{FULLNAME}-instance",
        "postgres_password_secret": glob["postgresqlSecretName"],
    }
    optional = {
        "env_config_maps": _names(k8s.get("envConfigMaps")),
        "env_secrets": _names(k8s.get("envSecrets")),
        "env_vars": k8s.get("envVars"),
        "volume_mounts": k8s.get("volumeMounts"),
        "volumes": k8s.get("volumes"),
        "labels": k8s.get("labels"),
        "resources": k8s.get("resources"),
        "fail_pod_on_run_failure": True if k8s.get("failPodOnRunFailure") else None,
        "scheduler_name": k8s.get("schedulerName"),
        "security_context": k8s.get("securityContext"),
    }
    launcher.update({key: value for key, value in optional.items() if value})
    if k8s.get("runK8sConfig"):
        snake = {"containerConfig": "container_config", "podSpecConfig": "pod_spec_config",
                 "podTemplateSpecMetadata": "pod_template_spec_metadata", "jobSpecConfig": "job_spec_config",
                 "jobMetadata": "job_metadata"}  # fmt: skip
        launcher["run_k8s_config"] = {snake[k]: v for k, v in k8s["runK8sConfig"].items() if v}

    rendered: dict[str, Any] = {
        "scheduler": {"module": "dagster.core.scheduler", "class": "DagsterDaemonScheduler"},
        "schedule_storage": {"module": "dagster_postgres.schedule_storage", "class": "PostgresScheduleStorage", "config": postgres},
        "run_launcher": {"module": "dagster_k8s", "class": "K8sRunLauncher", "config": launcher},
        "run_storage": {"module": "dagster_postgres.run_storage", "class": "PostgresRunStorage", "config": postgres},
        "event_log_storage": {"module": "dagster_postgres.event_log", "class": "PostgresEventLogStorage", "config": postgres},
    }
    daemon = values["dagsterDaemon"]
    coordinator = daemon["runCoordinator"]
    if daemon["enabled"] and coordinator["enabled"]:
        assert coordinator["type"] == "QueuedRunCoordinator", "only the queued branch is ported"
        queued = coordinator["config"]["queuedRunCoordinator"] or {}
        block: dict[str, Any] = {"module": "dagster.core.run_coordinator", "class": "QueuedRunCoordinator"}
        if any(v is not None for v in queued.values()):
            # The template writes max_concurrent_runs (-1 when unset) as soon as any key is set.
            config: dict[str, Any] = {"max_concurrent_runs": queued.get("maxConcurrentRuns", -1)}
            for key, name in (("tagConcurrencyLimits", "tag_concurrency_limits"),
                              ("dequeueIntervalSeconds", "dequeue_interval_seconds"),
                              ("dequeueUseThreads", "dequeue_use_threads"),
                              ("dequeueNumWorkers", "dequeue_num_workers")):  # fmt: skip
                if queued.get(key):
                    config[name] = queued[key]
            block["config"] = config
        rendered["run_coordinator"] = block

    clm = values["computeLogManager"]
    assert clm["type"] == "S3ComputeLogManager", "only the S3 branch is ported"
    s3 = clm["config"]["s3ComputeLogManager"]
    s3_config: dict[str, Any] = {"bucket": s3["bucket"], "verify": s3.get("verify") is not False}
    for key, name in (("localDir", "local_dir"), ("prefix", "prefix"), ("useSsl", "use_ssl"),
                      ("verifyCertPath", "verify_cert_path"), ("endpointUrl", "endpoint_url"),
                      ("skipEmptyFiles", "skip_empty_files"), ("uploadInterval", "upload_interval"),
                      ("uploadExtraArgs", "upload_extra_args"), ("showUrlOnly", "show_url_only"),
                      ("region", "region")):  # fmt: skip
        if s3.get(key):
            s3_config[name] = s3[key]
    rendered["compute_logs"] = {"module": "dagster_aws.s3.compute_log_manager", "class": "S3ComputeLogManager", "config": s3_config}

    monitoring = daemon["runMonitoring"]
    if daemon["enabled"] and monitoring["enabled"]:
        rendered["run_monitoring"] = {
            "enabled": True,
            "start_timeout_seconds": monitoring["startTimeoutSeconds"],
            **({"cancel_timeout_seconds": monitoring["cancelTimeoutSeconds"]} if monitoring.get("cancelTimeoutSeconds") is not None else {}),
            **({"max_resume_run_attempts": monitoring["maxResumeRunAttempts"]} if monitoring.get("maxResumeRunAttempts") is not None else {}),
            "poll_interval_seconds": monitoring["pollIntervalSeconds"],
            "free_slots_after_run_end_seconds": monitoring["freeSlotsAfterRunEndSeconds"],
        }
    retries = daemon["runRetries"]
    if daemon["enabled"] and retries["enabled"]:
        rendered["run_retries"] = {"enabled": True}
        if retries.get("maxRetries"):
            rendered["run_retries"]["max_retries"] = retries["maxRetries"]
        # retryOnAssetOrOpFailure is in the chart's RunRetries model (subschema/daemon.py).
        if retries.get("retryOnAssetOrOpFailure") is not None:
            rendered["run_retries"]["retry_on_asset_or_op_failure"] = retries["retryOnAssetOrOpFailure"]
    rendered["telemetry"] = {"enabled": values["telemetry"]["enabled"]}

    concurrency = values.get("concurrency") or {}
    if concurrency.get("enabled"):
        pools, runs = concurrency.get("pools") or {}, concurrency.get("runs") or {}
        queued = (coordinator["config"].get("queuedRunCoordinator") or {}) if coordinator["enabled"] else {}
        # _concurrency.tpl fails the render on these two conflicts.
        assert not (runs.get("maxConcurrentRuns") is not None and queued.get("maxConcurrentRuns") is not None)
        assert not (runs.get("tagConcurrencyLimits") and queued.get("tagConcurrencyLimits"))
        block = {}
        pool_keys = (("defaultLimit", "default_limit"), ("granularity", "granularity"),
                     ("opGranularityRunBuffer", "op_granularity_run_buffer"))  # fmt: skip
        if any(pools.get(k) is not None for k, _ in pool_keys):
            block["pools"] = {name: pools[k] for k, name in pool_keys if pools.get(k) is not None}
        if runs.get("maxConcurrentRuns") is not None or runs.get("tagConcurrencyLimits"):
            block["runs"] = {}
            if runs.get("maxConcurrentRuns") is not None:
                block["runs"]["max_concurrent_runs"] = runs["maxConcurrentRuns"]
            if runs.get("tagConcurrencyLimits"):
                block["runs"]["tag_concurrency_limits"] = runs["tagConcurrencyLimits"]
        rendered["concurrency"] = block
    return rendered


def code_location_container_context(values: Mapping[str, Any]) -> dict[str, Any]:
    """What the chart's user deployment hands the run launcher with includeConfigInLaunchedRuns.

    (DAGSTER_CLI_API_GRPC_CONTAINER_CONTEXT on the code server: the deployment's env ConfigMap and
    secrets, volumes and mounts, pull policy, namespace and service account, and its `resources`.)
    """
    deployment = code_deployment(values)
    assert deployment["includeConfigInLaunchedRuns"]["enabled"]
    k8s: dict[str, Any] = {
        "env_config_maps": [f"{RELEASE}-dagster-user-deployments-{deployment['name']}-user-env"],
        "env_secrets": _names(deployment.get("envSecrets")),
        "image_pull_policy": deployment["image"]["pullPolicy"],
        "volume_mounts": deployment.get("volumeMounts") or [],
        "volumes": deployment.get("volumes") or [],
        "namespace": NAMESPACE,
    }
    if deployment.get("resources"):
        k8s["resources"] = deployment["resources"]
    return {"k8s": k8s}


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    return load_values()


@pytest.fixture(scope="module")
def instance_yaml(values: dict[str, Any]) -> dict[str, Any]:
    return render_instance_yaml(values)


def validate_instance(rendered: Mapping[str, Any], home: Path) -> Mapping[str, Any]:
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(yaml.safe_dump(dict(rendered)))
    config, _ = dagster_instance_config(str(home))
    return config


# --- the values against the chart's keys ---------------------------------------------------------------


def test_values_use_only_the_charts_keys(values: dict[str, Any]) -> None:
    schema = json.loads((DEPLOY / "chart-values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft7Validator(schema).validate(values)

    misspelt = copy.deepcopy(values)
    misspelt["dagsterDaemon"]["runRetries"]["maxRetry"] = 3  # the chart would ignore it
    with pytest.raises(jsonschema.ValidationError, match="maxRetry"):
        jsonschema.Draft7Validator(schema).validate(misspelt)
    wrong_type = copy.deepcopy(values)
    wrong_type["computeLogManager"]["config"] = {"s3": {"bucket": "x"}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schema).validate(wrong_type)


# --- the rendered dagster.yaml against the installed dagster -------------------------------------------


def test_rendered_instance_config_is_valid_for_the_installed_dagster(
    instance_yaml: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The chart sets it in every pod from the secret global.postgresqlSecretName.
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "from-the-secret")
    config = validate_instance(instance_yaml, tmp_path / "home")
    # Each configured class validates its own section, as the instance does when it loads it.
    for section in ("run_launcher", "run_storage", "event_log_storage", "schedule_storage", "run_coordinator",
                    "compute_logs", "scheduler"):  # fmt: skip
        block = config[section]
        # ConfigurableClassData maps the documented `dagster.core.*` module names to dagster's own, as the
        # instance does; the classes are not built here (the Postgres ones would connect).
        data = ConfigurableClassData(block["module"], block["class"], yaml.safe_dump(block.get("config") or {}))
        klass = getattr(importlib.import_module(data.module_name), data.class_name)
        result = process_config(klass.config_type(), data.config_dict)
        assert result.success, f"{section}: {result.errors}"
    assert config["concurrency"] == {"runs": {"max_concurrent_runs": 17}, "pools": {"default_limit": 16, "granularity": "run"}}
    assert config["run_retries"] == {"enabled": True, "max_retries": 2, "retry_on_asset_or_op_failure": False}
    assert config["run_monitoring"]["enabled"] and config["run_monitoring"]["max_resume_run_attempts"] == 0
    assert "config" not in config["run_coordinator"]  # the run limit lives under concurrency


def test_the_run_limit_under_the_run_coordinator_is_refused_next_to_pools(
    values: dict[str, Any], tmp_path: Path
) -> None:
    """Why queuedRunCoordinator stays empty: the chart then writes max_concurrent_runs there, which
    dagster 1.13 refuses together with `concurrency` (needed for the download pool)."""
    moved = copy.deepcopy(values)
    moved["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"] = {"maxConcurrentRuns": 8}
    del moved["concurrency"]["runs"]
    with pytest.raises(DagsterInvalidConfigError, match="max_concurrent_runs"):
        validate_instance(render_instance_yaml(moved), tmp_path / "a")
    # Any other key there (a shorter dequeue interval) makes the chart write max_concurrent_runs: -1, refused too.
    interval = copy.deepcopy(values)
    interval["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"] = {"dequeueIntervalSeconds": 2}
    with pytest.raises(DagsterInvalidConfigError, match="max_concurrent_runs"):
        validate_instance(render_instance_yaml(interval), tmp_path / "b")


def test_pool_and_run_limits_follow_the_packaged_ones_rule(values: dict[str, Any], instance_yaml: dict[str, Any]) -> None:
    """Read by Dagster as the packaged single-machine dagster.yaml is: every run slot but one may download
    (the one left is for the archive, table and fetch-list runs), and a full pool queues runs, holding no slot.
    The batch-fill sensors keep at least a pool's worth of batch runs in flight, so one dataset fills it."""
    from inat_assets.instance import packaged_dagster_yaml

    packaged = yaml.safe_load(packaged_dagster_yaml())["concurrency"]
    limits = []
    for concurrency in (packaged, instance_yaml["concurrency"]):
        with instance_for_test(overrides={"concurrency": concurrency}) as instance:
            settings = instance.get_concurrency_config()
            pool, runs = settings.pool_config.default_pool_limit, settings.run_queue_config.max_concurrent_runs
            assert pool == runs - 1, f"{pool} downloads in {runs} run slots"
            assert settings.pool_config.pool_granularity.value == "run"
            limits.append(pool)
    assert limits == [3, 16]  # the cluster's is larger: the budgets are shared, not multiplied
    in_flight = int(deployment_env(values)["INAT_BATCH_RUNS_IN_FLIGHT"])
    assert in_flight >= limits[1]
    # docs/running-at-scale.md states the cluster's three numbers.
    row = f"| cluster (`deploy/values.yaml`) | {limits[1] + 1} | {limits[1]} | {in_flight} |"
    assert row in (REPO / "docs" / "running-at-scale.md").read_text()


def test_the_charts_instance_gives_the_downloads_its_own_database_as_their_shared_budget(
    values: dict[str, Any], instance_yaml: dict[str, Any], postgres_url: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On the cluster the instance comes from the chart's dagster.yaml (postgres_db, the password from the
    secret), not from INAT_DAGSTER_POSTGRES_URL; a batch run's downloader still finds the per-host ledger in
    the instance's database. Against a real PostgreSQL server standing in for the chart's."""
    env = deployment_env(values)
    # Neither is needed on the cluster; set by hand they would have to name the same database.
    assert "INAT_DAGSTER_POSTGRES_URL" not in env and "INAT_HOST_BUDGET" not in env
    server = urlsplit(postgres_url)
    database = server.path.lstrip("/")
    rendered = copy.deepcopy({k: instance_yaml[k] for k in ("run_storage", "event_log_storage", "schedule_storage")})
    for block in rendered.values():
        pg = block["config"]["postgres_db"]
        assert pg["password"] == {"env": "DAGSTER_PG_PASSWORD"}  # what the chart sets from the secret
        pg.update(hostname=server.hostname, port=server.port, username=server.username, db_name=database)
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "unused-by-trust-auth")
    for name in ("INAT_HOST_BUDGET", "INAT_DAGSTER_POSTGRES_URL"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump({**rendered, "concurrency": instance_yaml["concurrency"]}))
    instance = DagsterInstance.from_config(str(home))
    try:
        with dg.build_resources({"downloader": PhotoDownloaderResource()}, instance=instance) as resources:
            budget = resources.downloader.download_config(retries=0, try_other_host=False, processes=1).host_budget
    finally:
        instance.dispose()
    # The chart's URL names psycopg2 (postgresql.postgresqlScheme), as the product asks of INAT_DAGSTER_POSTGRES_URL:
    # without it SQLAlchemy 2.1 opened the storages with psycopg 3, which neither the image nor this venv has.
    check_postgres_url({POSTGRES_URL_ENV: budget})
    ledger_db = urlsplit(budget)
    assert (ledger_db.hostname, ledger_db.port, ledger_db.path.lstrip("/")) == (server.hostname, server.port, database)
    ledger = open_ledger(budget)
    try:
        assert ledger.claim(STATIC_HOST, DEFAULT_HOST_LIMITS[STATIC_HOST]).granted
        ledger.record(STATIC_HOST, 1234)
    finally:
        ledger.close()
    # The bytes are in the instance's own database, where every other batch pod counts them.
    import psycopg2

    con = psycopg2.connect(host=server.hostname, port=server.port, user=server.username, dbname=database)
    try:
        with con.cursor() as cur:
            cur.execute("SELECT sum(bytes) FROM inat_host_bytes WHERE host = %s", (STATIC_HOST,))
            assert cur.fetchone() == (1234,)
            cur.execute("SELECT count(*) FROM runs")  # Dagster's run storage, in the same database
            assert cur.fetchone() == (0,)
    finally:
        con.close()


# --- batch runs: the dagster-k8s/config tag from the product, into a Kubernetes Job ---------------------


IMAGES = definitions.defs.get_assets_def(AssetKey(["plants", "image_batches"]))


def batch_run_tags_from_sensor(instance: DagsterInstance, tmp_path: Path) -> dict[str, str]:
    """The tags of the first run the product's batch-fill sensor requests (built after the env is set)."""
    partitions = IMAGES.partitions_def
    assert isinstance(partitions, dg.DynamicPartitionsDefinition) and partitions.name
    instance.add_dynamic_partitions(partitions.name, ["batch-000001"])
    sensor = batch_fill_sensor(IMAGES, "plants", policy=BatchFillPolicy(runs_in_flight=1))
    context = dg.build_sensor_context(instance=instance, resources={"store": DataStoreResource(data_dir=str(tmp_path))})
    result = sensor(context)
    (request,) = result.run_requests
    assert request.partition_key == "batch-000001" and request.tags[ATTEMPT_TAG] == "1"
    return dict(request.tags)


@pytest.fixture
def launcher(instance_yaml: dict[str, Any], tmp_path: Path) -> Iterator[K8sRunLauncher]:
    """The K8sRunLauncher the instance builds from the rendered config; a kubeconfig file stands in for the
    in-cluster service account (nothing is sent to its server while jobs are only constructed)."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": "https://127.0.0.1:9"}}],
        "users": [{"name": "test", "user": {"token": "unused"}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
    }))  # fmt: skip
    block = instance_yaml["run_launcher"]
    config = {**block["config"], "load_incluster_config": False, "kubeconfig_file": str(kubeconfig)}
    launcher = ConfigurableClassData(block["module"], block["class"], yaml.safe_dump(config)).rehydrate(as_type=K8sRunLauncher)
    yield launcher
    launcher.dispose()


def run_job(launcher: K8sRunLauncher, values: Mapping[str, Any], tags: Mapping[str, str]) -> Any:
    """The Kubernetes Job the launcher creates for a run with these tags (its own steps up to the API call)."""
    run = DagsterRun(job_name="plants_image_batches_job", run_id="0123abcd-0000-0000-0000-000000000000", tags=dict(tags))
    context = K8sContainerContext.create_for_run(run, launcher, include_run_tags=False)
    context = context.merge(K8sContainerContext.create_from_config(code_location_container_context(values)))
    context = context.merge(K8sContainerContext.create_for_run(run, None, include_run_tags=True))
    job_config = context.get_k8s_job_config(job_image=JOB_IMAGE, run_launcher=launcher)
    return construct_dagster_k8s_job(
        job_config=job_config,
        args=["dagster", "api", "execute_run", "{}"],
        job_name="dagster-run-0123abcd",
        pod_name="dagster-run-0123abcd",
        component="run_worker",
        user_defined_k8s_config=context.run_k8s_config,
        labels={"dagster/job": run.job_name, "dagster/run-id": run.run_id},
    )


def test_batch_runs_request_their_own_pod_resources_through_the_tag(
    values: dict[str, Any], launcher: K8sRunLauncher, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    setting = deployment_env(values)["INAT_BATCH_K8S_CONFIG"]
    monkeypatch.setenv("INAT_BATCH_K8S_CONFIG", setting)
    with instance_for_test() as instance:
        tags = batch_run_tags_from_sensor(instance, tmp_path)
    assert json.loads(tags[K8S_CONFIG_TAG]) == json.loads(setting)

    batch_pod = run_job(launcher, values, tags).spec.template
    container = batch_pod.spec.containers[0]
    assert container.image == JOB_IMAGE
    assert container.resources.requests == {"cpu": "1", "memory": "512Mi", "ephemeral-storage": "1Gi"}
    assert container.resources.limits == {"cpu": "1", "memory": "1Gi"}
    # The download processes a batch run starts in that pod: one per core it requested.
    assert batch_download_processes(container.resources.limits["cpu"], tmp_path, monkeypatch) == 1
    assert batch_pod.metadata.labels["inat/run"] == "image-batch"
    # The code location's secrets and volumes reach the run pod (includeConfigInLaunchedRuns).
    assert {source.secret_ref.name for source in container.env_from if source.secret_ref} == {"inat-assets-aws"}
    # The data dir is the bucket of the compute logs, and no pod mounts a shared volume: the only volume is
    # the pod's own scratch (an emptyDir), where INAT_SCRATCH_DIR points.
    env = {e.name: e.value for e in container.env or []} | deployment_env(values)
    assert env["INAT_DATA_DIR"].startswith("s3://")
    bucket = values["computeLogManager"]["config"]["s3ComputeLogManager"]["bucket"]
    assert env["INAT_DATA_DIR"].removeprefix("s3://").split("/")[0] == bucket
    assert [(v.name, v.empty_dir is not None) for v in batch_pod.spec.volumes] == [("scratch", True)]
    assert [v.persistent_volume_claim or v.nfs for v in batch_pod.spec.volumes] == [None]
    assert [(m.name, m.mount_path) for m in container.volume_mounts] == [("scratch", env["INAT_SCRATCH_DIR"])]
    assert "INAT_DUCKDB_TEMP_DIR" not in env  # DuckDB spills under INAT_SCRATCH_DIR by default

    # A run without the tag (the conversion, a fetch list) gets the run launcher's default pod.
    other = run_job(launcher, values, {"dagster/partition": "x"}).spec.template.spec.containers[0]
    assert other.resources.requests == {"cpu": "2", "memory": "8Gi", "ephemeral-storage": "200Gi"}


def batch_download_processes(cpu_limit: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """Worker processes of an image-batch run (run config and settings at their defaults) in a container whose
    CPU limit is ``cpu_limit`` (a cgroup v2 quota written as the kubelet does), on a node with more cores."""
    from inat_assets.assets.images import ImageBatchConfig
    from inat_assets.download import config as download_config

    default = ImageBatchConfig.model_fields["processes"].default
    if default is not None:  # a fixed number, whatever the pod
        return default
    quota = int(float(cpu_limit.removesuffix("m")) / (1000 if cpu_limit.endswith("m") else 1) * 100_000)
    cgroup = tmp_path / "cgroup"
    (cgroup / "kubepods" / "pod1").mkdir(parents=True)
    (cgroup / "kubepods" / "pod1" / "cpu.max").write_text(f"{quota} 100000\n")
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text("0::/kubepods/pod1\n")
    # Its defaults name the real /sys/fs/cgroup and /proc/self/cgroup; worker_processes calls it without arguments.
    monkeypatch.setattr(download_config.available_cores, "__defaults__", (str(cgroup), str(proc)))
    monkeypatch.setattr(download_config.os, "sched_getaffinity", lambda _pid: set(range(16)), raising=False)
    return download_config.DownloadConfig().worker_processes(None)


def test_code_server_resources_would_override_every_run_pod(
    values: dict[str, Any], launcher: K8sRunLauncher
) -> None:
    """Why the user deployment sets no `resources`: the chart hands them to the runs, over the launcher's."""
    assert "resources" not in code_deployment(values)
    with_resources = copy.deepcopy(values)
    code_deployment(with_resources)["resources"] = {"requests": {"cpu": "250m", "memory": "1Gi"}}
    container = run_job(launcher, with_resources, {}).spec.template.spec.containers[0]
    # Merged key by key: the code server's cpu and memory replace the launcher's 2 CPU and 8Gi.
    assert container.resources.requests == {"cpu": "250m", "memory": "1Gi", "ephemeral-storage": "200Gi"}


def test_the_batch_job_carries_the_tag_and_a_bad_setting_is_refused_when_the_code_loads(
    values: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from inat_assets.components.dataset import InatDataset, dataset_definitions

    setting = deployment_env(values)["INAT_BATCH_K8S_CONFIG"]
    monkeypatch.setenv("INAT_BATCH_K8S_CONFIG", setting)
    declared = InatDataset(name="k8s_demo", kingdom=["Fungi"])

    def batch_job_tags() -> Mapping[str, str]:
        defs = dg.Definitions.merge(dataset_definitions(declared), dg.Definitions(resources=inat_resources()))
        return defs.resolve_job_def("k8s_demo_image_batches_job").tags

    assert json.loads(batch_job_tags()[K8S_CONFIG_TAG]) == json.loads(setting)
    monkeypatch.delenv("INAT_BATCH_K8S_CONFIG")
    assert batch_run_tags() == {}
    assert K8S_CONFIG_TAG not in batch_job_tags()
    with pytest.raises(InatAssetsError, match="INAT_BATCH_K8S_CONFIG is not JSON"):
        batch_run_tags({"INAT_BATCH_K8S_CONFIG": "cpu=2"})
    with pytest.raises(InatAssetsError, match="must be a JSON object"):
        batch_run_tags({"INAT_BATCH_K8S_CONFIG": '["cpu"]'})
    with pytest.raises(InatAssetsError, match="not a valid dagster-k8s/config tag"):
        batch_run_tags({"INAT_BATCH_K8S_CONFIG": '{"containers_config": {}}'})


# --- the image: the build context and the entry command ------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", text)
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
        for line in joined.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def test_deploy_extra_pins_the_installed_dagster_integrations() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = dict(re.fullmatch(r"([a-z0-9-]+)==([\d.]+)", req).groups() for req in project["optional-dependencies"]["deploy"])
    assert set(pins) == {"dagster-k8s", "dagster-postgres", "dagster-aws"}
    for name, version in pins.items():
        assert importlib.metadata.version(name) == version, f"{name}: installed != deploy extra"
    # The integrations' 0.x release goes with the dagster 1.x release of the same patch (0.29.27 <-> 1.13.27).
    dagster_patch = importlib.metadata.version("dagster").split(".")[2]
    assert {v.split(".")[2] for v in pins.values()} == {dagster_patch}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_build_context_installs_and_serves_the_code_location_with_the_charts_command(
    values: dict[str, Any], tmp_path: Path
) -> None:
    instructions = dockerfile_instructions()
    copies = [args.split() for op, args in instructions if op == "COPY"]
    assert copies, "the Dockerfile copies nothing"
    (install,) = [args for op, args in instructions if op == "RUN" and "pip install" in args]
    # A normal install (not `-e`) of the folder the sources are copied to, which is then removed.
    build_dir = re.fullmatch(r'pip install "(/[^"\[]+)\[([a-z0-9,]+)\]" && rm -rf (\S+) && .*', install)
    assert build_dir, f"not a normal install of the copied sources, then removed: {install}"
    assert build_dir[1] == build_dir[3]
    # The extras it installs: the deploy extra, and s3fs for the data dir the values put in the bucket.
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    installed = [req for extra in build_dir[2].split(",") for req in extras[extra]]
    assert set(extras["deploy"]) <= set(installed)
    assert deployment_env(values)["INAT_DATA_DIR"].startswith("s3://")
    assert any(re.match(r"s3fs\b", req) for req in installed), f"no s3fs in the image's extras: {install}"
    (workdir,) = [args for op, args in instructions if op == "WORKDIR"]
    assert not Path(build_dir[1]).is_relative_to(workdir), "sources in the working directory shadow the install"
    context = tmp_path / "context"
    context.mkdir()
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    kept = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for *sources, dest in copies:
        # Each source lands at <build dir>/<its name>: the layout the package build expects.
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"
            assert source.rstrip("/") in kept, f"COPY {source}: excluded by Dockerfile.dockerignore"
            landed = Path(dest) / source if dest.endswith("/") else Path(dest)
            assert landed == Path(build_dir[1]) / source, f"COPY {source} {dest}: not at {build_dir[1]}/{source}"
        copy_project_sources(context, tuple(sources))

    # The Dockerfile's install of exactly that context (not editable, as there) into a folder of its own;
    # the dependencies are this venv's (the deploy extra is pinned to them, tested above).
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target", str(target), str(context)],
        check=True, timeout=300,
    )  # fmt: skip
    assert list(target.glob("inat_assets-*.dist-info")), "the build context did not install"
    shutil.rmtree(context)  # the Dockerfile's rm -rf

    deployment = code_deployment(values)
    (cmd,) = [json.loads(args) for op, args in instructions if op == "CMD"]
    chart_command = ["dagster", "api", "grpc", "-h", "0.0.0.0", "-p", str(deployment["port"]), *deployment["dagsterApiGrpcArgs"]]
    assert cmd == chart_command  # the image alone serves what the chart starts

    port = _free_port()
    command = [str(Path(sys.executable).parent / "dagster"), *chart_command[1:]]
    command[command.index("-p") + 1], command[command.index("-h") + 1] = str(port), "127.0.0.1"
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INAT_", "DAGSTER_HOME", "PYTHONPATH"))}
    # The install in site-packages (here the target folder, first on PYTHONPATH, before this venv's
    # editable copy of the repository), started from an empty working directory as in the image.
    env.update(PYTHONPATH=str(target), DAGSTER_HOME=str(tmp_path / "home"), INAT_DATA_DIR=str(tmp_path / "data"))
    (tmp_path / "home").mkdir()
    log = tmp_path / "grpc.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(command, cwd=elsewhere, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        health = [str(Path(sys.executable).parent / "dagster"), "api", "grpc-health-check", "-p", str(port), "-h", "127.0.0.1"]
        deadline = time.monotonic() + 180
        while subprocess.run(health, env=env, capture_output=True, timeout=60).returncode != 0:
            assert server.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the code server did not answer in 180 s\n" + log.read_text()[-3000:]
            time.sleep(1)
        # The server loaded the code (a load error would come back here instead of the repository) ...
        (symbol,) = sync_list_repositories_grpc(DagsterGrpcClient(port=port, host="127.0.0.1")).repository_symbols
        assert symbol.repository_name == "__repository__"
        # ... from the installed copy, with every declared dataset's assets.
        location, keys = installed_graph(target, elsewhere)
        assert location.is_relative_to(target)
        assert {"plants/image_batches", "fungi_open/image_batches", "observations_parquet"} <= keys
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)
