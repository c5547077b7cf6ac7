"""Metrics of a converted model against its source: accuracy, fidelity, size and latency."""

from __future__ import annotations

import gzip

import numpy as np
from sklearn.metrics import accuracy_score

from mlflow_tflite import runtime


def is_class_scores(output: np.ndarray) -> bool:
    """True for a ``(N, C)`` output with C > 1: a vector of class scores per example."""
    return output.ndim == 2 and output.shape[1] > 1


def _metric_suffix(name: str) -> str:
    return "".join(c if c.isalnum() or c in "_-." else "_" for c in name)


def fidelity_metrics(
    reference: list[np.ndarray], converted: list[np.ndarray], output_names: list[str] | None = None
) -> dict[str, float]:
    """How closely the converted outputs follow the source model's.

    Args:
        reference: source model outputs, one float32 ``(N, ...)`` array per output.
        converted: dequantized .tflite outputs in the same order and shapes.
        output_names: names for per-output metrics (used when there are several outputs).

    Returns:
        ``max_abs_error`` (largest absolute difference over all outputs), ``relative_error``
        (largest relative L2 error ``||c - r|| / ||r||`` over outputs), ``cosine_similarity``
        (smallest, over outputs, mean per-example cosine similarity of the flattened outputs:
        the embedding check), and ``agreement`` (fraction of examples with the same top-1
        class) when the first output is a vector of class scores. With several outputs each
        value is also logged per output as ``<metric>_<output name>``.
    """
    per_output = []
    for r, c in zip(reference, converted):
        r2, c2 = r.reshape(len(r), -1).astype(np.float64), c.reshape(len(c), -1).astype(np.float64)
        norms = np.linalg.norm(r2, axis=1) * np.linalg.norm(c2, axis=1)
        cosine = np.where(norms > 0, (r2 * c2).sum(axis=1) / np.where(norms > 0, norms, 1.0), 1.0)
        per_output.append({
            "max_abs_error": float(np.max(np.abs(r2 - c2))) if r2.size else 0.0,
            "relative_error": float(np.linalg.norm(c2 - r2) / max(np.linalg.norm(r2), 1e-12)),
            "cosine_similarity": float(cosine.mean()) if len(cosine) else 1.0,
        })
    metrics = {
        "max_abs_error": max(m["max_abs_error"] for m in per_output),
        "relative_error": max(m["relative_error"] for m in per_output),
        "cosine_similarity": min(m["cosine_similarity"] for m in per_output),
    }
    if len(per_output) > 1:
        names = output_names or [str(i) for i in range(len(per_output))]
        for name, values in zip(names, per_output):
            metrics.update({f"{key}_{_metric_suffix(name)}": value for key, value in values.items()})
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


def inputs_in_model_order(interpreter, x: list[np.ndarray], input_names: list[str] | None) -> list[np.ndarray]:
    """The source-ordered input arrays ``x`` reordered to the converted model's input tensors."""
    inputs, _ = runtime.io_tensors(interpreter)
    return [x[i] for i in runtime.match_order(inputs, input_names or [])]


def run_in_source_order(interpreter, x: list[np.ndarray], input_names: list[str] | None,
                        output_names: list[str] | None) -> list[np.ndarray]:
    """Run the converted model on inputs given in the source's order; outputs in the source's order."""
    results = runtime.run(interpreter, inputs_in_model_order(interpreter, x, input_names))
    _, outputs = runtime.io_tensors(interpreter)
    output_order = runtime.match_order(outputs, output_names or [])
    ordered: list[np.ndarray | None] = [None] * len(results)
    for tensor_position, source_position in enumerate(output_order):
        ordered[source_position] = results[tensor_position]
    return ordered


def evaluate(
    tflite_model: bytes,
    interpreter,
    reference: list[np.ndarray],
    x_test: list[np.ndarray],
    y_test: np.ndarray | None,
    latency_runs: int = 100,
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
    task: str = "classification",
) -> dict[str, float]:
    """All run metrics of one converted model on the held-out split.

    Args:
        tflite_model: flatbuffer bytes (for the size metrics).
        interpreter: that model loaded by ``runtime.make_interpreter`` (with ``num_threads``).
        reference: source model outputs on ``x_test`` (one array per output, source order).
        x_test: one float32 ``(N, ...)`` array per model input (source order).
        y_test: ``(N,)`` int labels, or ``None`` (fidelity only: no accuracy metrics).
        latency_runs: timed single-example invocations (after 10 warm-up runs).
        input_names, output_names: the source's input/output names, to match the converted
            model's tensors by name.
        task: ``classification`` (accuracy metrics when there are labels and the first output
            is a vector of class scores) or ``fidelity`` (never accuracy metrics).

    Returns:
        ``accuracy``, ``source_accuracy``, ``accuracy_drop`` (classification with labels),
        ``agreement`` (class-score outputs), ``max_abs_error``, ``relative_error``,
        ``cosine_similarity`` (and per-output variants), ``size_bytes``, ``gzip_size_bytes``,
        ``latency_ms_p50``, ``latency_ms_p90``, ``latency_ms_mean``.
    """
    converted = run_in_source_order(interpreter, x_test, input_names, output_names)
    metrics: dict[str, float] = {}
    if task == "classification" and y_test is not None and is_class_scores(reference[0]):
        metrics.update(accuracy_metrics(reference[0], converted[0], y_test))
    metrics.update(fidelity_metrics(reference, converted, output_names))
    metrics.update(size_metrics(tflite_model))
    latency_inputs = inputs_in_model_order(interpreter, x_test, input_names)
    metrics.update(runtime.measure_latency(interpreter, latency_inputs, runs=latency_runs))
    return metrics
