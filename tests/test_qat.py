"""Quantization-aware training (``quant=qat_int8``) on the real digits demo: TFMOT, TFLiteConverter,
LiteRT and an MLflow sqlite store, no mocks.

Measured numbers are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from mlflow import MlflowClient

from mlflow_tflite.build.graph import Builds, ModelKey
from mlflow_tflite.measure.sparsity import tflite_sparsity
from mlflow_tflite.sweep.context import prepare
from mlflow_tflite.sweep.work import convert_and_evaluate
from mlflow_tflite.flavor import runtime
from mlflow_tflite.errors import TFLiteError
from mlflow_tflite.build.qat import QatOptions, qat_model, qat_params
from mlflow_tflite.sweep.config import SweepConfig
from mlflow_tflite.sweep.orchestrate import run_sweep
from mlflow_tflite.variants import Variant, expand_grid

pytestmark = pytest.mark.slow


@pytest.fixture
def prepared(demo_prepared):
    """The session's demo source and data."""
    return demo_prepared


@pytest.fixture
def builds(demo_prepared):
    """A build graph of the demo of this test's own (QAT models stay in this test)."""
    return Builds(demo_prepared.build_inputs())


def _tflite_accuracy(tflite_model: bytes, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy measured here with the LiteRT interpreter (float I/O), not with evaluate.py."""
    interpreter = runtime.make_interpreter(tflite_model)
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert inp["dtype"] == np.float32 and out["dtype"] == np.float32  # float I/O
    predicted = []
    for row in x:
        interpreter.set_tensor(inp["index"], row[np.newaxis].astype(np.float32))
        interpreter.invoke()
        predicted.append(int(interpreter.get_tensor(out["index"])[0].argmax()))
    return float(np.mean(np.array(predicted) == y))


def _int8_kernels(tflite_model: bytes) -> dict[str, str]:
    """Op name -> dtype of its first input, for the compute ops (CONV_2D, FULLY_CONNECTED)."""
    interpreter = runtime.make_interpreter(tflite_model)
    details = {t["index"]: t for t in interpreter.get_tensor_details()}
    kernels = {}
    for op in interpreter._get_ops_details():
        if op["op_name"] in ("CONV_2D", "FULLY_CONNECTED"):
            kernels.setdefault(op["op_name"], np.dtype(details[op["inputs"][0]]["dtype"]).name)
    return kernels


def test_qat_on_the_demo_gives_an_int8_model_close_to_the_float_source(prepared, builds):
    variant = Variant("qat_int8")
    started = time.perf_counter()
    outcome = convert_and_evaluate(prepared, variant, builds)
    seconds = time.perf_counter() - started
    model = outcome.tflite_model

    interpreter = runtime.make_interpreter(model)
    assert runtime.quantization_mode(interpreter) == "int8"
    assert outcome.op_inventory.get("QUANTIZE", 0) >= 1 and outcome.op_inventory.get("DEQUANTIZE", 0) >= 1
    assert _int8_kernels(model) == {"CONV_2D": "int8", "FULLY_CONNECTED": "int8"}
    int8_tensors = sum(np.dtype(t["dtype"]) == np.int8 for t in interpreter.get_tensor_details())
    assert int8_tensors >= 10

    # The trained model is TFMOT's quantize wrappers around the source's layers.
    trained = builds.model(ModelKey.of(variant, prepared.native_input_size)).keras_model
    # tf_keras numbers layer names per process: quantize_layer_1 after another QAT model was built
    assert trained.layers[0].name.startswith("quantize_layer")
    assert all(layer.name.startswith("quant") for layer in trained.layers)
    assert prepared.source.keras_model.layers[0].name == "conv2d"  # the source is untouched

    x, y = prepared.dataset.x_test, prepared.dataset.y_test
    source_accuracy = float(np.mean(prepared.reference[0].argmax(1) == y))
    accuracy = _tflite_accuracy(model, x, y)
    drop = source_accuracy - accuracy
    print(f"\nqat_int8 demo: source {source_accuracy:.4f}, qat_int8 .tflite {accuracy:.4f}, drop {drop:+.4f}, "
          f"{int8_tensors} int8 tensors, {len(model)} bytes, QAT+convert+evaluate {seconds:.1f} s")
    # Measured on 2 CPU cores: 0.9867 -> 0.9800 (drop 0.0067, 3 of 450 test images); 0.02 is 9 images.
    assert drop <= 0.02
    assert outcome.metrics["accuracy"] == pytest.approx(accuracy, abs=1e-9)
    assert outcome.metrics["accuracy_drop"] == pytest.approx(drop, abs=1e-9)

    # Per-tensor error: compared with the float model of the source (not of the QAT model).
    assert "none-s0 (before quantization-aware training)" in outcome.tensor_errors_note
    compared = len(outcome.tensor_errors or [])
    print(f"qat_int8 per-tensor error: {compared} tensors compared; note: {outcome.tensor_errors_note}")
    assert (f"{compared} tensors share a name" in outcome.tensor_errors_note if compared
            else "no tensor" in outcome.tensor_errors_note)


def test_pqat_keeps_the_sparsity_of_the_pruned_model(prepared, builds):
    started = time.perf_counter()
    qat = convert_and_evaluate(prepared, Variant("qat_int8", sparsity=0.5), builds)
    seconds = time.perf_counter() - started
    # The plain pruned model of the same key is built once and shared with int8.
    assert {ModelKey(None, 0.5, False), ModelKey(None, 0.5, True)} <= builds.built()
    pruned = builds.model(ModelKey(None, 0.5, False))
    plain = convert_and_evaluate(prepared, Variant("int8", sparsity=0.5), builds)
    assert builds.model(ModelKey(None, 0.5, False)) is pruned

    assert runtime.quantization_mode(runtime.make_interpreter(qat.tflite_model)) == "int8"
    sparsity = tflite_sparsity(qat.tflite_model)
    print(f"\nPQAT s0.5: sparsity_achieved {sparsity:.4f} (int8 PTQ of the same pruned model "
          f"{plain.metrics['sparsity_achieved']:.4f}), accuracy {qat.metrics['accuracy']:.4f} "
          f"(drop {qat.metrics['accuracy_drop']:+.4f}; int8 PTQ {plain.metrics['accuracy']:.4f}), "
          f"prune+QAT+convert {seconds:.1f} s")
    assert qat.metrics["sparsity_achieved"] == pytest.approx(sparsity)
    assert sparsity >= 0.45
    assert qat.metrics["accuracy_drop"] <= 0.03


def test_qat_is_deterministic_and_its_params(demo_prepared):
    d = demo_prepared.dataset
    options = QatOptions(qat_epochs=1, qat_learning_rate=1e-4)
    first, second = (qat_model(demo_prepared.source.keras_model, d.x_train[:128], d.y_train[:128], options, seed=3)
                     for _ in range(2))
    for a, b in zip(first.get_weights(), second.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert qat_params(QatOptions(qat_epochs=3, qat_learning_rate=5e-5)) == {"qat_epochs": 3, "qat_learning_rate": 5e-5}


def _one_line(raised) -> str:
    message = raised.value.message
    assert "\n" not in message and len(message) < 400
    return message


def test_a_saved_model_source_cannot_be_quantization_aware_trained(demo_prepared, digits_files, tmp_path):
    import tensorflow as tf

    saved_model = tmp_path / "saved_model"
    tf.saved_model.save(demo_prepared.source.keras_model, str(saved_model))
    prepared = prepare(str(saved_model), digits_files[1])
    assert prepared.source.kind == "saved_model" and prepared.source.keras_model is None
    with pytest.raises(TFLiteError) as raised:
        convert_and_evaluate(prepared, Variant("qat_int8"))
    message = _one_line(raised)
    assert "quant=qat_int8 needs a tf_keras model" in message and "saved_model" in message
    assert "use quant=int8" in message
    # The post-training int8 of the same source still works.
    assert convert_and_evaluate(prepared, Variant("int8")).metrics["accuracy_drop"] <= 0.02


def test_a_keras3_model_or_none_is_refused_by_qat_model(digits):
    import keras

    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    with pytest.raises(TFLiteError) as raised:
        qat_model(model, digits.x_train, digits.y_train)
    message = _one_line(raised)
    assert "Sequential" in message and "tf_keras" in message and "use quant=int8" in message
    with pytest.raises(TFLiteError, match="cannot fine-tune with fake quantization a None .*tf_keras"):
        qat_model(None, digits.x_train, digits.y_train)


def test_unlabelled_data_is_one_line(digits_files, tmp_path):
    model, npz = digits_files
    npy = tmp_path / "images.npy"
    np.save(npy, np.load(npz)["x_train"])
    prepared = prepare(model, str(npy))
    assert prepared.dataset.y_train is None
    with pytest.raises(TFLiteError) as raised:
        convert_and_evaluate(prepared, Variant("qat_int8"))
    message = _one_line(raised)
    assert message.startswith("quant=qat_int8 needs labels") and "add y_train or use quant=int8" in message


def test_layers_tfmot_cannot_quantize_stay_float_and_a_model_of_only_those_is_one_line(digits):
    import tf_keras

    model = tf_keras.Sequential([
        tf_keras.Input((8, 8, 1)),
        tf_keras.layers.Conv2D(4, 3),
        tf_keras.layers.LayerNormalization(name="normalized"),
        tf_keras.layers.GlobalAveragePooling2D(),
        tf_keras.layers.Dense(10, activation="softmax"),
    ])
    trained = qat_model(model, digits.x_train, digits.y_train, QatOptions(qat_epochs=1))
    kinds = {layer.name: type(layer).__name__ for layer in trained.layers}
    assert kinds["normalized"] == "LayerNormalization"  # TFMOT has no 8-bit scheme for it: trained in float
    assert sum(kind.startswith("QuantizeWrapper") for kind in kinds.values()) == 3  # conv, pooling, dense
    only_unsupported = tf_keras.Sequential([
        tf_keras.Input((64,)), tf_keras.layers.LayerNormalization(), tf_keras.layers.Activation("softmax")])
    x = digits.x_train.reshape(len(digits.x_train), 64)
    with pytest.raises(TFLiteError) as raised:
        qat_model(only_unsupported, x, np.minimum(digits.y_train, 9))
    message = _one_line(raised)
    assert "cannot be quantization-aware trained" in message and "supported by TFMOT" in message
    assert message.endswith("use quant=int8 (post-training quantization)")


def test_sweep_over_qat_and_int8_finishes_every_child(digits_files, tracking):
    model, data = digits_files
    variants = expand_grid(["qat_int8", "int8"], [0.0, 0.5], [None])
    started = time.perf_counter()
    result = run_sweep(SweepConfig(variants, model, data, workers=2, register=False), progress=False)
    seconds = time.perf_counter() - started

    client = MlflowClient()
    experiment = client.get_run(result.parent_run_id).info.experiment_id
    runs = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{result.parent_run_id}'")
    by_name = {r.data.tags["mlflow_tflite.variant"]: r for r in runs}
    assert sorted(by_name) == ["int8-s0-8px", "int8-s0.5-8px", "qat_int8-s0-8px", "qat_int8-s0.5-8px"]
    statuses = {n: r.info.status for n, r in by_name.items()}
    print(f"\nsweep qat_int8+int8 x s0,0.5 with 2 workers: {seconds:.1f} s; " + ", ".join(
        f"{n}: acc {r.data.metrics.get('accuracy', float('nan')):.4f} "
        f"sparsity {r.data.metrics.get('sparsity_achieved', float('nan')):.3f}" for n, r in sorted(by_name.items())))
    assert set(statuses.values()) == {"FINISHED"}, {n: by_name[n].data.tags.get("mlflow_tflite.error") for n in by_name}
    metrics = {n: r.data.metrics for n, r in by_name.items()}
    for name in ("qat_int8-s0.5-8px", "int8-s0.5-8px"):
        assert metrics[name]["sparsity_achieved"] >= 0.45
    assert metrics["qat_int8-s0-8px"]["sparsity_achieved"] < 0.05
    assert all(m["accuracy_drop"] <= 0.03 for m in metrics.values())


def test_the_qat_model_key_does_not_collide_with_the_pruned_one():
    qat, plain = ModelKey.of(Variant("qat_int8", 0.5, 8), 8), ModelKey.of(Variant("int8", 0.5, 8), 8)
    assert qat != plain and qat.qat and not plain.qat
    assert qat.base == plain and plain.base == ModelKey(None, 0.0)  # QAT starts from the pruned model
