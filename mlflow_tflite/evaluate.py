"""Metrics of a converted model against its source: accuracy, fidelity, size and latency."""

from __future__ import annotations

import gzip

import numpy as np
from sklearn.metrics import accuracy_score

from mlflow_tflite import runtime


def is_class_scores(output: np.ndarray) -> bool:
    """True for a ``(N, C)`` output with C > 1: a vector of class scores per example."""
    return output.ndim == 2 and output.shape[1] > 1


def fidelity_metrics(reference: list[np.ndarray], converted: list[np.ndarray]) -> dict[str, float]:
    """How closely the converted outputs follow the source model's.

    Args:
        reference: source model outputs, one float32 ``(N, ...)`` array per output.
        converted: dequantized .tflite outputs in the same order and shapes.

    Returns:
        ``max_abs_error`` over all outputs, and ``agreement`` (fraction of examples whose top-1
        class is the same) when the first output is a vector of class scores.
    """
    metrics = {"max_abs_error": float(max(np.max(np.abs(r - c)) for r, c in zip(reference, converted)))}
    if is_class_scores(reference[0]):
        metrics["agreement"] = float(np.mean(reference[0].argmax(1) == converted[0].argmax(1)))
    return metrics


def accuracy_metrics(reference: np.ndarray, converted: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Top-1 accuracy of both models on labelled data (``sklearn.metrics.accuracy_score``).

    Args:
        reference, converted: ``(N, C)`` class scores of the source and the converted model.
        labels: ``(N,)`` integer labels.

    Returns:
        ``accuracy``, ``source_accuracy`` and ``accuracy_drop = source_accuracy - accuracy``,
        as fractions.
    """
    accuracy = float(accuracy_score(labels, converted.argmax(1)))
    source_accuracy = float(accuracy_score(labels, reference.argmax(1)))
    return {"accuracy": accuracy, "source_accuracy": source_accuracy, "accuracy_drop": source_accuracy - accuracy}


def size_metrics(tflite_model: bytes) -> dict[str, int]:
    """``size_bytes`` of the flatbuffer and ``gzip_size_bytes`` (gzip level 9), in bytes.

    Pruned (sparse) weights only shrink under compression, so the gzip size is where pruning shows.
    """
    return {"size_bytes": len(tflite_model), "gzip_size_bytes": len(gzip.compress(tflite_model, compresslevel=9))}


def evaluate(
    tflite_model: bytes,
    reference: list[np.ndarray],
    x_test: list[np.ndarray],
    y_test: np.ndarray | None,
    num_threads: int = 1,
    latency_runs: int = 100,
) -> dict[str, float]:
    """All run metrics of one converted model on the held-out split.

    Args:
        tflite_model: flatbuffer bytes.
        reference: source model outputs on ``x_test`` (one array per output).
        x_test: one float32 ``(N, ...)`` array per model input.
        y_test: ``(N,)`` int labels, or ``None`` (fidelity only: no accuracy metrics).
        num_threads: interpreter threads for the latency measurement.
        latency_runs: timed single-example invocations (after 10 warm-up runs).

    Returns:
        ``accuracy``, ``source_accuracy``, ``accuracy_drop`` (labelled class scores only),
        ``agreement``, ``max_abs_error``, ``size_bytes``, ``gzip_size_bytes``,
        ``latency_ms_p50``, ``latency_ms_p90``, ``latency_ms_mean``.
    """
    interpreter = runtime.make_interpreter(tflite_model, num_threads)
    converted = runtime.run(interpreter, x_test)
    metrics: dict[str, float] = {}
    if y_test is not None and is_class_scores(reference[0]):
        metrics.update(accuracy_metrics(reference[0], converted[0], y_test))
    metrics.update(fidelity_metrics(reference, converted))
    metrics.update(size_metrics(tflite_model))
    metrics.update(runtime.measure_latency(interpreter, x_test, runs=latency_runs))
    return metrics
