"""executor=ray on a real two-node local Ray cluster (two raylets on this machine, one CPU each).

The sweeps here run in Ray actors spread over both nodes; the driver (this process) logs every
child run. No local_mode and no mocks: real conversions, a real sqlite MLflow store.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import ray
from mlflow import MlflowClient
from ray.cluster_utils import Cluster

import store
import faults
from mlflow_tflite.sweep import worker
from mlflow_tflite.cli import cli
from mlflow_tflite.errors import TFLiteError
from mlflow_tflite.sweep.config import SweepConfig
from mlflow_tflite.sweep.orchestrate import run_sweep
from mlflow_tflite.sweep.ray_executor import RayExecutor
from mlflow_tflite.sweep.worker import Job
from mlflow_tflite.variants import expand_grid

TESTS = Path(__file__).resolve().parent
OBJECT_STORE = 150 * 2**20


@pytest.fixture(scope="module")
def ray_cluster():
    """A head node and a second worker node (separate raylets and object stores) on 127.0.0.1.

    The nodes' workers import ``faults`` through ``PYTHONPATH``; mlflow-tflite reaches them through
    the executor's ``runtime_env`` (``test_workers_import_the_package_ray_shipped``).
    """
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(TESTS), *([old] if old else [])])
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": OBJECT_STORE,
                                                             "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1, object_store_memory=OBJECT_STORE)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def _runs(parent_run_id):
    client = MlflowClient()
    experiment = client.get_run(parent_run_id).info.experiment_id
    runs = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=100)
    return {r.data.tags["mlflow_tflite.variant"]: r for r in runs}


def test_ray_sweep_matches_the_local_executor(ray_cluster, digits_files, tracking):
    model, data = digits_files
    variants = expand_grid(["none", "int8"], [0.0, 0.5], [None])  # the s0.5 model is built once, shared
    on_ray = run_sweep(SweepConfig(variants, model, data, workers=2, executor="ray", ray_address=ray_cluster.address,
                                   register=False), progress=False)
    assert not ray.is_initialized()  # the executor left the cluster; latency was timed with no workers
    local = run_sweep(SweepConfig(variants, model, data, workers=1, register=False), progress=False)

    ray_runs, local_runs = _runs(on_ray.parent_run_id), _runs(local.parent_run_id)
    assert sorted(ray_runs) == sorted(local_runs) and len(ray_runs) == 4
    for name, run in ray_runs.items():
        assert run.info.status == "FINISHED", run.data.tags.get("mlflow_tflite.error")
        for key in ("accuracy", "agreement", "size_bytes", "sparsity_achieved"):
            assert run.data.metrics[key] == local_runs[name].data.metrics[key], (name, key)
        assert "latency_ms_p50" in run.data.metrics
        # The workers opened a copy of the .h5; the runs record the original path.
        assert run.data.params["source"] == str(Path(model).resolve())
    assert ray_runs["int8-s0.5-8px"].data.metrics["sparsity_achieved"] == pytest.approx(0.5, abs=0.05)
    parent = MlflowClient().get_run(on_ray.parent_run_id)
    assert parent.data.params["executor"] == "ray" and on_ray.best is not None


def test_a_killed_ray_worker_is_retried_once_then_its_variant_fails(ray_cluster, digits_files, tracking,
                                                                    monkeypatch, tmp_path):
    model, data = digits_files
    monkeypatch.setattr(worker, "variant_task",
                        faults.CrashOn(always=["float16-s0-8px"], once=["dynamic-s0-8px"], marker_dir=tmp_path))
    variants = expand_grid(["none", "dynamic", "float16"], [0.0], [None])
    result = run_sweep(SweepConfig(variants, model, data, workers=2, executor="ray", ray_address=ray_cluster.address,
                                   register=False), progress=False)
    runs = _runs(result.parent_run_id)
    assert {n: r.info.status for n, r in runs.items()} == {
        "none-s0-8px": "FINISHED", "dynamic-s0-8px": "FINISHED", "float16-s0-8px": "FAILED"}, \
        {n: r.data.tags.get("mlflow_tflite.error") for n, r in runs.items()}
    assert (tmp_path / "crashed-dynamic-s0-8px").exists()  # it did die once, and its retry finished
    error = runs["float16-s0-8px"].data.tags["mlflow_tflite.error"]
    assert error.startswith("Ray worker died while running float16-s0-8px (2 attempts)") and "\n" not in error
    assert "accuracy" in runs["dynamic-s0-8px"].data.metrics
    assert result.best.variant in ("none-s0-8px", "dynamic-s0-8px")


def test_workers_import_the_package_ray_shipped(ray_cluster, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # Ray puts the driver's working directory on the workers' path: not the checkout
    executor = RayExecutor(1, Job({"model": "not-opened-by-this-task"}), ray_cluster.address)
    try:
        ((_, status, module_file),) = list(executor.run([faults.ModuleFile()]))
    finally:
        executor.close()
    assert status == "ok", module_file
    # Ray's runtime-env cache (py_modules), not this checkout nor the driver's site-packages.
    assert "runtime_resources" in module_file and not module_file.startswith(str(TESTS.parent)), module_file
    print(f"\nRay worker imported mlflow_tflite from {module_file}")


@pytest.mark.parametrize("address, message", [
    ("127.0.0.1:1", "ray_address '127.0.0.1:1' does not answer"),
    ("no-port-here", "ray_address 'no-port-here' is not host:port"),
])
def test_a_bad_ray_address_is_one_line_and_quick(address, message, tracking):
    start = time.monotonic()
    result = CliRunner().invoke(cli, ["sweep", "--quant", "int8", "--sparsity", "0", "--executor", "ray",
                                      "--ray-address", address])
    assert time.monotonic() - start < 60
    assert result.exit_code == 1 and result.output.count("Error:") == 1 and message in result.output, result.output
    lines = result.output.strip().splitlines()  # (a fresh store logs its creation first)
    assert "Traceback" not in result.output and lines[-1].startswith("Error:"), result.output
    assert store.search_runs() == []  # nothing started


def test_ray_options_are_checked_at_the_edge(tracking):
    result = CliRunner().invoke(cli, ["sweep", "--executor", "dask"])
    assert result.exit_code == 1 and "executor 'dask' is unknown; use one of local, ray" in result.output
    with pytest.raises(TFLiteError, match="ray_address='h:1' only applies to executor=ray"):
        SweepConfig(expand_grid(["int8"], [0.0], [None]), ray_address="h:1")
    assert SweepConfig(expand_grid(["int8"], [0.0], [None]), executor="ray", ray_address="auto").ray_address is None
