"""The main job through the MLflow client: run, params, metrics, tags, inputs, model, registry."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

import mlflow
from mlflow import MlflowClient
import store
from mlflow_tflite.flavor import runtime
from mlflow_tflite.cli import cli
from mlflow_tflite.options import Objective
from mlflow_tflite.sweep.main_job import run_variant
from mlflow_tflite.variants import Variant

CONTRACT_METRICS = {
    "accuracy", "source_accuracy", "accuracy_drop", "agreement", "max_abs_error", "size_bytes",
    "gzip_size_bytes", "latency_ms_p50", "latency_ms_p90", "latency_ms_mean", "convert_seconds",
}
CONTRACT_PARAMS = {"quant", "sparsity", "input_size", "calibration_samples", "ops", "source"}


def test_int8_variant_run_is_complete(demo_prepared, tracking):
    result = run_variant(demo_prepared, Variant("int8", input_size=8))
    client = MlflowClient()
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert CONTRACT_PARAMS <= run.data.params.keys()
    assert run.data.params["quant"] == "int8" and run.data.params["source"] == "demo:digits-cnn"
    assert CONTRACT_METRICS <= run.data.metrics.keys()
    metrics = run.data.metrics
    assert metrics["accuracy_drop"] == pytest.approx(metrics["source_accuracy"] - metrics["accuracy"])
    assert metrics["accuracy"] >= 0.95 and metrics["accuracy_drop"] <= 0.01
    assert metrics["size_bytes"] < 100_000 and metrics["gzip_size_bytes"] < metrics["size_bytes"]
    assert run.data.tags["mlflow_tflite.variant"] == "int8-s0-8px" and run.info.run_name == "int8-s0-8px"
    assert run.data.tags["mlflow_tflite.role"] == "variant"
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "mlflow-tflite/digits-cnn"
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    contexts = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert set(contexts) == {"evaluation", "calibration"}
    assert contexts["evaluation"].name == "digits-test"

    logged = mlflow.models.get_model_info(result.model_uri)
    assert logged.flavors["tflite"]["quantization"] == "int8"
    assert logged.signature is not None and logged.saved_input_example_info is not None

    version = client.get_model_version_by_alias("digits-cnn", "champion")
    assert str(version.version) == "1" and version.tags["mlflow_tflite.variant"] == "int8-s0-8px"
    model = mlflow.pyfunc.load_model("models:/digits-cnn@champion")
    predictions = model.predict(demo_prepared.dataset.x_test)
    assert np.mean(predictions.argmax(1) == demo_prepared.dataset.y_test) >= 0.95
    interpreter = mlflow_tflite_interpreter("models:/digits-cnn@champion")
    assert runtime.quantization_mode(interpreter) == "int8"


def mlflow_tflite_interpreter(uri):
    import mlflow_tflite

    return mlflow_tflite.load_model(uri)


def test_the_users_experiment_wins_and_gets_a_kind_only_when_it_has_none(demo_prepared, tracking, monkeypatch):
    client = MlflowClient()
    mine = client.create_experiment("mine")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "mine")
    run = client.get_run(run_variant(demo_prepared, Variant("none", input_size=8), register=False).run_id)
    assert run.info.experiment_id == mine
    assert client.get_experiment(mine).tags["mlflow.experimentKind"] == "custom_model_development"
    genai = client.create_experiment("genai", tags={"mlflow.experimentKind": "genai_development"})
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "genai")
    run_variant(demo_prepared, Variant("none", input_size=8), register=False)
    assert client.get_experiment(genai).tags["mlflow.experimentKind"] == "genai_development"
    assert client.get_experiment_by_name("mlflow-tflite/digits-cnn") is None


def test_champion_is_decided_by_the_objective_on_the_same_data(demo_prepared, tracking):
    client = MlflowClient()
    first = run_variant(demo_prepared, Variant("int8", input_size=8))
    assert first.registration.champion and first.registration.objective == "latency"
    assert first.registration.reason == "version 1 is champion: the first version within the tolerance"
    assert client.get_registered_model("digits-cnn").tags["mlflow_tflite.objective"] == "latency"
    p50 = float(client.get_model_version("digits-cnn", "1").tags["latency_ms_p50"])

    def champion_tags(**values):  # the champion's recorded measurements, as the rule reads them
        for key, value in values.items():
            client.set_model_version_tag("digits-cnn", "1", key, repr(value))

    # The champion measured 4x slower: a variant at the same accuracy that is faster takes champion.
    champion_tags(latency_ms_p50=4 * p50, latency_ms_ci95_low=4 * p50, latency_ms_ci95_high=4 * p50)
    faster = run_variant(demo_prepared, Variant("dynamic", input_size=8))
    assert faster.metrics["accuracy"] == first.metrics["accuracy"]
    assert faster.registration.champion
    percent = round((4 * p50 - faster.metrics["latency_ms_p50"]) / (4 * p50) * 100)
    assert faster.registration.reason == f"version 2 is champion: {percent}% faster than version 1 at the same accuracy"
    assert client.get_model_version_by_alias("digits-cnn", "champion").version == 2
    beaten = client.get_model_version("digits-cnn", "1").description.splitlines()[0]
    assert beaten == "int8-s0-8px: version 2 took champion from it"
    # The new champion measured 4x faster than anything can be: the next version is slower and does not take it.
    tiny = faster.metrics["latency_ms_p50"] / 4
    for key in ("latency_ms_p50", "latency_ms_ci95_low", "latency_ms_ci95_high"):
        client.set_model_version_tag("digits-cnn", "2", key, repr(tiny))
    slower = run_variant(demo_prepared, Variant("int8", input_size=8))
    assert not slower.registration.champion
    assert slower.registration.reason.startswith("version 2 stays champion: version 3 is ")
    assert client.get_model_version_by_alias("digits-cnn", "champion").version == 2
    assert client.get_model_version_by_alias("digits-cnn", "challenger").version == 3
    # A version evaluated on other data is not compared.
    for version in ("1", "2", "3"):
        client.set_model_version_tag("digits-cnn", version, "mlflow_tflite.eval_digest", "other")
    other = run_variant(demo_prepared, Variant("none", input_size=8))
    assert other.registration.reason == "version 2 stays champion: version 4 was evaluated on other data"
    # The objective is the registered model's: a later registration with another one does not change it.
    by_size = run_variant(demo_prepared, Variant("dynamic", input_size=8), objective=Objective.SIZE)
    assert by_size.registration.objective == "latency"
    description = client.get_model_version("digits-cnn", by_size.registration.version).description
    assert description.splitlines()[0] == f"dynamic-s0-8px: {by_size.registration.reason}"


def test_promote_objective_changes_the_registered_models_objective(demo_prepared, tracking):
    client = MlflowClient()
    dense = run_variant(demo_prepared, Variant("none", input_size=8), "objective-digits")
    small = run_variant(demo_prepared, Variant("dynamic", input_size=8), register=False)
    result = CliRunner().invoke(cli, ["promote", "--model-uri", small.model_uri, "--registered-model-name",
                                      "objective-digits", "--objective", "size"])
    assert result.exit_code == 0, result.output
    assert client.get_registered_model("objective-digits").tags["mlflow_tflite.objective"] == "size"
    percent = round((dense.metrics["size_bytes"] - small.metrics["size_bytes"]) / dense.metrics["size_bytes"] * 100)
    assert result.output == (f"registered objective-digits version 2; version 2 is champion: {percent}% smaller than "
                             "version 1 at the same accuracy\n")


def _invoke(args):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, digits):
    folder = tmp_path_factory.mktemp("bad")
    (folder / "notes.h5").write_text("not a model")
    (folder / "weights.bin").write_bytes(b"\x00" * 10)
    import tf_keras

    model = tf_keras.Sequential([tf_keras.Input((8, 8, 1)), tf_keras.layers.Flatten(), tf_keras.layers.Dense(10, activation="softmax")])
    model.save(folder / "tiny.h5")
    x_train, x_test = digits.x_train[:64], digits.x_test[:32]
    y_train, y_test = digits.y_train[:64], digits.y_test[:32]
    np.savez(folder / "wrong_shape.npz", x_train=x_train[:, :4], y_train=y_train, x_test=x_test[:, :4], y_test=y_test)
    np.savez(folder / "bad_labels.npz", x_train=x_train, y_train=y_train + 5, x_test=x_test, y_test=y_test + 5)
    nan_x = x_test.copy()
    nan_x[0, 0, 0, 0] = np.nan
    np.savez(folder / "nan.npz", x_train=x_train, y_train=y_train, x_test=nan_x, y_test=y_test)
    inf_x = x_train.copy()
    inf_x[1, 1, 1, 0] = np.inf
    np.savez(folder / "inf.npz", x_train=inf_x, y_train=y_train, x_test=x_test, y_test=y_test)
    np.savez(folder / "good.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return folder


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "{d}/missing.keras"], "does not exist"),
        (["--model", "{d}/notes.h5", "--data", "{d}/good.npz"], "could not be loaded as a Keras model"),
        (["--model", "{d}/weights.bin"], "unknown format"),
        (["--quant", "int4"], "quant 'int4' is unknown"),
        (["--model", "{d}/tiny.h5", "--quant", "int8"], "needs a representative dataset"),
        (["--model", "{d}/tiny.h5", "--quant", "int16x8"], "needs a representative dataset"),
        (["--calibration-samples", "0"], "calibration_samples=0 must be > 0"),
        (["--model", "{d}/tiny.h5", "--data", "{d}/wrong_shape.npz"], "expects (8, 8, 1)"),
        (["--model", "{d}/tiny.h5", "--data", "{d}/bad_labels.npz"], "labels in [5, 14]"),
        (["--model", "{d}/tiny.h5", "--data", "{d}/nan.npz"], "x_test of"),
        (["--model", "{d}/tiny.h5", "--data", "{d}/inf.npz"], "NaN or inf"),
        (["--sparsity", "1.5"], "outside [0, 1)"),
    ],
)
def test_bad_input_is_one_line_and_registers_nothing(args, message, bad_inputs, tracking):
    result = _invoke(["convert", *[a.format(d=bad_inputs) for a in args]])
    assert result.exit_code == 1
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1 and message in error_lines[0], result.output
    assert "Traceback" not in result.output
    assert MlflowClient().search_registered_models() == []


def test_cli_convert_with_npz_data_and_tf_keras_file(bad_inputs, tracking):
    result = _invoke(["convert", "--model", f"{bad_inputs}/tiny.h5", "--data", f"{bad_inputs}/good.npz",
                      "--quant", "dynamic"])
    assert result.exit_code == 0, result.output
    version = MlflowClient().get_model_version_by_alias("tiny", "champion")
    run = MlflowClient().get_run(version.run_id)
    assert run.data.params["source"].endswith("tiny.h5")
    assert {"accuracy", "agreement", "max_abs_error"} <= run.data.metrics.keys()


def test_config_file_sets_expert_options_and_the_command_line_wins(bad_inputs, tracking, tmp_path):
    config = tmp_path / "options.yaml"
    config.write_text("run: {task: fidelity, num_threads: 2}\ntolerance: {min_cosine_similarity: 0.999}\n"
                      "preprocessing: {scale: 1.0}\n")
    result = _invoke(["convert", "--model", f"{bad_inputs}/tiny.h5", "--data", f"{bad_inputs}/good.npz",
                      "--quant", "dynamic", "--config", str(config), "--num-threads", "1", "--no-register"])
    assert result.exit_code == 0, result.output
    run = store.search_runs()[0]
    assert run.data.params["task"] == "fidelity"  # from the file
    assert run.data.params["num_threads"] == "1"  # typed on the command line: wins over the file
    assert "accuracy" not in run.data.metrics and "cosine_similarity" in run.data.metrics
    bad = CliRunner().invoke(cli, ["convert", "--config", str(tmp_path / "missing.yaml")])
    assert bad.exit_code == 1 and bad.output.count("Error:") == 1 and "does not exist" in bad.output
