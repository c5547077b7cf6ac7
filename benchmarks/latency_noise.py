"""Benchmark: how much the p50 latency of the same model moves between identical reruns.

    python benchmarks/latency_noise.py            # ~1 minute on 2 cores; run it on a quiet machine

The demo CNN is converted once in every quantization mode; then each of ``RERUNS`` fresh
processes times all of them side by side with ``latency.measure_latencies`` (the sweep's quiet
phase: interleaved rounds). Prints, per variant, the p50 of every rerun, the run-to-run spread
(max / min - 1) and the within-run 95% interval of the median, and, per pair of variants, how
often the faster one changes between reruns. ``selection.LATENCY_NOISE_FLOOR`` should cover the
run-to-run spread: pairs closer than it are ties, so they cannot flip the choice.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import tempfile
from pathlib import Path

RERUNS = 6
MODES = ("none", "dynamic", "float16", "int8")

TIMER = """
import json, sys
from pathlib import Path
from mlflow_tflite.measure import latency
from mlflow_tflite.flavor import runtime
folder = Path(sys.argv[1])
example = __import__("numpy").load(folder / "x.npy")
models = {p.stem: (runtime.make_interpreter(p.read_bytes()), [example]) for p in sorted(folder.glob("*.tflite"))}
print(json.dumps(latency.measure_latencies(models)))
"""


def convert_demo(folder: Path) -> None:
    """The demo CNN in every mode as ``<mode>.tflite`` files, and one test example as ``x.npy``."""
    import numpy as np

    from mlflow_tflite.build.convert import convert
    from mlflow_tflite.build.data import calibration_sample
    from mlflow_tflite.sweep.context import prepare
    from mlflow_tflite.variants import Variant

    prepared = prepare()
    calibration = [calibration_sample(prepared.dataset.x_train, 200)]
    for mode in MODES:
        (folder / f"{mode}.tflite").write_bytes(convert(prepared.source, Variant(mode, input_size=8), calibration).tflite_model)
    np.save(folder / "x.npy", prepared.dataset.x_test[:1])


def main() -> None:
    from mlflow_tflite.track.selection import LATENCY_NOISE_FLOOR

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        convert_demo(folder)
        reruns = [json.loads(subprocess.run([sys.executable, "-c", TIMER, str(folder)], check=True,
                                            capture_output=True, text=True).stdout.strip().splitlines()[-1])
                  for _ in range(RERUNS)]
    print(f"{'variant':<10} {'p50 per rerun (ms)':<60} {'run-to-run':>10} {'within-run CI':>14}")
    worst = 0.0
    for mode in MODES:
        p50s = [r[mode]["latency_ms_p50"] for r in reruns]
        spread = max(p50s) / min(p50s) - 1
        ci = max((r[mode]["latency_ms_ci95_high"] - r[mode]["latency_ms_ci95_low"]) / r[mode]["latency_ms_p50"]
                 for r in reruns)
        worst = max(worst, spread)
        print(f"{mode:<10} {' '.join(f'{p:.5f}' for p in p50s):<60} {spread:>9.1%} {ci:>13.1%}")
    print("\npairs: reruns in which the faster of the two differs from the first rerun's")
    for a, b in itertools.combinations(MODES, 2):
        first = reruns[0][a]["latency_ms_p50"] < reruns[0][b]["latency_ms_p50"]
        flips = sum((r[a]["latency_ms_p50"] < r[b]["latency_ms_p50"]) != first for r in reruns[1:])
        ratio = reruns[0][a]["latency_ms_p50"] / reruns[0][b]["latency_ms_p50"]
        print(f"  {a:>8} vs {b:<8} p50 ratio {ratio:.3f}  flips {flips}/{RERUNS - 1}")
    print(f"\nlargest run-to-run spread: {worst:.1%}; LATENCY_NOISE_FLOOR = {LATENCY_NOISE_FLOOR:.0%} "
          f"(ratio spread / floor = {worst / LATENCY_NOISE_FLOOR:.2f})")


if __name__ == "__main__":
    main()
