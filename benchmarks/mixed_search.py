"""Benchmark: the int8_mixed search against one full int8 quantization, on an unrolled LSTM.

    python benchmarks/mixed_search.py        # ~2 minutes on 2 cores; a quiet machine

The model is the tests' recurrent encoder (``tests/recurrent_nets.py``: a tf_keras
``LSTM(64, unroll=True)`` over Fashion-MNIST row spectra, ~400 ops; needs Debian's
``dataset-fashion-mnist``), judged by fidelity with the bound cosine >= 0.99, on ``backend=litert``.
One process, one variant after another. Prints, for plain ``int8`` and for ``int8_mixed``: wall
time, quantization time (``quantize_seconds``: the sum over the search's trials), cosine, size
against float; then the issue-19 ratio ``search wall / (one int8 quantization + the search's
evaluations)`` (target <= 3), where the evaluations are the search's wall time outside quantization.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from recurrent_nets import save_encoder  # noqa: E402

from mlflow_tflite.sweep.context import prepare  # noqa: E402
from mlflow_tflite.sweep.work import convert_and_evaluate  # noqa: E402
from mlflow_tflite.track.selection import Tolerance  # noqa: E402
from mlflow_tflite.variants import Variant  # noqa: E402


def timed(context, quant: str):
    """(Outcome, wall seconds) of one variant on backend=litert."""
    started = time.perf_counter()
    outcome = convert_and_evaluate(context, Variant(quant, backend="litert"))
    return outcome, time.perf_counter() - started


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as folder:
        model, data, _ = save_encoder(Path(folder))
        context = prepare(str(model), str(data), task="fidelity")
        context = dataclasses.replace(context, settings=dataclasses.replace(
            context.settings, tolerance=Tolerance(min_cosine_similarity=0.99)))
        float_size = timed(context, "none")[0].metrics["size_bytes"]
        results = {quant: timed(context, quant) for quant in ("int8", "int8_mixed")}
    print(f"{'variant':<12}{'wall s':>8}{'quantize s':>12}{'cosine':>9}{'size/float':>12}{'trials':>8}")
    for quant, (outcome, wall) in results.items():
        m = outcome.metrics
        trials = len(outcome.search.trials) if outcome.search else 1
        print(f"{quant:<12}{wall:>8.1f}{m['quantize_seconds']:>12.1f}{m['cosine_similarity']:>9.4f}"
              f"{m['size_bytes'] / float_size:>12.2f}{trials:>8}")
    (int8, _), (mixed, wall) = results["int8"], results["int8_mixed"]
    evaluations = wall - mixed.metrics["quantize_seconds"]
    ratio = wall / (int8.metrics["quantize_seconds"] + evaluations)
    print(f"search wall / (one int8 quantization + its evaluations) = {wall:.1f} / "
          f"({int8.metrics['quantize_seconds']:.1f} + {evaluations:.1f}) = {ratio:.2f}  (target <= 3)")
    print(f"tolerance met: {mixed.search.tolerance_met}; {mixed.search.message}")


if __name__ == "__main__":
    main()
