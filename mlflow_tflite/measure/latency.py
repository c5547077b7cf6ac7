"""Latency timing of LiteRT interpreters: single-example ``invoke()`` in interleaved rounds.

Only ``numpy`` and the interpreter helpers of ``runtime.py`` are used: timing never imports
TensorFlow.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from mlflow_tflite.errors import TFLiteError
from mlflow_tflite.flavor.runtime import invoke, io_tensors, make_interpreter, quantize
from mlflow_tflite.measure.evaluate import inputs_in_model_order


@dataclass(frozen=True)
class LatencyPlan:
    """How latency is timed: interleaved rounds of single-example ``invoke()`` calls.

    Attributes:
        warmup: untimed invocations per model before the first round (caches, lazy kernel set-up).
        rounds: timing rounds; in each round every model is timed once, in a rotated order, so
            slow drifts of the machine (frequency, other load) hit every model alike.
        runs_per_round: timed invocations per model per round (after one untimed re-warm call).
    """

    warmup: int = 10
    rounds: int = 10
    runs_per_round: int = 20

    def __post_init__(self):
        if min(self.warmup, self.rounds, self.runs_per_round) < 0 or self.rounds < 2 or self.runs_per_round < 1:
            raise TFLiteError(f"latency plan {self} needs rounds >= 2, runs_per_round >= 1 and warmup >= 0")


def _ready_for_timing(interpreter, arrays: list[np.ndarray]) -> None:
    """Load the first example of each input into the interpreter and run it once."""
    inputs, outputs = io_tensors(interpreter)
    invoke(interpreter, inputs, outputs, [quantize(a[:1], t) for a, t in zip(arrays, inputs)])


def _median_ci95(round_medians: np.ndarray) -> tuple[float, float]:
    """Distribution-free 95% confidence interval of the median from per-round medians.

    The interval between order statistics ``x_(j)`` and ``x_(n+1-j)`` with the largest ``j``
    such that ``2 * P(Binomial(n, 1/2) < j) <= 0.05`` (Conover, *Practical Nonparametric
    Statistics*, 3rd ed., section 3.2); with fewer than 6 rounds no such ``j`` exists and the
    interval is the full range.
    """
    from math import comb

    ordered = np.sort(round_medians)
    n = len(ordered)
    j = 0
    while 2 * sum(comb(n, i) for i in range(j + 1)) / 2**n <= 0.05:
        j += 1
    j = max(j, 1)  # 1-based order statistic x_(j)
    return float(ordered[j - 1]), float(ordered[n - j])


def measure_latencies(models: dict[str, tuple[object, list[np.ndarray]]],
                      plan: LatencyPlan = LatencyPlan()) -> dict[str, dict[str, float]]:
    """Time several models side by side, one at a time, in interleaved rounds.

    Call it in a quiet phase (no conversion or training running on the same cores). Each timed
    call is ``interpreter.invoke()`` alone on one example (batch 1), measured with
    ``time.perf_counter``; the thread count is the one each interpreter was created with.

    Args:
        models: name -> (interpreter from :func:`make_interpreter`, one array per model input;
            the first row of each is used).
        plan: warm-up, rounds and runs per round (:class:`LatencyPlan`).

    Returns:
        name -> ``latency_ms_p50``, ``latency_ms_p90``, ``latency_ms_mean`` over all timed calls,
        ``latency_ms_mad`` (median absolute deviation from the p50) and ``latency_ms_ci95_low``
        / ``latency_ms_ci95_high`` (95% interval of the median from the per-round medians, see
        :func:`_median_ci95`), all in milliseconds.
    """
    names = list(models)
    for name in names:
        interpreter, arrays = models[name]
        _ready_for_timing(interpreter, arrays)
        for _ in range(plan.warmup):
            interpreter.invoke()
    samples = {name: np.empty((plan.rounds, plan.runs_per_round)) for name in names}
    for round_index in range(plan.rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            interpreter = models[name][0]
            interpreter.invoke()  # re-warm after the other models ran
            for i in range(plan.runs_per_round):
                started = time.perf_counter()
                interpreter.invoke()
                samples[name][round_index, i] = (time.perf_counter() - started) * 1000.0
    return {name: _latency_stats(times) for name, times in samples.items()}


def _latency_stats(times_ms: np.ndarray) -> dict[str, float]:
    """Summary of a ``(rounds, runs_per_round)`` array of call times in ms."""
    flat = times_ms.ravel()
    p50 = float(np.percentile(flat, 50))
    low, high = _median_ci95(np.median(times_ms, axis=1))
    return {
        "latency_ms_p50": p50,
        "latency_ms_p90": float(np.percentile(flat, 90)),
        "latency_ms_mean": float(flat.mean()),
        "latency_ms_mad": float(np.median(np.abs(flat - p50))),
        "latency_ms_ci95_low": low,
        "latency_ms_ci95_high": high,
    }


def example_arrays(example) -> tuple[list[np.ndarray], list[str] | None]:
    """An input example (an array, or a dict by source input name) -> (arrays, names or None)."""
    if isinstance(example, dict):
        return [np.asarray(v) for v in example.values()], list(example)
    return [np.asarray(example)], None


def time_latency(models: dict[str, tuple[bytes, object]], num_threads: int = 1) -> dict[str, dict[str, float]]:
    """Latency metrics of several .tflite models, timed side by side (:func:`measure_latencies`).

    Call it in a quiet phase: after every conversion, with no other work on the machine's cores.

    Args:
        models: name -> (flatbuffer bytes, input example: an array, or a dict of arrays by the
            source's input names; the first row is used).
        num_threads: LiteRT interpreter threads.

    Returns:
        name -> ``latency_ms_*`` metrics in milliseconds.

    Raises:
        TFLiteError: a model does not load or run.
    """
    loaded = {}
    for name, (tflite_model, example) in models.items():
        interpreter = make_interpreter(tflite_model, num_threads)
        arrays, names = example_arrays(example)
        loaded[name] = (interpreter, inputs_in_model_order(interpreter, arrays, names))
    return measure_latencies(loaded)
