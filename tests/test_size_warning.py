"""A quantized variant larger than its float model gets a warning tag and a CLI line saying why.

The model repeats one depthwise cell six times with shared weights, as an unrolled recurrence
does: the float model stores the cell's kernel and bias once, static int8 gives each step an
int32 bias of its own (the bias scale is the step's input scale times the weight scale) with
per-channel scales and zero points, and the cell's kernel is tiny (2x2 per channel), so
quantization adds more than the 4x smaller weights save.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import mlflow
import store
from mlflow_tflite import tags
from mlflow_tflite.cli import cli

# int8 of the model below against its float model (the sweep's none variant, 11.4 KB), by hand:
# int32 biases: features (64) + one per step of the shared cell (6 x 64) + digit (10), 4 bytes
# each = 1832 bytes; the float model has 3 float32 biases (features, cell, digit) = 552 bytes.
# Per-channel tensors: the kernels and biases of features and digit, the cell's shared kernel and
# its 6 biases = 11, with a float32 scale and an int64 zero point per channel: 9 x 64 x 12 +
# 2 x 10 x 12 = 7152 bytes, plus 17 per-tensor activations x 12 = 7356 bytes.
LITERT_INT8 = ("int8 model is 1.49x the float model (17 KB vs 11.4 KB): quantization parameters of 28 tensors, "
               "11 per-channel (7.36 KB); graph records of 20 ops and 33 tensors (6.38 KB; float model: 16 ops, "
               "24 tensors, 4.96 KB); 8 int32 bias tensors (1.83 KB; float model: 3, 552 bytes)")
CONVERTER_INT8 = ("int8 model is 1.48x the float model (16.9 KB vs 11.4 KB): quantization parameters of 28 tensors, "
                  "11 per-channel (7.36 KB); 8 int32 bias tensors (1.83 KB; float model: 3, 552 bytes); graph "
                  "records of 18 ops and 31 tensors (6.22 KB; float model: 16 ops, 24 tensors, 4.96 KB)")


@pytest.fixture(scope="module")
def tied_cell_files(tmp_path_factory, digits):
    """A digits CNN whose depthwise cell is applied six times with shared weights, trained on
    scikit-learn digits (about 0.96 test accuracy), as .h5 and the split as .npz. Every layer is
    named: tensor names are in the flatbuffer, so Keras's numbered default names would change its size."""
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    x = inputs = keras.Input(digits.x_train.shape[1:], name="image")
    x = keras.layers.Conv2D(64, 3, activation="relu", padding="same", name="features")(x)
    cell = keras.layers.DepthwiseConv2D(2, activation="relu", padding="same", name="cell")
    for step in range(6):
        x = keras.layers.Add(name=f"step{step}")([x, cell(x)])
    x = keras.layers.GlobalMaxPooling2D(name="pool")(x)
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax", name="digit")(x), name="tied_cell")
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(digits.x_train, digits.y_train, epochs=20, batch_size=32, verbose=0)
    assert model.evaluate(digits.x_test, digits.y_test, verbose=0)[1] > 0.9
    folder = tmp_path_factory.mktemp("tied-cell")
    model.save(folder / "tied.h5")
    np.savez(folder / "digits.npz", x_train=digits.x_train, y_train=digits.y_train, x_test=digits.x_test,
             y_test=digits.y_test)
    return str(folder / "tied.h5"), str(folder / "digits.npz")


def _int32_biases(tflite_model: bytes) -> int:
    """int32 tensors with quantization scales, as the LiteRT interpreter lists them (the biases)."""
    from ai_edge_litert.interpreter import Interpreter

    details = Interpreter(model_content=tflite_model).get_tensor_details()
    return sum(d["dtype"] == np.int32 and len(d["quantization_parameters"]["scales"]) > 0 for d in details)


def test_a_larger_int8_variant_gets_the_tag_and_a_line_in_the_sweep(tied_cell_files, tracking):
    model, data = tied_cell_files
    result = CliRunner().invoke(cli, ["sweep", "--model", model, "--data", data, "--quant", "none,int8",
                                      "--backend", "litert", "--sparsity", "0", "--no-register"])
    assert result.exit_code == 0, result.output
    assert [line for line in result.output.splitlines() if "warning:" in line] == [f"    warning: {LITERT_INT8}"]
    runs = {r.data.tags[tags.VARIANT_TAG]: r for r in store.search_runs() if tags.VARIANT_TAG in r.data.tags}
    int8, float_run = runs["int8-s0-8px-litert"], runs["none-s0-8px-litert"]
    assert int8.data.tags[tags.SIZE_WARNING_TAG] == LITERT_INT8
    assert tags.SIZE_WARNING_TAG not in float_run.data.tags
    assert int8.data.metrics["size_bytes"] > 1.4 * float_run.data.metrics["size_bytes"]
    model_dir = Path(mlflow.artifacts.download_artifacts(f"runs:/{int8.info.run_id}/model"))
    assert _int32_biases((model_dir / "model.tflite").read_bytes()) == 8  # the count the tag names, seen by the interpreter


def test_the_main_entry_point_prints_the_warning(tied_cell_files, tracking):
    model, data = tied_cell_files
    result = CliRunner().invoke(cli, ["convert", "--model", model, "--data", data, "--quant", "int8", "--no-register"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == f"warning: {CONVERTER_INT8}"
    (run,) = [r for r in store.search_runs() if tags.VARIANT_TAG in r.data.tags]
    assert run.data.tags[tags.SIZE_WARNING_TAG] == CONVERTER_INT8


def test_a_smaller_variant_gets_no_warning(demo_prepared):
    from mlflow_tflite.sweep.work import convert_and_evaluate
    from mlflow_tflite.variants import Variant

    outcome = convert_and_evaluate(demo_prepared, Variant("int8", input_size=8, backend="litert"))
    assert outcome.size_warning is None and outcome.metrics["size_bytes"] < 70_000
