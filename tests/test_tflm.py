"""TensorFlow Lite Micro readiness on the real digits demo: TFLM's own interpreter, LiteRT, MLflow."""

from __future__ import annotations

import math
import pathlib

import mlflow
import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter, OpResolverType
from click.testing import CliRunner
from mlflow import MlflowClient
from tflite_micro import runtime as tflm_runtime

import store
from mlflow_tflite.cli import cli
from mlflow_tflite.errors import TFLiteError
from mlflow_tflite.measure import tflm
from mlflow_tflite.sweep.config import SweepConfig
from mlflow_tflite.track import selection
from mlflow_tflite.track.rows import Row
from mlflow_tflite.variants import Variant

ROWS = 8  # evaluation rows the tests run through TFLM themselves


def _output_step(tflite_model: bytes, position: int = 0) -> float:
    """The quantization step of a model output, read from the flatbuffer: the output tensor's
    scale, or for a float output the scale of the int8 tensor its DEQUANTIZE reads."""
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(bytearray(tflite_model), 0))
    subgraph = model.subgraphs[0]
    output = subgraph.outputs[position]
    if subgraph.tensors[output].quantization is not None and subgraph.tensors[output].quantization.scale is not None:
        return float(subgraph.tensors[output].quantization.scale[0])
    producer = next(op for op in subgraph.operators if output in list(op.outputs))
    assert model.operatorCodes[producer.opcodeIndex].builtinCode == schema.BuiltinOperator.DEQUANTIZE
    return float(subgraph.tensors[producer.inputs[0]].quantization.scale[0])


def _independent_max_diff(tflite_model: bytes, arena_bytes: int, images: np.ndarray) -> float:
    """Run TFLM (with exactly ``arena_bytes``) and LiteRT's reference kernels row by row, here in the
    test; the largest |difference| of the outputs, dequantized with LiteRT's output details."""
    micro = tflm_runtime.Interpreter.from_bytes(tflite_model, arena_size=arena_bytes)
    litert = Interpreter(model_content=tflite_model,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    litert.allocate_tensors()
    (inp,), (out,) = litert.get_input_details(), litert.get_output_details()
    in_scale, in_zero = inp["quantization"]
    out_scale, out_zero = out["quantization"]
    worst = 0.0
    for image in images:
        x = image[None].astype(np.float32)
        if inp["dtype"] != np.float32:
            x = np.clip(np.round(x / in_scale + in_zero), -128, 127).astype(inp["dtype"])
        micro.set_input(x, 0)
        micro.invoke()
        litert.set_tensor(inp["index"], x)
        litert.invoke()
        a, b = micro.get_output(0).astype(np.float64), litert.get_tensor(out["index"]).astype(np.float64)
        if out["dtype"] != np.float32:
            a, b = (a - out_zero) * out_scale, (b - out_zero) * out_scale
        worst = max(worst, float(np.abs(a - b).max()))
    return worst


@pytest.mark.parametrize("mode", ["int8", "int8_full", "int16x8"])
def test_integer_variants_run_in_tflm_within_one_output_step(converted, demo_prepared, mode):
    tflite_model = converted[Variant(mode, input_size=8).name][1]
    images = demo_prepared.dataset.x_test
    report = tflm.readiness(tflite_model, [images])
    assert report["ok"] is True and report["samples"] == tflm.TFLM_SAMPLES
    arena = report["arena_bytes"]
    assert 0 < arena < 64 * 1024  # a three-conv CNN on 8x8 images
    assert report["arena_head_bytes"] + report["arena_tail_bytes"] == arena
    # The reported arena runs the model; 16 bytes (one alignment unit) less does not.
    assert _independent_max_diff(tflite_model, arena, images[:ROWS]) <= _output_step(tflite_model)
    with pytest.raises(RuntimeError):
        tflm_runtime.Interpreter.from_bytes(tflite_model, arena_size=arena - 16)
    assert report["arena_check"] == {"works_at_reported_bytes": True, "fails_at_bytes": arena - 16,
                                     "smaller_arena_tried_bytes": arena - 16}
    assert report["max_abs_diff"] <= _output_step(tflite_model)
    assert tflm.metrics(report) == {"tflm_ok": 1.0, "tflm_arena_bytes": float(arena),
                                    "tflm_max_abs_diff": report["max_abs_diff"]}


def test_float_model_runs_with_a_larger_arena(converted, demo_prepared):
    images = demo_prepared.dataset.x_test
    float_report = tflm.readiness(converted[Variant("none", input_size=8).name][1], [images])
    int8_report = tflm.readiness(converted[Variant("int8", input_size=8).name][1], [images])
    assert float_report["ok"] and int8_report["ok"]
    # float32 activations take four times the bytes of int8 ones.
    assert float_report["arena_head_bytes"] >= 3 * int8_report["arena_head_bytes"]
    assert float_report["arena_bytes"] > int8_report["arena_bytes"]
    assert float_report["max_abs_diff"] < 1e-5


@pytest.mark.parametrize("mode, op, index, says", [
    # Dynamic range: float activations with int8 weights, a hybrid kernel TFLM does not have. The
    # first conv has under 1024 weights, which the converter leaves in float.
    ("dynamic", "CONV_2D", 1, "Hybrid models are not supported on TFLite Micro."),
    # float16: the weights are float16 and are DEQUANTIZEd to float32 first; TFLM's DEQUANTIZE takes integers only.
    ("float16", "DEQUANTIZE", 0, "input->type == kTfLiteInt8 || input->type == kTfLiteInt16"),
])
def test_modes_tflm_cannot_run_name_their_first_op(converted, demo_prepared, mode, op, index, says):
    report = tflm.readiness(converted[Variant(mode, input_size=8).name][1], [demo_prepared.dataset.x_test])
    assert report["ok"] is False and report["error"] == "TFLM failed to allocate tensors"
    assert {k: report["first_failed_op"][k] for k in ("op", "index", "phase")} == {
        "op": op, "index": index, "phase": "prepare"}
    assert any(says in line for line in report["log"])
    assert tflm.metrics(report) == {"tflm_ok": 0.0}


def test_without_data_the_arena_is_measured_on_zeros(converted):
    tflite_model = converted[Variant("int8_full", input_size=8).name][1]
    report = tflm.readiness(tflite_model)
    assert report["ok"] and report["samples"] == 1 and report["arena_bytes"] > 0


def test_an_arena_budget_leaves_out_variants_tflm_did_not_run():
    def row(name, size, arena):
        metrics = {"accuracy": 0.95, "accuracy_drop": 0.0, "size_bytes": size, "gzip_size_bytes": size,
                   "latency_ms_p50": 1.0}
        return Row(name, "r-" + name, "FINISHED", metrics | ({"tflm_arena_bytes": arena} if arena else {}))

    rows = [row("float", 200_000, 28_000), row("int8", 60_000, 10_000), row("dynamic", 60_000, None)]
    assert selection.select_best(rows, "accuracy", selection.Tolerance()).variant == "dynamic"  # the name breaks ties
    assert selection.select_best(rows, "accuracy", selection.Tolerance(), max_arena_bytes=20_000).variant == "int8"
    assert selection.select_best(rows, "accuracy", selection.Tolerance(), max_arena_bytes=5_000) is None
    assert selection.select_best(rows, "accuracy", selection.Tolerance(), max_size_bytes=100_000,
                                 max_arena_bytes=30_000).variant == "int8"


@pytest.mark.slow
def test_sweep_under_an_arena_budget_chooses_an_int8_variant_tflm_runs_like_litert(digits_files, tracking):
    model, data = digits_files
    budget = 16384  # 16 KiB of RAM for tensors
    result = CliRunner().invoke(cli, ["sweep", "--model", model, "--data", data, "--quant", "none,qat_int8",
                                      "--sparsity", "0", "--objective", "accuracy", "--max-arena-bytes", str(budget),
                                      "--max-size-bytes", "300000", "--registered-model-name", "digits-mcu"])
    assert result.exit_code == 0, result.output
    runs = {r.data.tags["mlflow_tflite.variant"]: r for r in store.search_runs("tags.mlflow_tflite.role = 'variant'")}
    float_run, int8_run = runs["none-s0-8px"], runs["qat_int8-s0-8px"]
    floats, ints = float_run.data.metrics, int8_run.data.metrics
    # Both are within the tolerance (1 point) and the size budget, and the float model is the more
    # accurate: by the accuracy objective it would win. Only the arena budget, below its arena, keeps it out.
    assert floats["accuracy_drop"] == 0.0 and ints["accuracy_drop"] <= 0.01 and floats["accuracy"] > ints["accuracy"]
    assert floats["size_bytes"] <= 300000 and ints["size_bytes"] <= 300000
    assert floats["tflm_ok"] == 1.0 and floats["tflm_arena_bytes"] > budget
    assert ints["tflm_ok"] == 1.0 and 0 < ints["tflm_arena_bytes"] <= budget
    parent = MlflowClient().get_run(int8_run.data.tags["mlflow.parentRunId"])
    assert parent.data.tags["mlflow_tflite.best_variant"] == "qat_int8-s0-8px"
    assert parent.data.params["max_arena_bytes"] == str(float(budget))
    table = store.load_table(parent.info.run_id, "comparison.json").set_index("variant")
    assert table.loc["none-s0-8px", "tflm_arena_bytes"] == floats["tflm_arena_bytes"]
    assert bool(table.loc["qat_int8-s0-8px", "chosen"]) and not bool(table.loc["none-s0-8px", "chosen"])

    champion = mlflow.artifacts.download_artifacts("models:/digits-mcu@champion")
    tflite_model = next(p for p in pathlib.Path(champion).rglob("*.tflite")).read_bytes()
    arena = int(ints["tflm_arena_bytes"])
    images = np.load(data)["x_test"]
    assert _independent_max_diff(tflite_model, arena, images[:ROWS]) <= _output_step(tflite_model)
    assert ints["tflm_max_abs_diff"] <= _output_step(tflite_model)
    report = mlflow.artifacts.load_dict(f"runs:/{int8_run.info.run_id}/tflm_readiness.json")
    assert report["ok"] is True and report["arena_bytes"] == arena


@pytest.mark.parametrize("value, message", [
    ("-1", "Error: max_arena_bytes=-1.0 must be > 0; pass e.g. 65536, or none for no budget"),
    ("nan", "Error: max_arena_bytes=nan is not a finite number; pass e.g. 65536, or none for no budget"),
    ("inf", "Error: max_arena_bytes=inf is not a finite number; pass e.g. 65536, or none for no budget"),
    ("64k", "Error: max_arena_bytes '64k' is not a number; pass e.g. 65536, or none for no budget"),
])
def test_bad_arena_budget_is_one_line_before_any_run(value, message, tracking):
    result = CliRunner().invoke(cli, ["sweep", "--quant", "int8", "--sparsity", "0", "--max-arena-bytes", value])
    assert result.exit_code == 1 and result.output.strip().splitlines() == [message], result.output
    assert store.search_runs() == []


def test_bad_arena_budget_from_python_and_config_file(tracking, tmp_path):
    with pytest.raises(TFLiteError) as error:
        SweepConfig([Variant("int8")], max_arena_bytes=math.nan)
    assert error.value.message == "max_arena_bytes=nan is not a finite number; pass e.g. 65536, or none for no budget"
    config = tmp_path / "mcu.yaml"
    config.write_text("sweep: {max_arena_bytes: -5}\n")
    result = CliRunner().invoke(cli, ["sweep", "--quant", "int8", "--sparsity", "0", "--config", str(config)])
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines()[-1] == (
        "Error: config section 'sweep': max_arena_bytes=-5.0 must be > 0; pass e.g. 65536, or none for no budget "
        f"(config file '{config}')")
    assert store.search_runs() == []


@pytest.mark.slow
def test_real_weights_mtcnn_onet_int8_is_within_one_step_of_litert_reference_kernels():
    """MTCNN's ONet (pretrained weights from the mtcnn wheel, PReLU, three outputs): TFLM's int8
    FULLY_CONNECTED rounds a step away from LiteRT's reference kernel, never more at an output."""
    import tensorflow as tf
    import tf_keras
    from mtcnn_nets import build_mtcnn_net

    net = build_mtcnn_net("onet", tf_keras)
    images = np.random.default_rng(0).random((24, 48, 48, 3), np.float32)
    function = tf.function(lambda x: net(x)).get_concrete_function(tf.TensorSpec([1, 48, 48, 3], tf.float32))
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], net)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([image[None]] for image in images[:16])
    tflite_model = converter.convert()

    report = tflm.readiness(tflite_model, [images[16:]])
    assert report["ok"] is True and report["samples"] == 8
    arena = report["arena_bytes"]
    tflm_runtime.Interpreter.from_bytes(tflite_model, arena_size=arena)
    with pytest.raises(RuntimeError):
        tflm_runtime.Interpreter.from_bytes(tflite_model, arena_size=arena - 16)
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(bytearray(tflite_model), 0))
    names = [model.subgraphs[0].tensors[i].name.decode() for i in model.subgraphs[0].outputs]
    for position, row in enumerate(report["outputs"]):
        step = _output_step(tflite_model, position)
        assert row["step"] == pytest.approx(step)
        assert row["max_abs_diff"] <= step * (1 + 1e-5), (names[position], row)
