"""The Model Explorer overlay of a real int8 run, read through Model Explorer's own tflite adapter,
and `mlflow-tflite explore` serving it on 127.0.0.1; bad inputs as exact one-line errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

import mlflow
from servers import free_port, wait_until_answering
from mlflow_tflite.cli import cli
from mlflow_tflite.sweep.main_job import run_variant
from mlflow_tflite.variants import Variant

ROOT = Path(__file__).resolve().parent.parent
OVERLAY = "model_explorer/tensor_snr.json"
# The documented colour bands (docs/model-explorer.md): bad <= 20 dB, doubtful 20-30 dB, good above.
THRESHOLDS = [{"value": 20.0, "bgColor": "#d73027", "textColor": "#ffffff"},
              {"value": 30.0, "bgColor": "#fdae61", "textColor": "#000000"},
              {"value": 1000.0, "bgColor": "#1a9850", "textColor": "#ffffff"}]


@pytest.fixture(scope="module")
def runs(demo_prepared, tmp_path_factory):
    """A sqlite store with the demo's int8 variant (registered, champion) and its float variant."""
    folder = tmp_path_factory.mktemp("explorer")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        int8 = run_variant(demo_prepared, Variant("int8", input_size=8))
        float_run = run_variant(demo_prepared, Variant("none", input_size=8), register=False)
        yield {"uri": uri, "folder": folder, "int8": int8.run_id, "none": float_run.run_id}
    mlflow.set_tracking_uri(None)


def graph_output_tensors(graphs: dict) -> set[str]:
    """Every node output's ``tensor_name`` in Model Explorer's graph JSON (all collections and graphs)."""
    return {attr["value"] for collection in graphs["graphCollections"] for graph in collection["graphs"]
            for node in graph["nodes"] for output in node.get("outputsMetadata", [])
            for attr in output["attrs"] if attr["key"] == "tensor_name"}


def table_snrs(run_id: str) -> dict[str, float]:
    table = json.loads(Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="tensor_errors.json"))
                       .read_text())
    tensor, snr = table["columns"].index("tensor"), table["columns"].index("snr_db")
    return {row[tensor]: row[snr] for row in table["data"]}


def test_overlay_names_graph_tensors_with_the_table_snrs(runs):
    from model_explorer import node_data_builder as ndb
    from model_explorer.builtin_tflite_flatbuffer_adapter import BuiltinTfliteFlatbufferAdapter
    from model_explorer.utils import convert_adapter_response

    run_id = runs["int8"]
    overlay = json.loads(Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=OVERLAY)).read_text())
    model_dir = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model"))
    graphs = convert_adapter_response(BuiltinTfliteFlatbufferAdapter().convert(str(model_dir / "model.tflite"), {}))
    tensors = graph_output_tensors(graphs)
    snrs = table_snrs(run_id)
    assert len(snrs) >= 6  # conv, pool, conv, conv, mean, fully connected, ...
    assert set(overlay["results"]) <= tensors
    assert {name: set(result) for name, result in overlay["results"].items()} == {name: {"value"} for name in snrs}
    # tensor_errors.json (mlflow.log_table) keeps 10 decimals
    assert {name: result["value"] for name, result in overlay["results"].items()} == pytest.approx(snrs, abs=1e-9)
    assert overlay["thresholds"] == THRESHOLDS and overlay["name"] == "SNR vs float (dB)"
    # The file is what Model Explorer's own node data classes write for these values, less their defaults.
    rebuilt = json.loads(ndb.GraphNodeData(
        name=overlay["name"], results={k: ndb.NodeDataResult(**v) for k, v in overlay["results"].items()},
        thresholds=[ndb.ThresholdItem(**t) for t in overlay["thresholds"]]).to_json_string())
    assert {key: rebuilt[key] for key in overlay} == overlay
    defaults = json.loads(ndb.GraphNodeData(results={}).to_json_string())
    assert all(rebuilt[key] == defaults[key] for key in rebuilt.keys() - overlay.keys())


def test_explore_serves_the_champion_and_its_overlay_on_localhost(runs, tmp_path):
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": runs["uri"], "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
    log = tmp_path / "explore.log"
    started = time.monotonic()
    with log.open("w") as out:
        server = subprocess.Popen([sys.executable, "-m", "mlflow_tflite.cli", "explore", "models:/digits-cnn@champion",
                                   "--port", str(port), "--no-browser"], cwd=tmp_path, env=env, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        problem = wait_until_answering(f"{base}/check_health", server, 120)
        assert problem is None, f"{problem}: {log.read_text()}"
        data = served_data(log, server)
        answered = time.monotonic() - started
        assert "<app-root" in requests.get(f"{base}/", timeout=10).text  # the bundled web app, served locally
        (model,) = data["models"]
        assert model["url"].endswith("/int8-s0-8px.tflite") and data["nodeDataTargets"] == [""]
        command = {"extensionId": "builtin_tflite_flatbuffer", "cmdId": "convert", "modelPath": model["url"],
                   "settings": {}, "deleteAfterConversion": False}
        graphs = requests.get(f"{base}/api/v1/send_command", params={"json": json.dumps(command)}, timeout=60).json()
        (node_data_path,) = data["nodeData"]
        served = requests.get(f"{base}/api/v1/read_text_file", params={"path": node_data_path}, timeout=10).json()
        overlay = json.loads(served["content"])
        assert overlay["results"] and set(overlay["results"]) <= graph_output_tensors(graphs)
        assert overlay == json.loads(Path(mlflow.artifacts.download_artifacts(
            run_id=runs["int8"], artifact_path=OVERLAY)).read_text())
    finally:
        server.send_signal(signal.SIGTERM)  # as Ctrl-C (Model Explorer's own way to stop)
        server.wait(timeout=30)
    text = log.read_text()
    assert text.startswith(f"run {runs['int8']}: int8-s0-8px.tflite, SNR of {len(overlay['results'])} tensors "
                           "against the float model: bad (red) <= 20 dB, doubtful (orange) 20-30 dB, good (green) "
                           "> 30 dB; Ctrl-C stops Model Explorer\n"), text  # first: no download progress bars
    assert "Stopping server..." in text  # Model Explorer's own shutdown
    assert server.returncode == 0 and not Path(model["url"]).exists()  # the downloads are removed
    print(f"explore answered with the model and overlay loaded in {answered:.1f} s")


def served_data(log: Path, server: subprocess.Popen) -> dict:
    """The ``data`` parameter of the URL Model Explorer prints: the model and node data it loads."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and server.poll() is None:
        urls = [line for line in log.read_text().splitlines() if line.startswith("http://127.0.0.1:")]
        if urls:
            query = urllib.parse.parse_qs(urllib.parse.urlparse(urls[0]).query)
            return json.loads(query["data"][0])
        time.sleep(0.5)
    raise AssertionError(f"Model Explorer printed no URL: {log.read_text()}")


def explore_error(*args: str) -> str:
    result = CliRunner().invoke(cli, ["explore", *args])
    assert result.exit_code == 1, result.output
    return result.output


def test_explore_bad_inputs_are_one_line_errors(runs, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", runs["uri"])
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # as explore sets it (seen in its own process)
    mlflow.set_tracking_uri(runs["uri"])
    store = runs["uri"]
    assert explore_error("0123abcd") == (
        f"Error: no run '0123abcd' in the tracking store {store}; pass a variant run's id (convert prints it) "
        "or a model URI such as models:/<name>@champion\n")
    assert explore_error("models:/no-such-model@champion") == (
        f"Error: no model models:/no-such-model@champion in the tracking store {store}; pass a model URI such as "
        "models:/<name>@champion or models:/<name>/<version>, or a variant run's id\n")
    none_run = runs["none"]
    assert explore_error(none_run) == (
        f"Error: the run {none_run} has no model_explorer/tensor_snr.json: only quantized variants with float I/O "
        "get a per-tensor table (not quant=none, int8_full or --no-tensor-errors); pass such a run, "
        "e.g. an int8 variant\n")
    with mlflow.start_run() as bare:
        pass
    assert explore_error(bare.info.run_id) == (
        f"Error: the run {bare.info.run_id} has no model named 'model' (a sweep's parent run or a failed variant?); "
        "pass a variant run's id\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert explore_error(runs["int8"], "--port", str(port)) == (
            f"Error: port {port} on 127.0.0.1 is in use; pass another --port or leave it out for a free one\n")
    monkeypatch.setitem(sys.modules, "model_explorer", None)  # as if the [explorer] extra were not installed
    assert explore_error(runs["int8"]) == (
        'Error: Model Explorer is not installed; pip install "mlflow-tflite[explorer]"\n')


def test_a_run_logged_before_the_overlay_gets_one_made_from_its_table(runs, monkeypatch):
    from mlflow_tflite import flavor
    from mlflow_tflite.track.explore import downloaded

    monkeypatch.setenv("MLFLOW_TRACKING_URI", runs["uri"])
    mlflow.set_tracking_uri(runs["uri"])
    int8 = runs["int8"]
    model = Path(mlflow.artifacts.download_artifacts(f"runs:/{int8}/model")) / "model.tflite"
    table = json.loads(Path(mlflow.artifacts.download_artifacts(run_id=int8, artifact_path="tensor_errors.json"))
                       .read_text())
    with mlflow.start_run() as old:  # what a variant run logged before the overlay existed
        flavor.log_model(model.read_bytes(), name="model", quantization="int8")
        mlflow.log_dict(table, "tensor_errors.json")
    with downloaded(old.info.run_id, None) as session:
        made = json.loads(session.overlay_file.read_text())
        assert session.model_file.read_bytes() == model.read_bytes() and session.tensors == len(table["data"])
    logged = json.loads(Path(mlflow.artifacts.download_artifacts(run_id=int8, artifact_path=OVERLAY)).read_text())
    assert made["thresholds"] == THRESHOLDS and made["name"] == logged["name"]
    assert {k: v["value"] for k, v in made["results"].items()} == pytest.approx(
        {k: v["value"] for k, v in logged["results"].items()}, abs=1e-9)
