"""The guide's generated options reference (docs/hooks/options_reference.py) against the real CLI."""

import importlib.util
import sys
from pathlib import Path

import click
import pytest

from mlflow_tflite.cli import cli

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def page() -> str:
    """The options page as the MkDocs hook renders it from this checkout."""
    spec = importlib.util.spec_from_file_location("options_reference", ROOT / "docs" / "hooks" / "options_reference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.render(ROOT / "MLproject")


def test_every_command_line_option_has_a_row(page):
    flags = {param.opts[0] for command in cli.commands.values() for param in command.params
             if isinstance(param, click.Option) and param.name != "help"}
    rows = {line.split(" | ")[1].strip("`") for line in page.splitlines() if line.startswith("| `")
            and " | `--" in line}
    assert {"--quant", "--max-accuracy-drop", "--ray-address", "--model-uri", "--no-register"} <= flags
    assert flags - rows == set()


def test_group_row_names_key_flag_default_commands_and_help(page):
    assert "| `qat_epochs` | `--qat-epochs` | `2` | integer | `convert`, `sweep` | - | qat_int8: fine-tuning epochs. |" \
        in page.splitlines()
    assert "Config-file section `qat` (`qat: {qat_epochs: ...}`), read into `mlflow_tflite.build.qat.QatOptions`." \
        in page.splitlines()


def test_enum_values_and_mlproject_parameters(page):
    assert ("| `executor` | `--executor` | `local` | `local`, `ray` | `sweep` | `sweep` | "
            "local (worker processes) or ray (Ray actors; see ray_address). |") in page.splitlines()


def test_defaults_that_differ_per_command_are_shown_per_command(page):
    row = next(line for line in page.splitlines() if line.startswith("| `sparsity` |"))
    assert row == ("| `sparsity` | `--sparsity` | convert: `0.0`<br>sweep: `auto` | number | `convert`, `sweep` | "
                   "`main`, `sweep` | convert: Target pruned fraction in [0, 1).<br>sweep: Comma-separated target "
                   "sparsities, or auto: 0,0.5,0.8 for a tf_keras source (the demo, .h5, .keras, MLflow models), 0 for "
                   "one TFMOT cannot prune (SavedModel, frozen graph, PyTorch). |")


def test_quantization_mode_rows(page):
    assert "| `int8_full` | `converter` | yes | yes | - | integer model inputs |" in page.splitlines()
    assert ("| `weight_only_int4` | `litert` | no | no | `weight_only_wi4_afp32` | int4 weights dequantized to float "
            "(LiteRT Quantizer) |") in page.splitlines()


def test_angle_brackets_in_help_are_escaped_for_markdown(page):
    row = next(line for line in page.splitlines() if line.startswith("| `model_uri` |"))
    assert row.endswith("| A logged tflite model: runs:/&lt;run_id&gt;/model or models:/m-&lt;id&gt;. |")
