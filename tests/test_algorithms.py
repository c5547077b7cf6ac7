"""LiteRT Quantizer algorithms (``algorithm=``): a sweep dimension, the recipe record, and refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

import mlflow
import store
from mlflow import MlflowClient
from mlflow_tflite.build import quantize
from mlflow_tflite.build.graph import Builds, ModelKey
from mlflow_tflite.cli import cli
from mlflow_tflite.errors import TFLiteError
from mlflow_tflite.flavor.runtime import make_interpreter
from mlflow_tflite.measure.evaluate import run_in_source_order
from mlflow_tflite.variants import Variant


def _recipe_keys(run_id: str) -> set[str]:
    """The algorithm keys of the recipe recorded in the run's MLmodel."""
    mlmodel = yaml.safe_load(open(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model/MLmodel")))
    return {rule["algorithm_key"] for rule in json.loads(mlmodel["flavors"]["tflite"]["quantization_recipe"])}


def test_a_litert_sweep_crosses_algorithms_with_modes(digits_files, tracking):
    model, data = digits_files
    result = CliRunner().invoke(cli, ["sweep", "--model", model, "--data", data, "--quant", "dynamic,int8",
                                      "--sparsity", "0", "--backend", "litert", "--algorithm", "min_max,mse,octav",
                                      "--no-register", "--no-tensor-errors"])
    assert result.exit_code == 0, result.output
    runs = {r.data.tags["mlflow_tflite.variant"]: r for r in store.search_runs("tags.mlflow_tflite.role = 'variant'")}
    expected = {f"{q}-s0-8px-litert{suffix}" for q in ("dynamic", "int8") for suffix in ("", "-mse", "-octav")}
    assert set(runs) == expected, sorted(runs)
    keys = {"min_max": "min_max_uniform_quantize", "mse": "MSE", "octav": "OCTAV"}
    for name, run in runs.items():
        algorithm = run.data.params["algorithm"]
        assert run.info.status == "FINISHED" and name.endswith("litert" if algorithm == "min_max" else algorithm)
        assert keys[algorithm] in _recipe_keys(run.info.run_id)
        assert run.data.metrics["accuracy"] >= 0.95


@pytest.fixture(scope="module")
def digits_float(demo_prepared):
    """The demo CNN (CONV_2D + FULLY_CONNECTED) as a float flatbuffer at 8 px."""
    return Builds(demo_prepared.build_inputs()).float_model(ModelKey(8, 0.0), "builtins").tflite_model


def test_an_algorithm_changes_the_weights_and_keeps_accuracy(demo_prepared, digits_float):
    def accuracy(algorithm: str) -> tuple[bytes, float]:
        made = quantize.quantize(digits_float, Variant("dynamic_int4", input_size=8, backend="litert",
                                                       algorithm=algorithm), None).tflite_model
        outputs = run_in_source_order(make_interpreter(made), demo_prepared.dataset.test_inputs,
                                      demo_prepared.source.input_names, demo_prepared.source.output_names)
        return made, float(np.mean(outputs[0].argmax(1) == demo_prepared.dataset.y_test))

    (min_max, min_max_accuracy), (octav, octav_accuracy) = accuracy("min_max"), accuracy("octav")
    print(f"\ndynamic_int4 accuracy: min_max {min_max_accuracy:.4f}, octav {octav_accuracy:.4f}")
    assert len(octav) == len(min_max) and octav != min_max  # same layout, other int4 weights
    assert octav_accuracy >= 0.95 and abs(octav_accuracy - min_max_accuracy) <= 0.02


def test_hadamard_is_made_with_batch_one_and_evaluates(demo_prepared, digits_float):
    made = quantize.quantize(digits_float, Variant("dynamic", input_size=8, backend="litert", algorithm="hadamard"),
                             None)
    assert "HADAMARD_ROTATION" in {rule["algorithm_key"] for rule in json.loads(made.recipe_json)}
    outputs = run_in_source_order(make_interpreter(made.tflite_model), demo_prepared.dataset.test_inputs,
                                  demo_prepared.source.input_names, demo_prepared.source.output_names)
    assert np.mean(outputs[0].argmax(1) == demo_prepared.dataset.y_test) >= 0.95


def test_an_algorithm_for_ops_the_model_lacks_is_one_line():
    import tensorflow as tf
    import tf_keras

    inputs = tf_keras.Input((8, 8, 1))
    conv_only = tf_keras.Model(inputs, tf_keras.layers.Conv2D(4, 3)(inputs))
    float_model = tf.lite.TFLiteConverter.from_keras_model(conv_only).convert()
    with pytest.raises(TFLiteError) as error:
        quantize.quantize(float_model, Variant("dynamic", backend="litert", algorithm="gptq"), [np.zeros((4, 8, 8, 1),
                                                                                                       np.float32)])
    assert error.value.message == ("algorithm=gptq applies to FULLY_CONNECTED, and the model has none (its weight "
                                   "ops: CONV_2D); use algorithm=min_max or mse or octav")


@pytest.mark.parametrize("args, message", [
    (["convert", "--algorithm", "octav"],
     "algorithm=octav needs backend=litert (TFLiteConverter only calibrates min-max); use backend=litert or "
     "algorithm=min_max"),
    (["convert", "--backend", "litert", "--algorithm", "gptq"],
     "algorithm=gptq cannot be made with quant=int8 (GPTQ over calibrated int8/int16 activations gives a broken "
     "model); use quant=dynamic, weight_only_int8, dynamic_int4, weight_only_int4, or another algorithm"),
    (["convert", "--backend", "litert", "--quant", "none", "--algorithm", "mse"],
     "algorithm=mse quantizes weights, but quant=none keeps the float model; use a quantized mode or algorithm=min_max"),
    (["convert", "--backend", "litert", "--algorithm", "mse,octav"],
     "convert takes one algorithm, got algorithm=mse,octav; pass one, or run sweep to compare several"),
    (["convert", "--backend", "litert", "--algorithm", "rtn"],
     "algorithm 'rtn' is unknown; use one of min_max, mse, octav, hadamard, gptq, oscar"),
    (["sweep", "--backend", "litert", "--quant", "dynamic,int16x8", "--algorithm", "min_max,gptq"],
     "algorithm=gptq cannot be made with quant=int16x8 (GPTQ over calibrated int8/int16 activations gives a broken "
     "model); use quant=dynamic, weight_only_int8, dynamic_int4, weight_only_int4, or another algorithm"),
])
def test_a_combination_no_variant_can_make_is_refused_before_any_run(args, message, tracking):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and result.output == f"Error: {message}\n", result.output
    assert store.search_runs() == []


def test_the_config_file_section_sets_the_algorithm(tmp_path, tracking):
    config = tmp_path / "options.yaml"
    config.write_text("quantizer:\n  algorithm: [mse, gptq]\n")
    result = CliRunner().invoke(cli, ["sweep", "--backend", "litert", "--quant", "int8", "--config", str(config)])
    assert result.output == ("Error: algorithm=gptq cannot be made with quant=int8 (GPTQ over calibrated int8/int16 "
                             "activations gives a broken model); use quant=dynamic, weight_only_int8, dynamic_int4, "
                             "weight_only_int4, or another algorithm\n")


def test_a_variant_whose_algorithm_fits_no_op_fails_alone(tmp_path, tracking):
    import tf_keras

    inputs = tf_keras.Input((8, 8, 1))
    tf_keras.Model(inputs, tf_keras.layers.Conv2D(4, 3)(inputs)).save(tmp_path / "conv.h5")
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((64, 8, 8, 1), np.float32))
    result = CliRunner().invoke(cli, ["sweep", "--model", str(tmp_path / "conv.h5"), "--data", str(tmp_path / "x.npy"),
                                      "--quant", "dynamic", "--sparsity", "0", "--backend", "litert",
                                      "--algorithm", "min_max,oscar", "--no-register", "--no-tensor-errors"])
    runs = {r.data.tags["mlflow_tflite.variant"]: r for r in store.search_runs("tags.mlflow_tflite.role = 'variant'")}
    assert {name: run.info.status for name, run in runs.items()} == {
        "dynamic-s0-8px-litert": "FINISHED", "dynamic-s0-8px-litert-oscar": "FAILED"}, result.output
    assert runs["dynamic-s0-8px-litert-oscar"].data.tags["mlflow_tflite.error"] == (
        "algorithm=oscar applies to FULLY_CONNECTED, and the model has none (its weight ops: CONV_2D); use "
        "algorithm=min_max or mse or octav")
