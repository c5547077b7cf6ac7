"""PyTorch sources: real litert-torch conversions in a child process, real LiteRT Quantizer variants,
a real MLflow store. The test process itself has TensorFlow loaded and never imports torch (the
models are exported by subprocesses and converted by ``mlflow_tflite.build.torch_worker``)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import mlflow
import store
from mlflow import MlflowClient
from mlflow_tflite.cli import cli
from mlflow_tflite.sweep.context import prepare
from mlflow_tflite.sweep.work import convert_and_evaluate
from mlflow_tflite.tags import ERROR_TAG
from mlflow_tflite.track.selection import Tolerance
from mlflow_tflite.variants import Variant

from test_real_models import MTCNN_PREPROCESSING, face_crops

TESTS = Path(__file__).parent
NO_CONVERTER = ("model 'torch_nets:small_cnn' is a PyTorch model: TFLiteConverter cannot quantize it; "
                "pass backend=litert (the LiteRT Quantizer on litert-torch's float model)")


@pytest.fixture(scope="module")
def small_files(tmp_path_factory):
    """``small.pt2`` (``torch_nets.small_cnn`` exported by a subprocess) and NHWC images with labels."""
    folder = tmp_path_factory.mktemp("torch-small")
    subprocess.run([sys.executable, str(TESTS / "torch_nets.py"), "export", "small_cnn", "1,3,12,12",
                    str(folder / "small.pt2")], check=True, capture_output=True)
    rng = np.random.default_rng(0)
    np.savez(folder / "data.npz", x_train=rng.random((60, 12, 12, 3), np.float32), y_train=rng.integers(0, 4, 60),
             x_test=rng.random((50, 12, 12, 3), np.float32), y_test=rng.integers(0, 4, 50))
    return folder / "small.pt2", folder / "data.npz"


def _sweep(*args: str):
    result = CliRunner().invoke(cli, ["sweep", *args])
    assert result.exit_code == 0, result.output
    runs = {r.data.tags["mlflow_tflite.variant"]: r for r in store.search_runs("tags.mlflow_tflite.variant != ''")}
    return result, runs


def _champion_accuracy(name: str, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(accuracy of the champion's pyfunc on ``x``, the accuracy its run logged)."""
    version = MlflowClient().get_model_version_by_alias(name, "champion")
    predicted = mlflow.pyfunc.load_model(f"models:/{name}@champion").predict(x)
    logged = MlflowClient().get_run(version.run_id).data.metrics["accuracy"]
    return float(np.mean(np.argmax(np.asarray(predicted), axis=1) == y)), logged


def test_pt2_sweep_through_the_cli_after_tensorflow(small_files, tracking):
    import tensorflow  # noqa: F401  the CLI's workers start TensorFlow before opening the source; so does this process

    model, data = small_files
    torch_before = "torch" in sys.modules  # another test in this process may have imported it already
    result, runs = _sweep("--model", str(model), "--data", str(data), "--backend", "litert",
                          "--quant", "none,dynamic,int8")  # sparsity=auto: 0 alone, PyTorch cannot be pruned
    # Converted in a child process: the sweep did not import torch here.
    assert "tensorflow" in sys.modules and ("torch" in sys.modules) == torch_before
    assert {name: r.info.status for name, r in runs.items()} == {
        "none-s0-litert": "FINISHED", "dynamic-s0-litert": "FINISHED", "int8-s0-litert": "FINISHED"}
    int8 = runs["int8-s0-litert"]
    assert int8.data.params["layout"] == "nchw" and int8.data.params["backend"] == "litert"
    table = store.load_table(int8.info.run_id, "tensor_errors.json")
    assert len(table) >= 3 and table["snr_db"].is_monotonic_increasing
    assert runs["none-s0-litert"].data.metrics["max_abs_error"] < 1e-5  # litert-torch's model = PyTorch's outputs
    with np.load(data) as arrays:  # the model takes NCHW: the data is fed as PyTorch takes it
        x, y = arrays["x_test"].transpose(0, 3, 1, 2), arrays["y_test"]
    reproduced, logged = _champion_accuracy("small", x, y)
    assert reproduced == pytest.approx(logged, abs=1e-9)


def test_factory_source_with_nhwc_layout_and_a_pruning_it_cannot_make(small_files, tracking):
    _, data = small_files
    result, runs = _sweep("--model", "torch_nets:small_cnn", "--input-shape", "1,3,12,12", "--layout", "nhwc",
                          "--data", str(data), "--backend", "litert", "--quant", "none,int16x8",
                          "--sparsity", "0,0.5")
    statuses = {name: r.info.status for name, r in runs.items()}
    assert statuses == {"none-s0-12px-litert": "FINISHED", "int16x8-s0-12px-litert": "FINISHED",
                        "none-s0.5-12px-litert": "FAILED", "int16x8-s0.5-12px-litert": "FAILED"}
    assert runs["none-s0.5-12px-litert"].data.tags[ERROR_TAG] == (
        "sparsity=0.5 needs a tf_keras model but the source is a pytorch model (torch_nets:small_cnn); "
        "give an .h5/tf_keras model or drop that option")
    assert runs["int16x8-s0-12px-litert"].data.params["layout"] == "nhwc"
    with np.load(data) as arrays:  # NHWC, as stored
        reproduced, logged = _champion_accuracy("small_cnn", arrays["x_test"], arrays["y_test"])
    assert reproduced == pytest.approx(logged, abs=1e-9)


def test_a_converter_mode_fails_with_one_line(tracking):
    """backend=converter (the default) cannot quantize a PyTorch source: that variant fails, with its run."""
    result = CliRunner().invoke(cli, ["convert", "--model", "torch_nets:small_cnn", "--input-shape", "1,3,12,12",
                                      "--quant", "dynamic"])
    assert result.exit_code == 1 and result.output.strip().splitlines()[-1] == f"Error: {NO_CONVERTER}"
    failed, = store.search_runs("tags.mlflow_tflite.variant != ''")
    assert failed.info.status == "FAILED" and failed.data.tags[ERROR_TAG] == NO_CONVERTER


def test_an_mlflow_pytorch_model_is_a_source(small_files, tracking):
    _, data = small_files
    logged = subprocess.run([sys.executable, str(TESTS / "torch_nets.py"), "mlflow", "small_cnn", "1,3,12,12"],
                            check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    context = prepare(logged, str(data))
    assert context.source.kind == "pytorch" and context.source.input_shapes == [(1, 3, 12, 12)]
    assert context.source_params == {"layout": "nchw"}
    none = convert_and_evaluate(context, Variant("none", backend="litert")).metrics
    dynamic = convert_and_evaluate(context, Variant("dynamic", backend="litert")).metrics
    assert none["max_abs_error"] < 1e-5 and dynamic["cosine_similarity"] > 0.99


@pytest.mark.parametrize("args, message", [
    (["--model", "torch_nets:onet"],
     "Error: model 'torch_nets:onet' is a PyTorch factory; pass its NCHW input_shape, e.g. 1,3,224,224"),
    (["--model", "no_such_nets:build", "--input-shape", "1,3,8,8"],  # the child's error, as one line
     "Error: PyTorch model 'no_such_nets:build' could not be converted (ModuleNotFoundError: No module named "
     "'no_such_nets')"),
    (["--model", "torch_nets:small_cnn", "--input-shape", "1,3,12,12", "--ops", "select_tf", "--backend", "litert"],
     "Error: ops=select_tf does not apply to PyTorch model 'torch_nets:small_cnn' (litert-torch converts to builtin "
     "ops); use ops=builtins"),
    (["--model", "torch_nets:onet", "--input-shape", "1,3,0,8"],
     "Error: input_shape '1,3,0,8' must have positive dimensions; pass e.g. 1,3,224,224"),
])
def test_bad_pytorch_source_is_one_line(args, message, tracking):
    result = CliRunner().invoke(cli, ["convert", *args])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == message


@pytest.mark.slow
def test_mtcnn_onet_float_and_int8_fidelity(tmp_path):
    """MTCNN's ONet with its pretrained weights (the mtcnn wheel) on 120 real face/background crops:
    the float model matches PyTorch; int8 (LiteRT Quantizer) keeps the face probability."""
    crops = face_crops(48, count=120)  # even rows: the face, odd rows: background
    np.savez(tmp_path / "crops.npz", x_train=crops[:60], x_test=crops[60:])
    context = prepare("torch_nets:onet", str(tmp_path / "crops.npz"), preprocessing=MTCNN_PREPROCESSING,
                      input_shape=(1, 3, 48, 48))
    assert context.source.input_shapes == [(1, 3, 48, 48)] and context.dataset.x_test.shape[1:] == (3, 48, 48)
    face_prob = context.reference[2][:, 1]
    assert face_prob[0::2].mean() > 0.9 > 0.3 > face_prob[1::2].mean()  # PyTorch itself tells faces apart
    results = {quant: convert_and_evaluate(context, Variant(quant, backend="litert")).metrics
               for quant in ("none", "int8")}
    for quant, m in results.items():
        print(f"\nONet {quant}: " + ", ".join(f"{k}={m[k]:.4g}" for k in sorted(m) if k.startswith(
            ("max_abs_error", "cosine_similarity", "relative_error", "size_bytes", "float_convert_seconds"))))
    assert results["none"]["max_abs_error"] < 1e-4
    assert results["int8"]["cosine_similarity_output_2"] >= 0.99


@pytest.mark.slow
def test_mtcnn_onet_int4_modes_and_mixed_precision(tmp_path):
    """The 4-bit modes and the accuracy-guided int8_mixed search on litert-torch's float ONet: int8
    misses cosine 0.995 on the box output; int8_mixed keeps PyTorch modules (named as in PyTorch) in
    float until it meets it, with a model still a quarter of the float size."""
    crops = face_crops(48, count=120)
    np.savez(tmp_path / "crops.npz", x_train=crops[:60], x_test=crops[60:])
    context = prepare("torch_nets:onet", str(tmp_path / "crops.npz"), preprocessing=MTCNN_PREPROCESSING,
                      input_shape=(1, 3, 48, 48))
    context = dataclasses.replace(context, settings=dataclasses.replace(
        context.settings, tolerance=Tolerance(min_cosine_similarity=0.995)))
    outcomes = {quant: convert_and_evaluate(context, Variant(quant, backend="litert"))
                for quant in ("none", "int8", "dynamic_int4", "weight_only_int4", "int8_mixed")}
    size = {quant: o.metrics["size_bytes"] for quant, o in outcomes.items()}
    for quant in ("dynamic_int4", "weight_only_int4"):  # 4-bit weights: about half of int8's file
        assert size[quant] < 0.6 * size["int8"] and outcomes[quant].tensor_errors
        assert outcomes[quant].metrics["cosine_similarity_output_2"] > 0.99  # the face probability holds
    assert outcomes["int8"].metrics["cosine_similarity"] < 0.995
    search = outcomes["int8_mixed"].search
    assert search.tolerance_met and outcomes["int8_mixed"].metrics["cosine_similarity"] >= 0.995
    assert size["int8_mixed"] < 0.3 * size["none"]
    kept = {layer["name"] for layer in search.report()["layers"]}  # out of static int8: float or dynamic range
    module_names = {f"{kind}{i}" for kind in ("conv", "prelu", "pool") for i in range(1, 6)} | {
        "dense5", "dense6_1", "dense6_2", "dense6_3"}
    assert kept and kept <= module_names | {f"serving_default_output_{i}_output" for i in range(3)}
