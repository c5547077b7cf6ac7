"""The pictures runs carry, rendered for real and read back through the figure's renderer:
label boxes (window extents) must not overlap and must lie inside the frame, names must be whole."""

from __future__ import annotations

import warnings

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

import mlflow

from mlflow_tflite.build.convert import configure
from mlflow_tflite.measure.tensors import tensor_errors
from mlflow_tflite.track import runs
from mlflow_tflite.track.figures import tensor_error_figure, wrap_name
from mlflow_tflite.track.report import log_comparison, pareto_figure
from mlflow_tflite.track.rows import Row
from mlflow_tflite.track.selection import Tolerance
from mlflow_tflite.variants import Variant

SOURCE_ACCURACY = 0.9722


def accuracy_row(name: str, accuracy: float, latency_ms: float, size_bytes: int, status: str = "FINISHED") -> Row:
    return Row(name, status=status, metrics={"accuracy": accuracy, "source_accuracy": SOURCE_ACCURACY,
                                             "accuracy_drop": SOURCE_ACCURACY - accuracy,
                                             "latency_ms_p50": latency_ms, "size_bytes": size_bytes})


def colliding_rows() -> list[Row]:
    """A digits-like sweep where none/float16 and dynamic/int8 measure exactly alike (same point)."""
    return [accuracy_row("none-s0-8px", 0.9722, 0.0121, 24880), accuracy_row("float16-s0-8px", 0.9722, 0.0121, 13568),
            accuracy_row("dynamic-s0-8px", 0.9694, 0.0143, 8224), accuracy_row("int8-s0-8px", 0.9694, 0.0143, 8224),
            accuracy_row("none-s0.5-8px", 0.9667, 0.0119, 24880),
            accuracy_row("float16-s0.5-8px", 0.9667, 0.0122, 13568),
            accuracy_row("dynamic-s0.5-8px", 0.9639, 0.0141, 8224), accuracy_row("int8-s0.5-8px", 0.9611, 0.0139, 8200),
            accuracy_row("int8_mixed-s0-8px-litert", 0.9700, 0.0150, 9000),
            accuracy_row("weight_only_int8-s0-8px-litert", 0.9722, 0.0160, 8300),
            accuracy_row("int8-s0.75-8px", 0.9, 0.0140, 8224, status="FAILED"),
            Row("flex-s0-8px", metrics={"size_bytes": 30000})]  # not timed here (Flex ops): not plotted


def drawn(figure):
    figure.canvas.draw()
    return figure.canvas.get_renderer()


def boxes_overlap(a, b) -> bool:
    return min(a.x1, b.x1) > max(a.x0, b.x0) and min(a.y1, b.y1) > max(a.y0, b.y0)


def inside(box, frame) -> bool:
    return frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1


def assert_apart_and_inside(boxes, frame):
    assert boxes
    for i, a in enumerate(boxes):
        assert inside(a, frame), (a, frame)
        for b in boxes[i + 1:]:
            assert not boxes_overlap(a, b), (a, b)


def test_pareto_labels_are_apart_inside_and_shared_by_variants_at_one_point():
    rows = colliding_rows()
    figure = pareto_figure(rows, rows[3], Tolerance(0.01))
    renderer = drawn(figure)
    ax = figure.axes[0]
    labels = [t.get_text() for t in ax.texts]
    assert sorted(labels) == sorted([
        "float16-s0-8px, none-s0-8px", "dynamic-s0-8px, int8-s0-8px", "none-s0.5-8px", "float16-s0.5-8px",
        "dynamic-s0.5-8px", "int8-s0.5-8px", "int8_mixed-s0-8px-litert", "weight_only_int8-s0-8px-litert"])
    assert_apart_and_inside([t.get_window_extent(renderer) for t in ax.texts], ax.bbox)
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == [
        "chosen: int8-s0-8px", "tolerance: source accuracy − 1 pt (96.22 %)", "Pareto front", "8.2 kB model",
        "24.9 kB model"]
    assert inside(legend.get_window_extent(renderer), figure.bbox)
    assert not boxes_overlap(legend.get_window_extent(renderer), ax.bbox)
    assert ax.get_xlabel() == "latency p50 (ms per single-example inference)"
    assert ax.get_ylabel() == "accuracy on the evaluation data (%)"
    assert plt.get_fignums() == []  # drawn outside pyplot: nothing registered, nothing to leak

    again = pareto_figure(rows, rows[3], Tolerance(0.01))
    drawn(again)
    assert [t.get_position() for t in again.axes[0].texts] == [t.get_position() for t in ax.texts]


def test_pareto_of_a_crowded_sweep_keeps_labels_apart():
    # 28 variants on a 6 x 4 grid of points (a sweep of 7 modes x 4 sparsities with noisy timings).
    quants = ["none", "float16", "dynamic", "int8", "int8_mixed", "weight_only_int8", "dynamic_int4"]
    sizes = [24880, 13568, 8224, 8224, 9000, 8300, 5000]
    rng = np.random.default_rng(0)
    rows = [accuracy_row(f"{quants[i % 7]}-s{['0', '0.5', '0.75', '0.9'][i // 7]}-8px-litert",
                         0.97 - 0.002 * int(rng.integers(0, 4)), 0.012 + 0.0005 * int(rng.integers(0, 6)),
                         sizes[i % 7]) for i in range(28)]
    figure = pareto_figure(rows, rows[3], Tolerance(0.01))
    renderer = drawn(figure)
    ax = figure.axes[0]
    assert_apart_and_inside([t.get_window_extent(renderer) for t in ax.texts], ax.bbox)
    named = [name for t in ax.texts for name in t.get_text().replace("\n", " ").split(", ")]
    assert sorted(named) == sorted(r.variant for r in rows)  # every variant labelled, once


@pytest.mark.parametrize("metrics, y_label, tolerance_label", [
    ({"agreement": 0.995}, "top-1 agreement with the source model (%)", "tolerance: agreement ≥ 99 %"),
    ({"cosine_similarity": 0.998}, "cosine similarity to the source outputs (1 = identical)",
     "tolerance: cosine ≥ 0.99"),
])
def test_pareto_without_labels_plots_fidelity_against_its_bound(metrics, y_label, tolerance_label):
    rows = [Row("dynamic-s0-8px", metrics={**metrics, "latency_ms_p50": 0.02, "size_bytes": 9000}),
            Row("none-s0-8px", metrics={**{k: 1.0 for k in metrics}, "latency_ms_p50": 0.03, "size_bytes": 30000})]
    figure = pareto_figure(rows, rows[0], Tolerance(0.01, min_cosine_similarity=0.99))
    ax = figure.axes[0]
    assert ax.get_ylabel() == y_label
    assert [t.get_text() for t in ax.get_legend().get_texts()][:2] == ["chosen: dynamic-s0-8px", tolerance_label]


def test_pareto_leaves_out_a_non_finite_measurement():
    rows = [accuracy_row("none-s0-8px", 0.97, 0.02, 30000), accuracy_row("int8-s0-8px", 0.96, float("nan"), 9000)]
    figure = pareto_figure(rows, None, Tolerance())
    ax = figure.axes[0]
    assert [t.get_text() for t in ax.texts] == ["none-s0-8px"]
    assert [t.get_text() for t in ax.get_legend().get_texts()][0].startswith("tolerance: ")


def test_wrap_name_breaks_after_separators_and_keeps_every_character():
    name = "sequential/conv2d/BiasAdd;sequential/conv2d/Conv2D;conv2d/bias"
    assert wrap_name(name, 48) == ["sequential/conv2d/BiasAdd;sequential/conv2d/", "Conv2D;conv2d/bias"]
    assert wrap_name("x" * 100, 48) == ["x" * 48, "x" * 48, "x" * 4]
    assert wrap_name("ab/" + "c" * 50, 48) == ["ab/", "c" * 48, "cc"]
    long_layer = "net/encoder_stage_one_residual_block_depthwise_separable/Relu6;net/dense/MatMul"
    assert wrap_name(long_layer, 48) == ["net/encoder_stage_one_residual_block_depthwise_",
                                         "separable/Relu6;net/dense/MatMul"]
    assert wrap_name("serving_default_input:0", 48) == ["serving_default_input:0"]


@pytest.fixture(scope="module")
def long_named_rows() -> list[dict]:
    return long_named_tensor_rows()


def long_named_tensor_rows() -> list[dict]:
    """Per-tensor error rows of a real int8 conversion of a tiny tf_keras net whose layers have
    long names (random weights, fixed seed), against its float conversion."""
    import tensorflow as tf
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((10, 10, 3), name="image")
    x = keras.layers.Conv2D(8, 3, activation="relu", name="encoder_stage_one_residual_block_first_conv")(inputs)
    x = keras.layers.DepthwiseConv2D(3, activation="relu6",
                                     name="encoder_stage_one_residual_block_depthwise_separable")(x)
    x = keras.layers.Flatten(name="flatten_features")(x)
    x = keras.layers.Dense(10, name="classification_head_fully_connected_logits_layer")(x)
    model = keras.Model(inputs, keras.layers.Softmax(name="class_probabilities")(x), name="long_named_net")
    rng = np.random.default_rng(0)
    calibration, x_test = [rng.random((24, 10, 10, 3), dtype=np.float32)], [rng.random((6, 10, 10, 3), dtype=np.float32)]
    models = {}
    for quant in ("none", "int8"):
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        configure(converter, Variant(quant), calibration)
        models[quant] = bytes(converter.convert())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors.*")
        return tensor_errors(models["none"], models["int8"], x_test)


def test_tensor_errors_show_whole_names_on_bars_of_snr(long_named_rows):
    rows = long_named_rows
    assert max(len(r["tensor"]) for r in rows) > 60  # the old plot cut names at 60 characters
    figure = tensor_error_figure(rows)
    renderer = drawn(figure)
    ax = figure.axes[0]
    names = ax.get_yticklabels()
    assert [t.get_text().replace("\n", "") for t in names] == [r["tensor"] for r in rows]  # whole, worst first
    assert any("\n" in t.get_text() for t in names)
    assert_apart_and_inside([t.get_window_extent(renderer) for t in names], figure.bbox)
    assert [p.get_width() for p in ax.patches] == [r["snr_db"] for r in rows]
    assert [p.get_y() for p in ax.patches] == sorted(p.get_y() for p in ax.patches)
    assert ax.yaxis_inverted()  # the first bar (worst) at the top
    assert ax.get_xlabel() == "SNR (dB)"
    ops = ax.child_axes[0].get_yticklabels()
    assert [t.get_text() for t in ops] == [f"{r['op']}  {r['snr_db']:.1f} dB" for r in rows]
    assert_apart_and_inside([t.get_window_extent(renderer) for t in ops], figure.bbox)
    assert inside(ax.xaxis.label.get_window_extent(renderer), figure.bbox)
    assert inside(ax.title.get_window_extent(renderer), figure.bbox)
    assert plt.get_fignums() == []


def test_tensor_error_figure_grows_with_bars_and_name_lines():
    short = [{"tensor": f"dense_{i}/MatMul", "op": "FULLY_CONNECTED", "snr_db": 20.0 + i} for i in range(25)]
    long = [dict(row, tensor="model/" + "very_long_block_name/" * 6 + row["tensor"]) for row in short]
    heights = [tensor_error_figure(rows, worst=worst).get_size_inches()[1]
               for rows, worst in ((short, 3), (short, 20), (long, 3), (short, 25))]
    assert heights[0] < heights[2] < heights[1] < heights[3]
    assert tensor_error_figure(short).get_size_inches()[1] == heights[1]  # the 20 worst by default
    figure = tensor_error_figure(long, worst=20)
    renderer = drawn(figure)
    assert len(figure.axes[0].patches) == 20
    assert_apart_and_inside([t.get_window_extent(renderer) for t in figure.axes[0].get_yticklabels()], figure.bbox)


def test_figures_are_logged_as_pngs_of_their_size(long_named_rows, tracking):
    rows = colliding_rows()
    with mlflow.start_run() as run:
        log_comparison(rows, rows[3], Tolerance(0.01))
        runs.log_tensor_errors(long_named_rows, None)
    assert plt.get_fignums() == []
    pareto = Image.open(mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/pareto.png"))
    assert pareto.size == (1000, 600)  # 10 x 6 inches at 100 dpi
    bars = Image.open(mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/tensor_errors.png"))
    assert bars.size[0] == 1100 and bars.size[1] > 400  # 11 inches wide; a line or two per tensor
