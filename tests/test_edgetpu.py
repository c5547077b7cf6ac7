"""Static Edge TPU readiness (issue 10 item 3) on real conversions: the demo CNN, a dynamic-range
model, a model with an op outside the Edge TPU table, a model breaking the rank rule, and int8
models with float inputs/outputs (edge QUANTIZE/DEQUANTIZE on the CPU), one with a float layer in
the middle (selective quantization)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlflow_tflite.measure import edgetpu
from mlflow_tflite.flavor import flatbuffer

# Stated independently of edgetpu_ops.json, from the Coral "Supported operations" table.
DEMO_OPS = ["CONV_2D", "CONV_2D", "MAX_POOL_2D", "CONV_2D", "MEAN", "FULLY_CONNECTED", "SOFTMAX"]
IN_TABLE = {"CONV_2D", "MAX_POOL_2D", "MEAN", "FULLY_CONNECTED", "SOFTMAX", "DEPTHWISE_CONV_2D", "ADD", "RESHAPE"}
# Named by threads quoting the newer published table (google-coral/edgetpu #659, #193, #684, #597).
ADDED_FROM_NEWER_TABLE = {"QUANTIZE", "TRANSPOSE", "TRANSPOSE_CONV", "PRELU"}
# DEQUANTIZE is not listed (#659); LeakyRelu is not supported (maintainer, #597).
NOT_IN_TABLE = {"LEAKY_RELU", "DEQUANTIZE", "BATCH_MATMUL"}


def _int8_full(model, shape, n=32, seed=0) -> bytes:
    """A tf_keras model converted int8_full through the project's converter (real calibration)."""
    from mlflow_tflite.build.convert import convert
    from mlflow_tflite.build.sources import from_tf_keras
    from mlflow_tflite.variants import Variant

    x = np.random.default_rng(seed).normal(size=(n, *shape)).astype(np.float32)
    return convert(from_tf_keras(model), Variant("int8_full"), [x]).tflite_model


def test_table_is_package_data_with_its_source():
    from importlib import resources

    raw = json.loads(resources.files("mlflow_tflite.measure").joinpath("edgetpu_ops.json").read_text())
    assert raw["source"]["url"] == "https://coral.ai/docs/edgetpu/models-intro/#supported-operations"
    assert "Supported operations" in raw["source"]["title"]
    assert IN_TABLE | ADDED_FROM_NEWER_TABLE <= set(raw["ops"])
    assert not NOT_IN_TABLE & set(raw["ops"])
    assert raw["general_requirements"]["max_non_1_dims"] == 3
    assert raw["ops"]["MEAN"]["limitations"]
    assert raw["source"]["read_on"] == "2026-11-25"
    for name in ADDED_FROM_NEWER_TABLE:  # each addition names the thread that quotes the table
        assert raw["ops"][name]["evidence"].startswith("https://github.com/google-coral/edgetpu/issues/")
        assert raw["ops"][name]["evidence"] in " ".join(raw["source"]["newer_table_evidence"])


def test_demo_int8_full_only_its_dynamic_batch_blocks_the_edge_tpu(converted):
    """Every demo op is in the table with 8-bit tensors; only the dynamic batch dimension (-1) stops it."""
    report = edgetpu.readiness(converted["int8_full-s0-8px"][1])  # the converter's output, batch open
    assert [op["op"] for op in report["ops"]] == DEMO_OPS
    assert set(DEMO_OPS) <= IN_TABLE
    assert report["float_ops"] == 0
    assert report["first_unmapped_index"] == 0
    assert report["edgetpu_mapped_fraction"] == 0.0
    first = report["ops"][0]["reason"]
    assert "dynamic shape [-1, 8, 8, 1]" in first and "batch size 1" in first
    for op in report["ops"]:  # nothing but the dynamic shapes
        reason = op["reason"]
        assert "dynamic shape" in reason, op
        for other in ("supported-op table", "FLOAT", "INT32", "more than 3 dimensions", "constant", "fused", "MEAN", "SOFTMAX"):
            assert other not in reason, op
    assert "compiler is not available" in report["note"]
    assert report["source"]["url"].startswith("https://coral.ai/docs/edgetpu/models-intro")
    json.dumps(report)


def test_demo_with_a_static_batch_of_1_maps_fully(demo_prepared):
    import tf_keras

    inputs = tf_keras.Input((8, 8, 1), batch_size=1)
    static = tf_keras.Model(inputs, demo_prepared.source.keras_model(inputs))
    report = edgetpu.readiness(_int8_full(static, (8, 8, 1)))
    assert [op["op"] for op in report["ops"]] == DEMO_OPS
    assert all(op["mapped"] and op["reason"] is None for op in report["ops"])
    assert report["first_unmapped_index"] is None
    assert report["edgetpu_mapped_fraction"] == 1.0
    assert report["float_ops"] == 0


def test_dynamic_range_model_has_float_ops_and_its_first_op_does_not_map(demo_prepared):
    from mlflow_tflite.sweep.work import convert_and_evaluate
    from mlflow_tflite.variants import Variant

    outcome = convert_and_evaluate(demo_prepared, Variant("dynamic", input_size=8))
    assert outcome.edgetpu is None and "edgetpu_mapped_fraction" not in outcome.metrics  # float I/O
    report = edgetpu.readiness(outcome.tflite_model)
    assert report["float_ops"] == len(report["ops"]) == outcome.metrics["float_ops"] == 7
    assert report["first_unmapped_index"] == 0 and report["edgetpu_mapped_fraction"] == 0.0
    assert "FLOAT32 (float" in report["ops"][0]["reason"]


def test_op_outside_the_table_stops_the_mapping_there():
    """LEAKY_RELU is not in the table: ops before it map, the rest falls back to the CPU."""
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    inputs = tf_keras.Input((8, 8, 1), batch_size=1)
    x = tf_keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    x = tf_keras.layers.MaxPooling2D()(x)
    x = tf_keras.layers.LeakyReLU(0.1)(x)
    x = tf_keras.layers.GlobalAveragePooling2D()(x)
    outputs = tf_keras.layers.Dense(3, activation="softmax")(x)
    tflite_model = _int8_full(tf_keras.Model(inputs, outputs), (8, 8, 1))

    report = edgetpu.readiness(tflite_model)
    names = [op["op"] for op in report["ops"]]
    leaky = names.index("LEAKY_RELU")
    assert leaky > 0 and "LEAKY_RELU" in NOT_IN_TABLE
    assert report["first_unmapped_index"] == leaky
    assert report["edgetpu_mapped_fraction"] == pytest.approx(leaky / len(names))
    assert all(op["mapped"] for op in report["ops"][:leaky])
    assert report["ops"][leaky]["reason"] == "LEAKY_RELU is not in the Edge TPU supported-op table"
    assert all(op["mapped"] for op in report["ops"][leaky + 1:])  # later ops are fine, but on the CPU
    assert report["float_ops"] == 0 == flatbuffer.float_ops(tflite_model)


def test_four_non_1_dimensions_break_the_rank_rule():
    """A fixed batch of 2 gives 4-D activations with 4 dimensions larger than 1."""
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    inputs = tf_keras.Input((6, 6, 2), batch_size=2)
    x = tf_keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    x = tf_keras.layers.GlobalAveragePooling2D()(x)
    outputs = tf_keras.layers.Dense(3)(x)
    report = edgetpu.readiness(_int8_full(tf_keras.Model(inputs, outputs), (6, 6, 2)))

    assert report["ops"][0]["op"] == "CONV_2D"
    assert report["first_unmapped_index"] == 0 and report["edgetpu_mapped_fraction"] == 0.0
    reason = report["ops"][0]["reason"]
    assert "shape [2, 6, 6, 2]" in reason and "more than 3 dimensions" in reason
    assert "dynamic" not in reason and "int8" not in reason.replace("int8/uint8", "")


def test_not_a_flatbuffer_is_a_clear_error():
    from mlflow_tflite.errors import TFLiteError

    with pytest.raises(TFLiteError, match="not a valid TFLite flatbuffer"):
        edgetpu.readiness(b"not a model at all")


def test_log_outcome_logs_the_readiness_report(tracking, demo_prepared):
    import mlflow

    from mlflow_tflite.sweep.work import convert_and_evaluate
    from mlflow_tflite.sweep.record import log_outcome
    from mlflow_tflite.variants import Variant

    variant = Variant("int8_full", input_size=8)
    outcome = convert_and_evaluate(demo_prepared, variant)
    with mlflow.start_run() as run:
        log_outcome(outcome, variant, None, 1)
    logged = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/edgetpu_readiness.json")
    assert logged == outcome.edgetpu
    metrics = mlflow.get_run(run.info.run_id).data.metrics
    # int8_full ships with its batch fixed to 1, so all 7 ops (every one in the table) map.
    assert metrics["edgetpu_mapped_fraction"] == 1.0 and metrics["float_ops"] == 0
    assert [op["op"] for op in logged["ops"]] == DEMO_OPS and logged["estimated_with_batch_one"] is False


def test_int8_full_ships_a_static_batch_of_1_with_the_same_outputs(demo_prepared, converted):
    from mlflow_tflite.sweep.work import convert_and_evaluate
    from mlflow_tflite.flavor.runtime import make_interpreter
    from mlflow_tflite.variants import Variant

    dynamic = converted["int8_full-s0-8px"][1]  # the converter's own output: batch open (-1)
    static = convert_and_evaluate(demo_prepared, Variant("int8_full", input_size=8)).tflite_model
    assert list(make_interpreter(dynamic).get_input_details()[0]["shape_signature"]) == [-1, 8, 8, 1]
    assert list(make_interpreter(static).get_input_details()[0]["shape_signature"]) == [1, 8, 8, 1]
    assert flatbuffer.with_batch_one(static) is static  # nothing left to fix
    x = demo_prepared.dataset.x_test[:5]
    outputs = []
    for model in (dynamic, static):
        interpreter = make_interpreter(model)
        detail, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        scale, zero = detail["quantization"]
        rows = []
        for row in x:  # one example at a time: the static model takes batch 1 only
            interpreter.set_tensor(detail["index"], np.round(row[None] / scale + zero).astype(np.int8))
            interpreter.invoke()
            rows.append(interpreter.get_tensor(out["index"]).copy())
        outputs.append(np.concatenate(rows))
    np.testing.assert_array_equal(outputs[0], outputs[1])  # same kernels and parameters, only shapes fixed


# --- int8 models with float inputs/outputs -------------------------------------------------------
# Expected by hand from the published rules: the QUANTIZE of the float input and the DEQUANTIZE to
# the float output run on the CPU at the edges (compiler logs in google-coral/edgetpu#13 and
# f0cal/google-coral#20 show them on the CPU and every op between them mapped), so they neither
# count nor stop the mapping; every other op is checked as for an integer-only model.
FLOAT_IO_OPS = ["QUANTIZE", *DEMO_OPS, "DEQUANTIZE"]


@pytest.fixture(scope="module")
def static_source(demo_prepared):
    """The trained demo CNN with a fixed batch of 1, and calibration data."""
    import tf_keras

    from mlflow_tflite.build.sources import from_tf_keras

    inputs = tf_keras.Input((8, 8, 1), batch_size=1)
    source = from_tf_keras(tf_keras.Model(inputs, demo_prepared.source.keras_model(inputs)))
    return source, [np.random.default_rng(0).normal(size=(32, 8, 8, 1)).astype(np.float32)]


def test_float_io_int8_edges_are_cpu_ops_and_only_the_dynamic_batch_blocks(converted):
    """The fixture's int8 (float I/O) demo: edges on the CPU; the first considered op stops on its -1 batch."""
    report = edgetpu.readiness(converted["int8-s0-8px"][1])
    assert [op["op"] for op in report["ops"]] == FLOAT_IO_OPS
    assert report["cpu_edge_ops"] == [0, 8]
    for index in (0, 8):
        edge = report["ops"][index]
        assert edge["cpu_edge"] is True and edge["mapped"] is False and "on the CPU" in edge["reason"]
    assert report["num_ops"] == 9 and report["num_considered_ops"] == 7
    assert report["first_unmapped_index"] == 1  # the first CONV_2D, not the edge QUANTIZE
    assert report["edgetpu_mapped_fraction"] == 0.0
    reason = report["ops"][1]["reason"]
    assert "dynamic shape [-1, 8, 8, 1]" in reason and "FLOAT" not in reason
    assert report["float_ops"] == 2  # the two edge ops
    json.dumps(report)

    integer_only = edgetpu.readiness(converted["int8_full-s0-8px"][1])
    assert integer_only["cpu_edge_ops"] == [] and integer_only["num_considered_ops"] == integer_only["num_ops"] == 7
    assert integer_only["first_unmapped_index"] == 0


def test_float_io_int8_with_a_static_batch_maps_every_op_between_the_edges(static_source):
    from mlflow_tflite.build.convert import convert
    from mlflow_tflite.variants import Variant

    source, calibration = static_source
    report = edgetpu.readiness(convert(source, Variant("int8", input_size=8), calibration).tflite_model)
    assert [op["op"] for op in report["ops"]] == FLOAT_IO_OPS
    assert report["cpu_edge_ops"] == [0, 8]
    assert all(op["mapped"] and op["reason"] is None for op in report["ops"][1:8])
    assert report["first_unmapped_index"] is None
    assert report["edgetpu_mapped_fraction"] == 1.0  # 7 considered ops, all mapped
    assert report["float_ops"] == 2


def test_float_layer_in_the_middle_is_where_the_mapping_stops(static_source):
    """conv2d_1 kept in float by selective quantization: the DEQUANTIZE feeding it is the first unmapped op."""
    from mlflow_tflite.build.convert import SelectiveQuantizer, convert
    from mlflow_tflite.variants import Variant

    source, calibration = static_source
    float_model = flatbuffer.read_flatbuffer(convert(source, Variant("none", input_size=8), calibration).tflite_model)
    graph = float_model.subgraphs[0]
    conv2d_1 = graph.tensors[graph.operators[1].outputs[0]].name.decode()
    assert "conv2d_1" in conv2d_1
    mixed = SelectiveQuantizer(source, Variant("int8_mixed", input_size=8), calibration)((conv2d_1,))

    report = edgetpu.readiness(mixed)
    names = [op["op"] for op in report["ops"]]
    assert names == ["QUANTIZE", "CONV_2D", "DEQUANTIZE", "CONV_2D", "QUANTIZE", "MAX_POOL_2D", "CONV_2D", "MEAN",
                     "FULLY_CONNECTED", "SOFTMAX", "DEQUANTIZE"]
    assert report["cpu_edge_ops"] == [0, 10]  # the middle DEQUANTIZE/QUANTIZE are not at the model's edges
    # By hand: op 1 (int8 conv) maps; op 2 dequantizes to float in the middle (DEQUANTIZE is not in the
    # table and its output is FLOAT32), so the compiler stops there; 1 of the 9 considered ops maps.
    assert report["ops"][1]["mapped"] and report["ops"][1]["reason"] is None
    assert report["first_unmapped_index"] == 2
    assert report["edgetpu_mapped_fraction"] == pytest.approx(1 / 9)
    middle = report["ops"][2]["reason"]
    assert "DEQUANTIZE is not in the Edge TPU supported-op table" in middle and "FLOAT32" in middle
    assert "FLOAT32" in report["ops"][3]["reason"]  # the float conv itself
    assert "FLOAT32" in report["ops"][4]["reason"] and "supported-op table" not in report["ops"][4]["reason"]
    assert all(op["mapped"] for op in report["ops"][5:10])  # fine, but after the stop: on the CPU


def test_uint8_io_requantize_quantize_ops_map(static_source):
    """uint8 I/O int8_full: the QUANTIZE uint8->int8 / int8->uint8 are integer ops in the table (runtime >= 13)."""
    from mlflow_tflite.build.convert import convert
    from mlflow_tflite.variants import Variant

    source, calibration = static_source
    variant = Variant("int8_full", input_size=8, io_type="uint8")
    report = edgetpu.readiness(convert(source, variant, calibration).tflite_model)
    assert [op["op"] for op in report["ops"]] == ["QUANTIZE", *DEMO_OPS, "QUANTIZE"]
    assert report["cpu_edge_ops"] == []  # no float tensor at the edges
    assert report["first_unmapped_index"] is None and report["edgetpu_mapped_fraction"] == 1.0
