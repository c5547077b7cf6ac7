"""Pure parts without TensorFlow: option parsing, the quantization table, grid expansion, Pareto
front and the (de)quantization arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

from mlflow_tflite.track.rows import Row
from mlflow_tflite.build.data import Preprocessing
from mlflow_tflite.errors import TFLiteError
from mlflow_tflite.config_file import load_config
from mlflow_tflite.options import RunSettings, Task, floats_list, given, number, shapes_map
from mlflow_tflite.quant_modes import QUANT_RECIPES, ModelTraits, QuantMode, recognise
from mlflow_tflite.track.report import pareto_front
from mlflow_tflite.flavor.runtime import TensorInfo, dequantize, quantize
from mlflow_tflite.track.selection import Tolerance
from mlflow_tflite.build.sources import SourceOptions
from mlflow_tflite.variants import Variant, expand_grid, parse_list

SECTIONS = {"source": SourceOptions, "preprocessing": Preprocessing, "tolerance": Tolerance, "run": RunSettings}


def test_placeholder_words_mean_unset():
    assert [given(v) for v in ("none", "native", "auto", "demo", "", None, " None ")] == [None] * 7
    assert given("0") == "0" and given("model.h5") == "model.h5"


def test_parameter_types_parse_and_reject_in_one_line():
    assert number(int, 1).convert("3", None, None) == 3
    assert number(float, optional=True).convert("none", None, None) is None
    assert floats_list().convert("0.5,0.25", None, None) == (0.5, 0.25)
    assert shapes_map().convert("a:1,8,8,1;b:1,4", None, None) == {"a": (1, 8, 8, 1), "b": (1, 4)}
    with pytest.raises(TFLiteError, match="workers=0 must be >= 1"):
        number(int, 1).parse("0", "workers")
    with pytest.raises(TFLiteError, match="input_shapes part 'a' is not name:d1,d2"):
        shapes_map().parse("a", "input_shapes")


def test_every_mode_has_one_recipe_and_is_recognised_from_its_traits():
    assert set(QUANT_RECIPES) == set(QuantMode)
    assert [m for m, r in QUANT_RECIPES.items() if r.calibrated] == ["int8", "int8_full", "int16x8", "int8_mixed",
                                                                     "qat_int8"]
    traits = {
        "none": ModelTraits(False, False, False, False, False),
        "dynamic": ModelTraits(False, False, False, True, False),
        "float16": ModelTraits(False, False, False, False, True),
        "int8": ModelTraits(False, True, False, True, False),
        "int8_full": ModelTraits(True, True, False, True, False),
        "int16x8": ModelTraits(False, True, True, True, False),
    }
    assert {mode: recognise(t) for mode, t in traits.items()} == {m: m for m in traits}


def test_variant_takes_strings_once_and_names_itself():
    variant = Variant("int8_full", 0.5, 96, io_type="uint8", ops="select_tf")
    assert variant.quant is QuantMode.INT8_FULL and variant.quant == "int8_full"
    assert variant.name == "int8_full-uint8-s0.5-96px-select_tf" and variant.model_key == (96, 0.5, False)
    assert Variant("qat_int8", 0.5, 96).model_key == (96, 0.5, True)  # QAT fine-tunes its own model
    for kwargs, message in [({"quant": "int4"}, "quant 'int4' is unknown"),
                            ({"calibration_samples": 0}, "calibration_samples=0 must be > 0"),
                            ({"io_type": "int16"}, "io_type 'int16' is unknown")]:
        with pytest.raises(TFLiteError, match=message):
            Variant(**kwargs)


def test_grid_order_groups_variants_that_share_a_model():
    grid = expand_grid(parse_list("int8,none,int8", "quant"), parse_list("0,0.5", "sparsity", float), [None, 16])
    assert [v.name for v in grid] == ["int8-s0", "none-s0", "int8-s0.5", "none-s0.5",
                                      "int8-s0-16px", "none-s0-16px", "int8-s0.5-16px", "none-s0.5-16px"]
    with pytest.raises(TFLiteError, match="sparsity item 'half' is not a valid float"):
        parse_list("0,half", "sparsity", float)


def test_config_file_fills_the_option_dataclasses(tmp_path):
    path = tmp_path / "options.yaml"
    path.write_text("source: {source_format: frozen_graph, input_arrays: [x], input_shapes: {x: [1, 8, 8, 1]}}\n"
                    "preprocessing: {scale: 0.5, mean: [0.1]}\ntolerance: {min_cosine_similarity: 0.995}\n"
                    "run: {task: fidelity, num_threads: 2}\n")
    config = load_config(str(path), SECTIONS)
    assert config["source"] == {"source_format": "frozen_graph", "input_arrays": ("x",), "input_shapes": {"x": (1, 8, 8, 1)}}
    assert Preprocessing(**config["preprocessing"]) == Preprocessing(scale=0.5, mean=(0.1,))
    assert Tolerance(**config["tolerance"]).min_cosine_similarity == 0.995
    assert RunSettings(**config["run"]) == RunSettings(num_threads=2, task=Task.FIDELITY)
    assert load_config("none", SECTIONS) == {name: {} for name in SECTIONS}


@pytest.mark.parametrize("text, message", [
    ("tolerance: {max_drop: 0.1}", r"section 'tolerance' has unknown keys \['max_drop'\]"),
    ("optimizer: {x: 1}", r"unknown sections \['optimizer'\]"),
    ("run: {num_threads: 0}", "num_threads=0 must be >= 1"),
    ("run: {task: detection}", "task 'detection' is unknown"),
    ("- just a list", "must map sections"),
])
def test_bad_config_files_are_one_line_errors(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(TFLiteError, match=message):
        load_config(str(path), SECTIONS)
    with pytest.raises(TFLiteError, match="does not exist"):
        load_config(str(tmp_path / "missing.yaml"), SECTIONS)


def test_pareto_front_keeps_the_undominated():
    def row(name, accuracy, latency, size):
        return Row(name, metrics={"accuracy": accuracy, "latency_ms_p50": latency, "size_bytes": size})

    rows = [row("a", 0.99, 2.0, 100), row("b", 0.98, 1.0, 50), row("c", 0.97, 1.5, 60), row("d", 0.99, 2.0, 100)]
    # c is beaten by b on all three; a and d are equal, so neither dominates the other.
    assert [r.variant for r in pareto_front(rows)] == ["a", "b", "d"]


def test_quantize_and_dequantize_follow_the_tflite_affine_scheme():
    tensor = TensorInfo("x", 0, (-1, 3), np.dtype(np.int8), scale=0.5, zero_point=-3)
    # q = round(x / 0.5 - 3), clipped to int8: 1.0 -> -1, 100 -> 127 (clipped), -100 -> -128 (clipped)
    q = quantize(np.array([[1.0, 100.0, -100.0]], np.float32), tensor)
    assert q.dtype == np.int8 and q.tolist() == [[-1, 127, -128]]
    assert dequantize(q, tensor).tolist() == [[1.0, 65.0, -62.5]]  # (q + 3) * 0.5
    assert quantize(np.array([[5]], np.int8), tensor).tolist() == [[5]]  # integers pass through
    float_tensor = TensorInfo("y", 1, (-1, 3), np.dtype(np.float32), 0.0, 0)
    assert quantize(np.array([[1.5, 2.0, 3.0]]), float_tensor).dtype == np.float32


def test_a_typed_placeholder_does_not_beat_the_config_file(tmp_path):
    """`mlflow run` passes every MLproject default (e.g. `--max-accuracy-drop auto`); the file wins then."""
    import click
    from click.testing import CliRunner

    from mlflow_tflite.options import click_options, pop_fields

    path = tmp_path / "o.yaml"
    path.write_text("tolerance: {max_accuracy_drop: 0.05}\nrun: {registered_model_name: my-net, no_register: 'false'}\n")
    seen = {}

    @click.command()
    @click_options(Tolerance)
    @click_options(RunSettings)
    def command(**kwargs):
        config = load_config(str(path), SECTIONS)
        seen["tolerance"] = Tolerance(**pop_fields(Tolerance, kwargs, config["tolerance"]))
        seen["run"] = RunSettings(**pop_fields(RunSettings, kwargs, config["run"]))

    result = CliRunner().invoke(command, ["--max-accuracy-drop", "auto", "--registered-model-name", "auto",
                                          "--num-threads", "3"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert seen["tolerance"].max_accuracy_drop == 0.05 and seen["tolerance"].min_cosine_similarity == 0.99
    assert seen["run"] == RunSettings(registered_model_name="my-net", num_threads=3, no_register=False)
    CliRunner().invoke(command, ["--max-accuracy-drop", "0.2"], catch_exceptions=False)
    assert seen["tolerance"].max_accuracy_drop == 0.2  # a real typed value wins over the file


def test_empty_config_values_are_one_line_errors(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("run: {num_threads: }\n")
    with pytest.raises(TFLiteError, match="key 'num_threads' is empty"):
        load_config(str(path), SECTIONS)
