"""The LiteRT Quantizer backend: equivalence with the converter, per-tensor error, the flavor
record, the sweep's shared float conversion, and bad input."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

import mlflow
import mlflow_tflite
from mlflow import MlflowClient
import store
from mlflow_tflite.build import quantize
from mlflow_tflite.cli import cli
from mlflow_tflite.errors import TFLiteError
from mlflow_tflite.measure.evaluate import run_in_source_order
from mlflow_tflite.sweep.work import convert_and_evaluate
from mlflow_tflite.sweep.context import prepare
from mlflow_tflite.flavor.runtime import make_interpreter
from mlflow_tflite.sweep.config import SweepConfig
from mlflow_tflite.sweep.orchestrate import run_sweep
from mlflow_tflite.variants import Variant, expand_grid

from mtcnn_nets import build_mtcnn_net
from test_real_models import MTCNN_PREPROCESSING, face_crops

BOTH_BACKENDS = ("dynamic", "int8", "int16x8")  # modes the converter and the LiteRT Quantizer both make


def _outputs(prepared, outcome) -> list[np.ndarray]:
    interpreter = make_interpreter(outcome.tflite_model)
    return run_in_source_order(interpreter, prepared.dataset.test_inputs, prepared.source.input_names,
                               prepared.source.output_names)


def _pyfunc_outputs(tflite_model: bytes, quant: str, x, path) -> np.ndarray:
    mlflow_tflite.save_model(tflite_model, path, quantization=quant)
    return mlflow.pyfunc.load_model(str(path)).predict(x)


@pytest.mark.parametrize("quant", BOTH_BACKENDS)
def test_demo_backends_agree_and_serve_alike(quant, demo_prepared, tmp_path):
    converter = convert_and_evaluate(demo_prepared, Variant(quant, input_size=8))
    litert = convert_and_evaluate(demo_prepared, Variant(quant, input_size=8, backend="litert"))
    a, b = _outputs(demo_prepared, converter)[0], _outputs(demo_prepared, litert)[0]
    agreement = np.mean(a.argmax(1) == b.argmax(1))
    print(f"\n{quant}: converter vs litert top-1 agreement {agreement:.4f}, sizes {len(converter.tflite_model)} "
          f"vs {len(litert.tflite_model)} bytes")
    assert agreement >= 0.99
    x = demo_prepared.dataset.x_test[:50]
    served = [_pyfunc_outputs(o.tflite_model, quant, x, tmp_path / name)
              for name, o in (("converter", converter), ("litert", litert))]
    np.testing.assert_allclose(served[0], a[:50], atol=1e-6)  # the pyfunc's I/O handling = the evaluation's
    np.testing.assert_allclose(served[1], b[:50], atol=1e-6)
    assert litert.metrics["quantize_seconds"] > 0 and "float_convert_seconds" in litert.metrics
    assert litert.tensor_errors and litert.metrics["min_tensor_snr_db"] == litert.tensor_errors[0]["snr_db"]


@pytest.fixture(scope="module")
def onet(tmp_path_factory):
    """MTCNN's ONet (real weights from the mtcnn wheel) as a tf_keras .h5 and 120 face crops."""
    import tf_keras

    folder = tmp_path_factory.mktemp("onet-h5")
    build_mtcnn_net("onet", tf_keras).save(folder / "onet.h5")
    np.save(folder / "crops.npy", face_crops(48, count=120))
    return prepare(str(folder / "onet.h5"), str(folder / "crops.npy"), preprocessing=MTCNN_PREPROCESSING)


@pytest.mark.slow
@pytest.mark.parametrize("quant", ["dynamic"])  # the converter cannot make int16x8 of ONet (PRELU)
def test_mtcnn_backends_agree(quant, onet):
    converter = convert_and_evaluate(onet, Variant(quant, input_size=48))
    litert = convert_and_evaluate(onet, Variant(quant, input_size=48, backend="litert"))
    for a, b, name in zip(_outputs(onet, converter), _outputs(onet, litert), onet.source.output_names):
        a2, b2 = a.reshape(len(a), -1), b.reshape(len(b), -1)
        cosine = np.mean((a2 * b2).sum(1) / (np.linalg.norm(a2, axis=1) * np.linalg.norm(b2, axis=1)))
        print(f"\nONet {quant} {name}: converter vs litert cosine {cosine:.5f}")
        assert cosine >= 0.999, (quant, name, cosine)


@pytest.mark.slow
def test_mtcnn_int8_both_backends_stay_close_to_the_source(onet):
    """Measured, not equal: on ONet's box head the LiteRT Quantizer's static_wi8_ai8 recipe loses
    more than the converter (cosine to the Keras model 0.985 vs 0.997, relative error 0.38 vs
    0.06 here), so the two int8 models differ by more than the 0.999 cosine the dynamic mode meets."""
    metrics = {b: convert_and_evaluate(onet, Variant("int8", input_size=48, backend=b)).metrics
               for b in ("converter", "litert")}
    for backend, m in metrics.items():
        print(f"\nONet int8 {backend}: cosine {m['cosine_similarity']:.5f} relative error {m['relative_error']:.4f} "
              f"(face-probability head cosine {m['cosine_similarity_fc6_3']:.5f})")
        assert m["cosine_similarity"] >= 0.98 and m["cosine_similarity_fc6_3"] >= 0.998


def test_litert_sweep_shares_one_float_conversion_per_key(digits_files, tracking):
    model, data = digits_files
    variants = expand_grid(["none", "dynamic", "int8", "weight_only_int8", "dynamic_int4"], [0.0], [None],
                           backend="litert")
    result = run_sweep(SweepConfig(variants, model, data, register=False), progress=False)
    rows = {r.variant: r for r in result.rows}
    assert all(r.status == "FINISHED" for r in rows.values()), rows
    float_times = [r.metrics["float_convert_seconds"] for r in rows.values()]
    assert sum(t > 0 for t in float_times) == 1  # converted once, reused by the other four modes
    client = MlflowClient()
    run = client.get_run(rows["int8-s0-8px-litert"].run_id)
    assert run.data.params["backend"] == "litert" and run.data.metrics["min_tensor_snr_db"] > 10
    assert "mlflow_tflite.worst_tensor" in run.data.tags
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"tensor_errors.json", "tensor_errors.png"} <= artifacts
    table = store.load_table(run.info.run_id, "tensor_errors.json")
    assert {"tensor", "op", "shape", "snr_db", "cosine", "mse"} <= set(table.columns) and len(table) >= 5
    assert table["snr_db"].is_monotonic_increasing
    mlmodel = yaml.safe_load(open(mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/model/MLmodel")))
    flavor = mlmodel["flavors"]["tflite"]
    assert flavor["quantization_backend"] == "litert" and flavor["quantization"] == "int8"
    assert json.loads(flavor["quantization_recipe"])  # the recipe that made it, as JSON
    sizes = {name: r.metrics["size_bytes"] for name, r in rows.items()}
    assert sizes["dynamic_int4-s0-8px-litert"] < 0.6 * sizes["dynamic-s0-8px-litert"] < 0.6 * sizes["none-s0-8px-litert"]
    parent = client.get_run(result.parent_run_id).data.metrics
    assert parent["quantize_seconds"] > 0 and parent["float_convert_seconds"] > 0


@pytest.mark.parametrize("args, message", [
    (["--backend", "tflm"], "backend 'tflm' is unknown; use one of converter, litert"),
    (["--quant", "dynamic_int4"], "quant=dynamic_int4 cannot be made by backend=converter; use backend=litert"),
    (["--quant", "float16", "--backend", "litert"], "cannot be made by backend=litert; use backend=converter"),
])
def test_bad_backend_input_is_one_line(args, message, tracking):
    result = CliRunner().invoke(cli, ["convert", *args])
    assert result.exit_code == 1 and result.output.count("Error:") == 1 and message in result.output, result.output
    assert store.search_runs() == [] and MlflowClient().search_registered_models() == []


def test_a_recipe_that_changes_nothing_is_an_error(tmp_path):
    import tf_keras

    # Only elementwise ops: nothing the dynamic-range recipe quantizes (it quantizes weights).
    inputs = tf_keras.Input((4,))
    model = tf_keras.Model(inputs, tf_keras.layers.Lambda(lambda x: x * 2.0 + 1.0)(inputs))
    import tensorflow as tf

    float_model = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    with pytest.raises(TFLiteError, match="recipe dynamic_wi8_afp32 left the model unchanged"):
        quantize.quantize(float_model, Variant("dynamic", backend="litert"), None)


def test_calibration_inputs_must_match_the_signature(demo_prepared):
    from mlflow_tflite.build.graph import Builds, ModelKey

    float_bytes = Builds(demo_prepared.build_inputs()).float_model(ModelKey(None, 0.0), "builtins").tflite_model
    x = demo_prepared.dataset.x_train[:4]
    samples = quantize.signature_samples(float_bytes, [x], ["anything"])  # one input: matched by position
    assert list(samples) == ["serving_default"] and len(samples["serving_default"]) == 4
    with pytest.raises(TFLiteError, match=r"calibration data has inputs \['a', 'b'\] but the model's signature"):
        quantize.signature_samples(float_bytes, [x, x], ["a", "b"])


# The I/O dtypes each mode promises (README's quant mode table): float32 in and out for every mode
# but int8_full, whose inputs and outputs are integers of its io_type. Written out, not derived.
EXPECTED_IO = {
    ("none", "converter", "int8"): ("float32", "float32"),
    ("dynamic", "converter", "int8"): ("float32", "float32"),
    ("float16", "converter", "int8"): ("float32", "float32"),
    ("int8", "converter", "int8"): ("float32", "float32"),
    ("int8_full", "converter", "int8"): ("int8", "int8"),
    ("int8_full", "converter", "uint8"): ("uint8", "uint8"),
    ("int16x8", "converter", "int8"): ("float32", "float32"),
    ("int8_mixed", "converter", "int8"): ("float32", "float32"),
    ("qat_int8", "converter", "int8"): ("float32", "float32"),
    ("none", "litert", "int8"): ("float32", "float32"),
    ("dynamic", "litert", "int8"): ("float32", "float32"),
    ("int8", "litert", "int8"): ("float32", "float32"),
    ("int16x8", "litert", "int8"): ("float32", "float32"),
    ("weight_only_int8", "litert", "int8"): ("float32", "float32"),
    ("dynamic_int4", "litert", "int8"): ("float32", "float32"),
    ("weight_only_int4", "litert", "int8"): ("float32", "float32"),
    ("int8_mixed", "litert", "int8"): ("float32", "float32"),
}


def _io_dtypes(tflite_model: bytes) -> tuple[str, str]:
    """The model's input and output dtypes as the LiteRT interpreter reports them (one each here)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=tflite_model)
    (inputs,), (outputs,) = interpreter.get_input_details(), interpreter.get_output_details()
    return np.dtype(inputs["dtype"]).name, np.dtype(outputs["dtype"]).name


def test_every_mode_has_float_io_on_both_backends_except_int8_full(demo_prepared):
    """int8, int8_mixed and int16x8 of the LiteRT Quantizer keep float I/O as the converter's do
    (QUANTIZE after the input, DEQUANTIZE before the output); int8_full alone has integer I/O.
    int8_mixed searches under a strict bound so that it keeps layers in float; qat_int8 trains one epoch."""
    from mlflow_tflite.build.graph import Builds
    from mlflow_tflite.build.qat import QatOptions
    from test_mixed import STRICT

    prepared = dataclasses.replace(demo_prepared, task="fidelity", settings=dataclasses.replace(
        demo_prepared.settings, tolerance=STRICT, qat=QatOptions(qat_epochs=1)))
    builds = Builds(prepared.build_inputs())
    outcomes = {(quant, backend, io_type): convert_and_evaluate(prepared, Variant(quant, input_size=8, io_type=io_type,
                                                                                   backend=backend), builds)
                for quant, backend, io_type in EXPECTED_IO}
    table = {key: _io_dtypes(outcome.tflite_model) for key, outcome in outcomes.items()}
    print("\n" + "\n".join(f"{q:17} {b:9} {i:5} -> in {a}, out {o}" for (q, b, i), (a, o) in table.items()))
    assert table == EXPECTED_IO
    litert = outcomes[("int8", "litert", "int8")]
    assert {"QUANTIZE", "DEQUANTIZE"} <= set(litert.op_inventory)  # integer kernels inside the float I/O
    assert outcomes[("int8_mixed", "litert", "int8")].search.chosen.float_layers  # the float layers kept float I/O
    assert litert.metrics["cosine_similarity"] >= 0.99 and litert.tensor_errors
