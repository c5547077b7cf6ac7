"""Benchmark: the LiteRT Quantizer backend against the converter on a MobileNetV2-class model.

    python benchmarks/litert_vs_converter.py        # ~5-10 minutes on 2 cores; a quiet machine

The model is tf_keras' MobileNetV2 at 96x96x3 with random weights (3.5 M parameters; weights
do not change timings or sizes), saved as .h5; the data are random images (fidelity task).
Each configuration runs as a fresh process into its own temporary sqlite store, one after
another. Prints:

1. the wall time of a 6-mode sweep with ``backend=converter`` (none, dynamic, float16, int8,
   int8_full, int16x8) and ``backend=litert`` (none, dynamic, int8, int16x8, weight_only_int8,
   dynamic_int4), and their ratio (target <= 0.45);
2. per mode, size and single-thread p50 latency relative to the float model (targets for int8:
   size <= 0.30, p50 <= 0.55);
3. one ``mlflow-tflite convert`` int8 variant against a plain seed-style script that loads the
   same .h5 and converts it with the same representative dataset (target <= 1.15), with and
   without the per-tensor error table (which costs the converter backend a float conversion).

``--overhead-only`` runs part 3 alone.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONVERTER_MODES = "none,dynamic,float16,int8,int8_full,int16x8"
LITERT_MODES = "none,dynamic,int8,int16x8,weight_only_int8,dynamic_int4"

PLAIN_SCRIPT = """
import sys, numpy as np, tensorflow as tf, tf_keras
model = tf_keras.models.load_model(sys.argv[1], compile=False)
data = np.load(sys.argv[2])
calibration = data["x_train"][np.random.default_rng(0).choice(len(data["x_train"]), 200, replace=False)]
converter = tf.lite.TFLiteConverter.from_keras_model(model)
converter.optimizations = [tf.lite.Optimize.DEFAULT]
converter.representative_dataset = lambda: ([row[None]] for row in calibration)
converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
open(sys.argv[3], "wb").write(converter.convert())
"""


def make_model_and_data(folder: Path) -> tuple[str, str]:
    import numpy as np
    import tf_keras

    model = tf_keras.applications.MobileNetV2(input_shape=(96, 96, 3), weights=None)
    print(f"MobileNetV2-96: {model.count_params() / 1e6:.2f} M parameters")
    model.save(folder / "mobilenet_v2_96.h5")
    rng = np.random.default_rng(0)
    np.savez(folder / "images.npz", x_train=rng.uniform(-1, 1, (300, 96, 96, 3)).astype(np.float32),
             x_test=rng.uniform(-1, 1, (40, 96, 96, 3)).astype(np.float32))
    return str(folder / "mobilenet_v2_96.h5"), str(folder / "images.npz")


def timed(command: list[str], workdir: Path) -> float:
    """Wall time in seconds of one command in a fresh store under ``workdir``."""
    workdir.mkdir()
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{workdir}/mlflow.db", "MLFLOW_DISABLE_TELEMETRY": "true"}
    started = time.perf_counter()
    subprocess.run(command, cwd=workdir, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def child_metrics(workdir: Path) -> dict[str, dict]:
    """Variant name -> metrics of the sweep's child runs in the store under ``workdir``."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    experiments = [e.experiment_id for e in client.search_experiments()]  # the sweep names its own
    runs = client.search_runs(experiments, "tags.mlflow_tflite.role = 'variant'")
    return {r.data.params["quant"]: r.data.metrics for r in runs if r.info.status == "FINISHED"}


def sweep_command(model: str, data: str, modes: str, backend: str) -> list[str]:
    return [sys.executable, "-m", "mlflow_tflite.cli", "sweep", "--model", model, "--data", data, "--quant", modes,
            "--sparsity", "0", "--backend", backend, "--no-register"]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model, data = make_model_and_data(folder)
        if "--overhead-only" not in sys.argv:
            compare_sweeps(folder, model, data)
        main_overhead(folder, model, data)


def compare_sweeps(folder: Path, model: str, data: str) -> None:
    """Parts 1 and 2: the two 6-mode sweeps, then size and latency per mode."""
    converter = timed(sweep_command(model, data, CONVERTER_MODES, "converter"), folder / "converter")
    litert = timed(sweep_command(model, data, LITERT_MODES, "litert"), folder / "litert")
    print(f"\n6-mode sweep, backend=converter: {converter:.1f} s")
    print(f"6-mode sweep, backend=litert:    {litert:.1f} s")
    print(f"ratio litert / converter: {litert / converter:.3f}  (target <= 0.45)")

    print("\nper mode, relative to the float model of the same sweep (single-thread p50, quiet phase):")
    for name in ("converter", "litert"):
        metrics = child_metrics(folder / name)
        base = metrics["none"]
        for mode, m in metrics.items():
            print(f"  {name:<9} {mode:<17} size {m['size_bytes'] / base['size_bytes']:.3f}  "
                  f"p50 {m['latency_ms_p50'] / base['latency_ms_p50']:.3f}  ({m['latency_ms_p50']:.2f} ms)")
    print("  targets for int8: size <= 0.30, p50 <= 0.55")


def main_overhead(folder: Path, model: str, data: str) -> None:
    """Part 3: one int8 `main` variant against the plain script."""
    plain = timed([sys.executable, "-c", PLAIN_SCRIPT, model, data, str(folder / "plain.tflite")], folder / "plain")
    command = [sys.executable, "-m", "mlflow_tflite.cli", "convert", "--model", model, "--data", data, "--quant", "int8",
               "--no-register"]
    full = timed(command, folder / "main")
    fast = timed(command + ["--no-tensor-errors"], folder / "main-fast")
    print(f"\nplain seed-style script, int8:                   {plain:.1f} s")
    print(f"mlflow-tflite convert, int8:                     {full:.1f} s  (ratio {full / plain:.3f})")
    print(f"mlflow-tflite convert, int8, --no-tensor-errors: {fast:.1f} s  (ratio {fast / plain:.3f}, target <= 1.15)")


if __name__ == "__main__":
    main()
