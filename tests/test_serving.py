"""End to end as a user runs it: `mlflow run` of the main entry point, then `mlflow models serve`."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
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


@contextlib.contextmanager
def _serve(uri: str, workdir: Path, *options: str, ready_seconds: int = 120):
    """`mlflow models serve` of the champion on a free port; yields its base URL, then stops it.

    The server's output goes to ``serve-<port>.log`` in ``workdir`` (shown when it does not start).
    """
    port = _free_port()
    log_path = workdir / f"serve-{port}.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [MLFLOW, "models", "serve", "-m", "models:/digits-cnn@champion", "--host", "127.0.0.1",
             "--port", str(port), *options],
            cwd=workdir, env=_env(uri), stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_for_ping(base, server, ready_seconds, log_path)
        yield base
    finally:
        server.terminate()
        server.wait(timeout=60)


def _wait_for_ping(base: str, server: subprocess.Popen, seconds: int, log_path: Path) -> None:
    from servers import wait_until_answering

    problem = wait_until_answering(f"{base}/ping", server, seconds)
    if problem:
        pytest.fail(f"model server {problem}:\n{log_path.read_text()[-4000:]}")


def _check_invocations(base: str, digits) -> None:
    x = digits.x_test[:16]
    response = requests.post(f"{base}/invocations", json={"inputs": x.tolist()}, timeout=30)
    assert response.status_code == 200, response.text
    predictions = np.asarray(response.json()["predictions"])
    assert predictions.shape == (16, 10)
    assert np.mean(predictions.argmax(1) == digits.y_test[:16]) >= 0.9
    bad = requests.post(f"{base}/invocations", json={"inputs": np.zeros((2, 9, 9, 1)).tolist()}, timeout=30)
    assert bad.status_code == 400


@pytest.mark.slow
def test_models_serve_answers_invocations(champion, digits):
    uri, workdir = champion
    with _serve(uri, workdir, "--env-manager", "local") as base:
        _check_invocations(base, digits)


def _request(base: str, x: np.ndarray, batch_size: int) -> np.ndarray:
    body = {"inputs": x.tolist(), "params": {"batch_size": batch_size}}
    response = requests.post(f"{base}/invocations", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return np.asarray(response.json()["predictions"])


@pytest.mark.slow
def test_models_serve_concurrent_requests_match_serial_answers(champion, digits):
    """8 clients x 50 requests at once into one server process (uvicorn, 1 worker, whose
    /invocations handler runs ``predict`` in a thread pool): no errors, serial answers."""
    uri, workdir = champion
    jobs = [(t, r, 1 + (11 * t + 7 * r) % 48, 1 + r % 9) for t in range(8) for r in range(50)]
    with _serve(uri, workdir, "--env-manager", "local", "--workers", "1") as base:
        serial = {(t, r): _request(base, digits.x_test[:n], b) for t, r, n, b in jobs}
        answers, errors = {}, []
        start = threading.Barrier(8)

        def client(thread: int):
            start.wait()
            for t, r, n, b in jobs:
                if t == thread:
                    try:
                        answers[(t, r)] = _request(base, digits.x_test[:n], b)
                    except Exception as error:  # counted: the assertion reports how many failed
                        errors.append(str(error)[:300])

        clients = [threading.Thread(target=client, args=(t,)) for t in range(8)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join()
    assert not errors, f"{len(errors)} of {len(jobs)} concurrent requests failed, e.g. {errors[:2]}"
    for key, expected in serial.items():
        np.testing.assert_array_equal(answers[key], expected, err_msg=str(key))


@pytest.mark.slow
def test_models_serve_builds_the_model_environment(champion, digits):
    """MLflow's default env manager (virtualenv: pyenv's Python 3.11.7 + the model's
    requirements.txt, where mlflow-tflite is not installed) serves the model from its code/."""
    uri, workdir = champion
    # The first run builds the environment (pip installs mlflow, ai-edge-litert, numpy, pandas);
    # MLflow caches it under ~/.mlflow/envs by a hash of the requirements.
    with _serve(uri, workdir, ready_seconds=1500) as base:
        _check_invocations(base, digits)
