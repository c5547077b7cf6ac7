"""End to end as a user runs it: `mlflow run` of the main entry point, then `mlflow models serve`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from mlflow import MlflowClient

PROJECT = Path(__file__).resolve().parents[1]
MLFLOW = str(Path(sys.executable).with_name("mlflow"))


def _env(uri: str) -> dict[str, str]:
    """The test's environment (its Python first on PATH, as in an activated venv) and store."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, "MLFLOW_TRACKING_URI": uri}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    """`mlflow run <project> -P quant=int8` into a fresh sqlite store; returns (tracking uri, workdir)."""
    workdir = tmp_path_factory.mktemp("mlflow-run")
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    env = _env(uri)
    subprocess.run(
        [MLFLOW, "run", str(PROJECT), "-P", "quant=int8", "--env-manager", "local"],
        cwd=workdir, env=env, check=True, timeout=600,
    )
    return uri, workdir


@pytest.mark.slow
def test_mlflow_run_main_logs_a_finished_int8_run(champion, monkeypatch):
    uri, _ = champion
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(uri)
    version = client.get_model_version_by_alias("digits-cnn", "champion")
    run = client.get_run(version.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["quant"] == "int8"
    assert run.data.metrics["accuracy"] >= 0.95 and run.data.metrics["accuracy_drop"] <= 0.01
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)} | set()
    logged = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    assert logged and logged[0].source_run_id == run.info.run_id, artifacts


@pytest.mark.slow
def test_models_serve_answers_invocations(champion, digits):
    uri, workdir = champion
    port = _free_port()
    env = _env(uri)
    server = subprocess.Popen(
        [MLFLOW, "models", "serve", "-m", "models:/digits-cnn@champion", "--env-manager", "local",
         "--host", "127.0.0.1", "--port", str(port)],
        cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if requests.get(f"{base}/ping", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(1)
        else:
            pytest.fail("model server did not answer /ping within 120 s")
        x = digits.x_test[:16]
        response = requests.post(f"{base}/invocations", json={"inputs": x.tolist()}, timeout=30)
        assert response.status_code == 200, response.text
        predictions = np.asarray(response.json()["predictions"])
        assert predictions.shape == (16, 10)
        assert np.mean(predictions.argmax(1) == digits.y_test[:16]) >= 0.9
        bad = requests.post(f"{base}/invocations", json={"inputs": np.zeros((2, 9, 9, 1)).tolist()}, timeout=30)
        assert bad.status_code == 400
    finally:
        server.terminate()
        server.wait(timeout=30)
