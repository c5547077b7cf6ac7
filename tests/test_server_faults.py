"""Faults of a shared tracking server: killed mid-sweep, restarted, and the sweep resumed."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from mlflow import MlflowClient
import store
from mlflow_tflite import tags
from mlflow_tflite.track.sweep_runs import children
from servers import subprocess_env
from servers import mlflow_server, postgres, team_server, tracking_server  # noqa: F401  (fixtures)

VARIANTS = {f"{q}-s{s}-8px" for q in ("none", "dynamic", "float16", "int8") for s in ("0", "0.5")}


def _sweep_command(model: str, data: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mlflow_tflite.cli", "sweep", "--model", model, "--data", data,
            "--quant", "none,dynamic,float16,int8", "--sparsity", "0,0.5", "--no-register", *extra]


def _wait_for_a_logged_child(client: MlflowClient, process: subprocess.Popen, timeout: float = 300) -> str:
    """The sweep parent's run id, once one child has FINISHED (the sweep still running)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the sweep ended before the server was killed"
        for parent in store.search_runs(f"tags.{tags.ROLE_TAG} = 'sweep' and attributes.status = 'RUNNING'", client):
            if any(r.info.status == "FINISHED" for r in children(parent.info.run_id)):
                return parent.info.run_id
        time.sleep(0.5)
    raise AssertionError("no child run finished in time")


def test_server_killed_mid_sweep_fails_cleanly_and_resume_logs_each_variant_once(
        digits_files, team_server, tracking_server, tmp_path):
    model, data = digits_files
    cache = tmp_path / "cache"
    env = {**subprocess_env(team_server), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
           "MLFLOW_TFLITE_CACHE_DIR": str(cache)}
    client = MlflowClient()
    process = subprocess.Popen(_sweep_command(model, data), cwd=tmp_path, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        parent_id = _wait_for_a_logged_child(client, process)
        tracking_server.stop(kill=True)  # as a crash: SIGKILL, mid-sweep
        _, stderr = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
        if tracking_server.process is None:
            tracking_server.start()
    assert process.returncode == 1, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    error_lines = [line for line in stderr.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1, stderr[-3000:]
    assert "stopped answering" in error_lines[0] and f"--resume {parent_id}" in error_lines[0]
    saved_file = cache / "sweeps" / f"mlflow-tflite-sweep-{parent_id}.json"
    assert f"results saved to {saved_file};" in error_lines[0]  # the cache directory, named in the message
    assert not list(tmp_path.glob("mlflow-tflite-sweep-*.json"))  # nothing written where the sweep ran
    saved = json.loads(saved_file.read_text())
    assert saved["parent_run_id"] == parent_id and set(saved["variants"]) <= VARIANTS and saved["variants"]

    resumed = subprocess.run(_sweep_command(model, data, "--resume", parent_id), cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    runs = children(parent_id)  # active children: superseded ones are deleted
    assert sorted(r.data.tags[tags.VARIANT_TAG] for r in runs) == sorted(VARIANTS)  # each variant exactly once
    assert all(r.info.status == "FINISHED" for r in runs)
    print(f"\nkilled after a child finished; {len(saved['variants'])} variant(s) saved locally; "
          f"resume logged {len(runs)} children, one per variant")
