"""Sweeps on real conversions: child runs, selection, registry aliases, crashes, resume, bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

import store
import faults
from mlflow_tflite.track.rows import Row
from mlflow_tflite.track import selection
from mlflow_tflite.sweep import worker
from mlflow_tflite.cli import cli
from mlflow_tflite.errors import TFLiteError
from mlflow_tflite.track.selection import Tolerance
from mlflow_tflite.sweep.config import SweepConfig
from mlflow_tflite.sweep.orchestrate import run_sweep
from mlflow_tflite.variants import expand_grid


def children(parent_run_id):
    client = MlflowClient()
    experiment = client.get_run(parent_run_id).info.experiment_id
    return client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=1000)


def test_select_best_respects_tolerance_budgets_and_objective():
    def cand(name, accuracy, drop, size, latency):
        return Row(name, metrics={"accuracy": accuracy, "accuracy_drop": drop,
                                             "size_bytes": size, "latency_ms_p50": latency})

    rows = [cand("a", 0.99, 0.0, 200, 0.05), cand("b", 0.985, 0.005, 60, 0.02),
            cand("c", 0.96, 0.03, 20, 0.01), cand("d", 0.985, 0.005, 60, 0.02)]
    tight, loose = Tolerance(0.01), Tolerance(0.05)
    assert selection.select_best(rows, "latency", tight).variant == "b"  # c is over tolerance; b<d by name
    assert selection.select_best(rows, "size", tight).variant == "b"
    assert selection.select_best(rows, "accuracy", tight).variant == "a"
    assert selection.select_best(rows, "latency", loose).variant == "c"
    assert selection.select_best(rows, "latency", tight, max_size_bytes=100).variant == "b"
    assert selection.select_best(rows, "latency", tight, max_latency_ms=0.001) is None


def test_sweep_logs_children_selects_and_registers(digits_files, tracking, monkeypatch):
    model, data = digits_files
    monkeypatch.setattr(worker, "variant_task", faults.crash_on_variant)
    monkeypatch.setenv(faults.CRASH_VARIANT_ENV, "float16-s0-8px")  # this variant's worker aborts
    variants = expand_grid(["none", "float16", "int8"], [0.0, 0.5], [None])
    result = run_sweep(SweepConfig(variants, model, data, objective="size", registered_model_name="digits"),
                       progress=False)

    runs = {r.data.tags["mlflow_tflite.variant"]: r for r in children(result.parent_run_id)}
    assert sorted(runs) == sorted(f"{q}-s{s}-8px" for q in ("none", "float16", "int8") for s in ("0", "0.5"))
    crashed = runs["float16-s0-8px"]
    assert crashed.info.status == "FAILED" and "crashed" in crashed.data.tags["mlflow_tflite.error"]
    finished = {n: r for n, r in runs.items() if r.info.status == "FINISHED"}
    assert len(finished) == 5
    for run in finished.values():
        assert run.data.tags["mlflow_tflite.role"] == "variant"
        assert {"accuracy", "accuracy_drop", "size_bytes", "gzip_size_bytes", "sparsity_achieved"} <= run.data.metrics.keys()
    pruned = finished["none-s0.5-8px"].data.metrics
    assert pruned["sparsity_achieved"] == pytest.approx(0.5, abs=0.05)
    assert pruned["gzip_size_bytes"] < 0.8 * finished["none-s0-8px"].data.metrics["gzip_size_bytes"]
    assert finished["none-s0-8px"].data.metrics["sparsity_achieved"] < 0.01

    client = MlflowClient()
    parent = client.get_run(result.parent_run_id)
    assert parent.data.tags["mlflow_tflite.role"] == "sweep" and parent.info.run_name == "sweep-digits-6"
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.name == "mlflow-tflite/digits"
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert {r.info.experiment_id for r in runs.values()} == {parent.info.experiment_id}
    assert {r.info.run_name for r in runs.values()} == set(runs)
    artifacts = {a.path for a in client.list_artifacts(result.parent_run_id)}
    assert {"comparison.json", "pareto.png"} <= artifacts
    pareto = Image.open(mlflow.artifacts.download_artifacts(f"runs:/{result.parent_run_id}/pareto.png"))
    assert pareto.size == (1000, 600)  # the whole 10 x 6 inch figure at 100 dpi
    table = store.load_table(result.parent_run_id, "comparison.json")
    assert len(table) == 6 and table["chosen"].sum() == 1

    # Stated independently of the selection code: int8 stores weights in 1 byte (float16 in 2,
    # float in 4) and the dense flatbuffer does not shrink with pruning, so both int8 variants
    # are the smallest; both are within 0.01 of the source here, so the more accurate one wins
    # (then the name).
    int8 = {n: r.data.metrics for n, r in finished.items() if r.data.params["quant"] == "int8"}
    assert set(int8) == {"int8-s0-8px", "int8-s0.5-8px"} and all(m["accuracy_drop"] <= 0.01 for m in int8.values())
    best_name = sorted(int8, key=lambda n: (-int8[n]["accuracy"], n))[0]
    assert parent.data.tags["mlflow_tflite.best_variant"] == best_name
    assert int8[best_name]["size_bytes"] < 0.35 * finished["none-s0-8px"].data.metrics["size_bytes"]
    champion = client.get_model_version_by_alias("digits", "champion")
    assert champion.run_id == finished[best_name].info.run_id
    assert champion.tags["mlflow_tflite.variant"] == best_name and "| accuracy |" in champion.description

    # Same sweep again: equal score on the same data, so the new version is only a challenger.
    monkeypatch.delenv(faults.CRASH_VARIANT_ENV)
    again = run_sweep(SweepConfig(expand_grid(["int8"], [0.0], [None]), model, data, objective="size",
                                  registered_model_name="digits"), progress=False)
    assert not again.registration.champion
    assert str(client.get_model_version_by_alias("digits", "challenger").version) == again.registration.version
    assert str(client.get_model_version_by_alias("digits", "champion").version) == str(champion.version)

    # A budget nobody meets: nothing registered, champion untouched.
    versions_before = len(client.search_model_versions("name='digits'"))
    none = run_sweep(SweepConfig(expand_grid(["int8"], [0.0], [None]), model, data, max_size_bytes=1000,
                                 registered_model_name="digits"), progress=False)
    assert none.best is None and none.registration is None and "max_size_bytes=1000" in none.message
    assert len(client.search_model_versions("name='digits'")) == versions_before
    assert str(client.get_model_version_by_alias("digits", "champion").version) == str(champion.version)


def test_promote_command_uses_the_runs_metrics(digits_files, tracking):
    model, data = digits_files
    result = run_sweep(SweepConfig(expand_grid(["dynamic", "int8"], [0.0], [None]), model, data, register=False),
                       progress=False)
    uris = [row.model_uri for row in result.rows]
    first = CliRunner().invoke(cli, ["promote", "--model-uri", uris[0], "--registered-model-name", "m",
                                     "--objective", "size"])
    assert first.exit_code == 0
    assert first.output == "registered m version 1; version 1 is champion: the first version within the tolerance\n"
    # int8 keeps float I/O tensors and quantize/dequantize ops: a little larger than dynamic range.
    dynamic, int8 = (row.metrics for row in result.rows)
    assert int8["size_bytes"] > dynamic["size_bytes"]
    larger = round((int8["size_bytes"] - dynamic["size_bytes"]) / dynamic["size_bytes"] * 100)
    accuracy = ("at the same accuracy" if int8["accuracy"] == dynamic["accuracy"]
                else f"at accuracy {int8['accuracy']:.4f} vs {dynamic['accuracy']:.4f}")
    second = CliRunner().invoke(cli, ["promote", "--model-uri", uris[1], "--registered-model-name", "m"])
    assert second.exit_code == 0
    assert second.output == f"registered m version 2; version 1 stays champion: version 2 is {larger}% larger than it {accuracy}\n"
    assert MlflowClient().get_model_version_by_alias("m", "challenger").version == 2
    bad = CliRunner().invoke(cli, ["promote", "--model-uri", "runs:/0123456789abcdef/model", "--registered-model-name", "m"])
    assert bad.exit_code == 1 and bad.output.startswith("Error:") and "does not name a logged model" in bad.output


def test_pruning_a_keras3_source_fails_only_the_sparsity_variants(tmp_path, digits, tracking):
    import keras

    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, activation="relu"),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10, activation="softmax")])
    model.save(tmp_path / "k3.keras")
    np.savez(tmp_path / "d.npz", x_train=digits.x_train[:200], y_train=digits.y_train[:200],
             x_test=digits.x_test[:100], y_test=digits.y_test[:100])
    result = run_sweep(SweepConfig(expand_grid(["none"], [0.0, 0.5], [None]), str(tmp_path / "k3.keras"),
                                   str(tmp_path / "d.npz"), tolerance=Tolerance(1.0), register=False), progress=False)
    status = {row.variant: (row.status, row.error) for row in result.rows}
    assert status["none-s0-8px"][0] == "FINISHED"
    assert status["none-s0.5-8px"][0] == "FAILED" and "needs a tf_keras model" in status["none-s0.5-8px"][1]


def test_killed_sweep_resumes_and_logs_each_variant_once(digits_files, tracking, tmp_path):
    model, data = digits_files
    args = [sys.executable, "-m", "mlflow_tflite.cli", "sweep", "--model", model, "--data", data,
            "--quant", "none,dynamic,float16,int8", "--sparsity", "0", "--no-register"]
    client = MlflowClient()
    client.search_experiments()  # create the store's tables first: two processes must not race at it
    log = open(tmp_path / "sweep.log", "w")  # a file, not a pipe: a full pipe would block the sweep
    process = subprocess.Popen(args, start_new_session=True, stdout=log, stderr=log)
    try:
        parent_id = _wait_for_a_finished_child(client, process, tmp_path / "sweep.log")
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        log.close()
    finished_before = {r.data.tags["mlflow_tflite.variant"] for r in children(parent_id) if r.info.status == "FINISHED"}
    assert 1 <= len(finished_before) < 4

    resumed = CliRunner().invoke(cli, args[3:] + ["--resume", parent_id])
    assert resumed.exit_code == 0, resumed.output
    finished = [r.data.tags["mlflow_tflite.variant"] for r in children(parent_id) if r.info.status == "FINISHED"]
    assert sorted(finished) == sorted(["none-s0-8px", "dynamic-s0-8px", "float16-s0-8px", "int8-s0-8px"])
    assert all(r.info.status != "RUNNING" for r in children(parent_id))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--sparsity", "0,1.0"], "outside [0, 1)"),
        (["--quant", ""], "quant is an empty list"),
        (["--quant", " , "], "quant is an empty list"),
        (["--objective", "fastest"], "objective 'fastest' is unknown"),
        (["--max-accuracy-drop", "-0.1"], "max_accuracy_drop=-0.1 must be >= 0"),
        (["--sparsity", "half"], "sparsity item 'half' is not a valid float"),
        (["--workers", "0"], "workers=0 must be >= 1"),
    ],
)
def test_sweep_bad_input_is_one_line(args, message, tracking):
    result = CliRunner().invoke(cli, ["sweep", *args])
    assert result.exit_code == 1
    assert result.output.count("Error:") == 1 and message in result.output, result.output
    assert MlflowClient().search_registered_models() == []
    assert store.search_runs() == []


def test_sweep_input_errors_are_input_errors_before_any_run(tracking, tmp_path):
    """Not "the tracking store stopped answering": the whole one-line message, no run, no results file."""
    missing = str(tmp_path / "missing.h5")
    cases = [
        (["--model", missing, "--quant", "int8", "--sparsity", "0"],
         f"Error: model {missing!r} does not exist; pass a .keras/.h5/.pb/.pt2 file, a SavedModel directory, a "
         "package.module:factory or an MLflow model URI (or omit model for the digits demo)"),
        (["--quant", "int8", "--sparsity", "0", "--resume", "0123456789abcdef0123456789abcdef"],
         "Error: resume '0123456789abcdef0123456789abcdef' is not a run in this tracking store; pass a sweep's "
         "parent run id"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(cli, ["sweep", *args])
        assert result.exit_code == 1, result.output
        assert result.output.strip().splitlines()[-1] == message
        assert "stopped answering" not in result.output and "Traceback" not in result.output
    assert store.search_runs() == []
    assert not list(tmp_path.glob("mlflow-tflite-sweep-*.json"))  # the working directory (tracking's tmp_path)


def test_the_config_file_sweep_section_reaches_the_sweep(tracking, tmp_path):
    """Under `mlflow run` the sweep's expert options (ray_address, ...) come from the config file."""
    config = tmp_path / "options.yaml"
    config.write_text("sweep: {ray_address: '127.0.0.1:1'}\n")
    result = CliRunner().invoke(cli, ["sweep", "--quant", "int8", "--sparsity", "0", "--config", str(config)])
    assert result.exit_code == 1 and result.output.strip().splitlines()[-1] == (
        "Error: ray_address='127.0.0.1:1' only applies to executor=ray, but executor is local; add executor=ray or "
        "leave ray_address out"), result.output
    config.write_text("sweep: {speed: fast}\n")
    result = CliRunner().invoke(cli, ["sweep", "--quant", "int8", "--sparsity", "0", "--config", str(config)])
    assert result.exit_code == 1 and "config section 'sweep' has unknown keys ['speed']" in result.output
    assert store.search_runs() == []


def _sweep_args(model, data, *extra):
    return ["sweep", "--model", model, "--data", data, "--sparsity", "0", *extra]


def test_resume_refuses_other_settings(digits_files, tracking):
    model, data = digits_files
    first = run_sweep(SweepConfig(expand_grid(["int8"], [0.0], [None]), model, data, register=False), progress=False)
    before = MlflowClient().get_run(first.parent_run_id)
    changed = SweepConfig(expand_grid(["int8"], [0.0], [None], calibration_samples=50), model, data, register=False,
                          resume=first.parent_run_id)
    with pytest.raises(TFLiteError, match=r"other settings \(calibration_samples: \[200\] -> \[50\]\)"):
        run_sweep(changed, progress=False)
    result = CliRunner().invoke(cli, _sweep_args(model, data, "--quant", "int8", "--no-register", "--objective", "size",
                                                 "--resume", first.parent_run_id))
    assert result.exit_code == 1 and result.output.count("Error:") == 1, result.output
    assert "objective: 'latency' -> 'size'" in result.output
    assert [r.info.status for r in children(first.parent_run_id)] == ["FINISHED"]  # nothing ran again
    after = MlflowClient().get_run(first.parent_run_id)  # a refused resume leaves the old parent as it was
    assert (after.info.status, after.info.end_time, after.data.tags) == (before.info.status, before.info.end_time,
                                                                         before.data.tags)


def test_resume_needs_a_sweep_parent_and_native_is_one_size(digits_files, tracking):
    model, data = digits_files
    with mlflow.start_run() as other:
        pass
    with pytest.raises(TFLiteError, match=f"run {other.info.run_id} is not a sweep parent"):
        run_sweep(SweepConfig(expand_grid(["int8"], [0.0], [None]), model, data, resume=other.info.run_id),
                  progress=False)
    assert "mlflow_tflite.role" not in MlflowClient().get_run(other.info.run_id).data.tags
    result = run_sweep(SweepConfig(expand_grid(["int8"], [0.0], [None, 8]), model, data, register=False),
                       progress=False)  # native is 8 here: one variant, one child
    assert [r.variant for r in result.rows] == ["int8-s0-8px"] and len(children(result.parent_run_id)) == 1


def test_resume_runs_a_failed_variant_again_and_keeps_one_child(digits_files, tracking, monkeypatch):
    model, data = digits_files
    monkeypatch.setattr(worker, "variant_task", faults.crash_on_variant)
    monkeypatch.setenv(faults.CRASH_VARIANT_ENV, "float16-s0-8px")
    variants = expand_grid(["none", "float16"], [0.0], [None])
    first = run_sweep(SweepConfig(variants, model, data, register=False), progress=False)
    failed = {r.data.tags["mlflow_tflite.variant"]: r for r in children(first.parent_run_id)}["float16-s0-8px"]
    assert failed.info.status == "FAILED"

    monkeypatch.delenv(faults.CRASH_VARIANT_ENV)
    run_sweep(SweepConfig(variants, model, data, register=False, resume=first.parent_run_id), progress=False)
    current = children(first.parent_run_id)
    assert sorted((r.data.tags["mlflow_tflite.variant"], r.info.status) for r in current) == [
        ("float16-s0-8px", "FINISHED"), ("none-s0-8px", "FINISHED")]
    old = MlflowClient().get_run(failed.info.run_id)
    replacement = next(r for r in current if r.data.tags["mlflow_tflite.variant"] == "float16-s0-8px")
    assert old.info.lifecycle_stage == "deleted"
    assert old.data.tags["mlflow_tflite.superseded_by"] == replacement.info.run_id


def test_kill_after_registration_then_resume_registers_once(digits_files, tracking, tmp_path):
    model, data = digits_files
    args = _sweep_args(model, data, "--quant", "dynamic,int8", "--registered-model-name", "killed")
    MlflowClient().search_experiments()  # create the store's tables before the subprocess
    killed = subprocess.run([sys.executable, faults.__file__, "exit-after-register", *args],
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == 9, killed.stderr[-2000:]
    client = MlflowClient()
    assert len(client.search_model_versions("name='killed'")) == 1
    parent = store.search_runs("tags.mlflow_tflite.role = 'sweep'", client)[0]
    assert parent.info.status == "RUNNING" and "mlflow_tflite.registered_version" not in parent.data.tags

    resumed = CliRunner().invoke(cli, args + ["--resume", parent.info.run_id])
    assert resumed.exit_code == 0, resumed.output
    versions = client.search_model_versions("name='killed'")
    assert len(versions) == 1, [(v.version, v.run_id) for v in versions]
    champion = client.get_model_version_by_alias("killed", "champion")
    assert str(champion.version) == str(versions[0].version)
    assert client.get_run(parent.info.run_id).data.tags["mlflow_tflite.registered_version"] == str(champion.version)


def test_ctrl_c_marks_the_sweep_killed_and_prints_one_line(digits_files, tracking, tmp_path):
    model, data = digits_files
    # Pruned variants keep the sweep busy well after its first child, so Ctrl-C lands mid-sweep.
    args = [sys.executable, "-m", "mlflow_tflite.cli", "sweep", "--model", model, "--data", data,
            "--quant", "none,dynamic,float16,int8,int16x8", "--sparsity", "0,0.5,0.8", "--no-register"]
    client = MlflowClient()
    client.search_experiments()
    log = open(tmp_path / "sweep.log", "w")
    # A child inherits an ignored SIGINT: pytest run as a background job of a non-interactive shell
    # (`.ci/run &`) has SIGINT ignored (POSIX), and Python then never raises KeyboardInterrupt. The
    # sweep gets the default disposition, as in a terminal.
    process = subprocess.Popen(args, start_new_session=True, stdout=log, stderr=log,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    parent_id = _wait_for_a_finished_child(client, process, tmp_path / "sweep.log")
    os.killpg(process.pid, signal.SIGINT)
    assert process.wait(timeout=120) == 130
    log.close()
    output = (tmp_path / "sweep.log").read_text()
    assert "Traceback" not in output and "Error: interrupted" in output, output[-3000:]
    assert "cuInit" not in output and "cuda drivers" not in output  # TensorFlow's start-up notices are dropped
    assert client.get_run(parent_id).info.status == "KILLED"
    statuses = {r.info.status for r in children(parent_id)}
    assert statuses <= {"FINISHED", "KILLED"}, statuses


def _wait_for_a_finished_child(client, process, log_path, timeout=300) -> str:
    """Poll the store until the sweep has a FINISHED child; return the parent run id."""
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        time.sleep(0.3)
        try:
            sweeps = store.search_runs("tags.mlflow_tflite.role = 'sweep'", client)
        except MlflowException as error:  # the sweep process may hold the sqlite write lock
            if "locked" not in str(error):
                raise
            continue
        if sweeps and any(r.info.status == "FINISHED" for r in children(sweeps[0].info.run_id)):
            return sweeps[0].info.run_id
    pytest.fail(f"the sweep never finished a variant: {log_path.read_text()[-2000:]}")


def test_identical_reruns_choose_the_same_variant(digits_files, tracking):
    """Latency is timed in a quiet phase and noise-level differences are ties: the choice is stable."""
    model, data = digits_files
    variants = expand_grid(["none", "dynamic", "float16", "int8"], [0.0], [None])
    chosen = [run_sweep(SweepConfig(variants, model, data, workers=2, register=False), progress=False).best.variant
              for _ in range(3)]
    assert len(set(chosen)) == 1, chosen


def test_a_litert_sweep_in_a_terminal_prints_only_its_own_lines(digits_files, tracking):
    """The LiteRT Quantizer runs tqdm bars in the workers; the workers end by SIGTERM. Nothing of
    either reaches the terminal: no bar, no "leaked semaphore" warning at exit."""
    model, data = digits_files
    result = subprocess.run([sys.executable, "-m", "mlflow_tflite.cli", "sweep", "--model", model, "--data", data,
                             "--quant", "dynamic", "--sparsity", "0", "--backend", "litert", "--no-register"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "leaked semaphore" not in result.stderr and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "dynamic-s0-8px-litert                    FINISHED" in result.stdout
