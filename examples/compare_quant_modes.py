"""Convert the digits demo CNN in every quantization mode, one MLflow run each, and print a table.

    python examples/compare_quant_modes.py        # runs land in ./mlflow.db (or MLFLOW_TRACKING_URI)

The `sweep` entry point does this (and more) as one parent run; this script shows the pieces:
open the source once (``prepare``), share one build graph (the float model the per-tensor
tables compare with is converted once), then ``run_variant`` per mode.
"""

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow  # noqa: E402

from mlflow_tflite.build.graph import Builds  # noqa: E402
from mlflow_tflite.sweep.context import prepare  # noqa: E402
from mlflow_tflite.sweep.main_job import run_variant  # noqa: E402
from mlflow_tflite.variants import CONVERTER_MODES, Variant  # noqa: E402


def main() -> None:
    mlflow.set_experiment("digits-quant-modes")
    prepared = prepare()  # trains the demo CNN once
    builds = Builds(prepared.build_inputs())
    print(f"{'variant':<24}{'accuracy':>9}{'drop':>8}{'agree':>7}{'size B':>9}{'gzip B':>9}{'p50 ms':>8}")
    for variant in [Variant(q, input_size=prepared.native_input_size) for q in CONVERTER_MODES] + [
        Variant("int8_full", input_size=prepared.native_input_size, io_type="uint8")
    ]:
        m = run_variant(prepared, variant, register=False, builds=builds).metrics
        print(
            f"{variant.name:<24}{m['accuracy']:>9.4f}{m['accuracy_drop']:>8.4f}{m['agreement']:>7.3f}"
            f"{m['size_bytes']:>9.0f}{m['gzip_size_bytes']:>9.0f}{m['latency_ms_p50']:>8.4f}"
        )


if __name__ == "__main__":
    main()
