"""`mlflow run . -e sweep -P resume=<id>`: the run MLflow creates continues the sweep."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mlflow import MlflowClient
import store
from mlflow_tflite import tags
from mlflow_tflite.track.sweep_runs import children

PROJECT = Path(__file__).resolve().parents[1]


def _mlflow_run_sweep(tracking: str, workdir: Path, model: str, data: str, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "mlflow", "run", str(PROJECT), "-e", "sweep", "--env-manager", "local",
               "-P", f"model={model}", "-P", f"data={data}", "-P", "quant=dynamic,int8", "-P", "sparsity=0",
               "-P", "registered_model_name=resumed", *extra]
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking}
    return subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)


def test_resume_under_mlflow_run_continues_in_the_new_run(digits_files, tracking, tmp_path):
    model, data = digits_files
    first = _mlflow_run_sweep(tracking, tmp_path, model, data)
    assert first.returncode == 0, first.stderr[-2000:]
    client = MlflowClient()
    (old_parent,) = store.search_runs(f"tags.{tags.ROLE_TAG} = 'sweep'", client)
    old_children = {r.info.run_id for r in children(old_parent.info.run_id)}
    assert len(old_children) == 2
    # The run MLflow created (with a random name) is named as a sweep parent is; its experiment gets a kind.
    assert old_parent.info.run_name == "sweep-resumed-2"
    experiment = client.get_experiment(old_parent.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"

    resumed = _mlflow_run_sweep(tracking, tmp_path, model, data, "-P", f"resume={old_parent.info.run_id}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    parents = store.search_runs(f"tags.{tags.ROLE_TAG} = 'sweep'", client)
    (new_parent,) = [r for r in parents if r.info.run_id != old_parent.info.run_id]
    new_id = new_parent.info.run_id
    # The run `mlflow run` created holds every variant (the same child runs: nothing ran twice) ...
    assert {r.info.run_id for r in children(new_id)} == old_children
    assert children(old_parent.info.run_id) == []
    assert new_parent.info.status == "FINISHED" and new_parent.data.params["resume"] == old_parent.info.run_id
    assert new_parent.data.tags[tags.RESUMED_FROM_TAG] == old_parent.info.run_id
    assert new_parent.data.tags[tags.BEST_VARIANT_TAG] in {"dynamic-s0-8px", "int8-s0-8px"}
    # ... and the old parent links to it.
    assert client.get_run(old_parent.info.run_id).data.tags[tags.CONTINUED_IN_TAG] == new_id
    # The best variant was registered once, by the first sweep; the resumed one reused its version.
    assert len(client.search_model_versions("name = 'resumed'")) == 1


def test_resume_under_mlflow_run_with_other_settings_moves_nothing(digits_files, tracking, tmp_path):
    model, data = digits_files
    assert _mlflow_run_sweep(tracking, tmp_path, model, data).returncode == 0
    client = MlflowClient()
    (old_parent,) = store.search_runs(f"tags.{tags.ROLE_TAG} = 'sweep'", client)
    refused = _mlflow_run_sweep(tracking, tmp_path, model, data, "-P", f"resume={old_parent.info.run_id}",
                                "-P", "calibration_samples=50")
    assert refused.returncode != 0 and "was started with other settings" in refused.stderr
    assert "Traceback" not in refused.stderr.split("=== Run")[0]
    assert len(children(old_parent.info.run_id)) == 2  # nothing moved
    assert tags.CONTINUED_IN_TAG not in client.get_run(old_parent.info.run_id).data.tags
