"""Metrics of a converted model against its source: accuracy, fidelity, size and latency."""

from __future__ import annotations

import gzip

import numpy as np
from sklearn.metrics import accuracy_score

from mlflow_tflite.flavor import runtime


def is_class_scores(output: np.ndarray, atol: float = 1e-3) -> bool:
    """True for a ``(N, C)`` output, C > 1, whose rows are probability vectors (softmax-like).

    Every value is in [0, 1] and every row sums to 1 within ``atol``. Box regressions,
    landmarks, embeddings and logits are not recognised here: a classifier with logits is
    recognised by :func:`class_score_outputs` only with labels or ``task=classification``.
    """
    if output.ndim != 2 or output.shape[1] < 2 or not len(output):
        return False
    return bool(np.all(output >= -atol) and np.all(output <= 1 + atol)
                and np.allclose(output.sum(axis=1), 1.0, atol=atol))


# A logits classifier is recognised from labels when the source is right this often (top-1).
LOGITS_MIN_ACCURACY = 0.5


def class_score_outputs(reference: list[np.ndarray], labels: np.ndarray | None, task: str) -> tuple[int, ...]:
    """Positions of the outputs that are vectors of class scores (their top-1 is a class).

    Args:
        reference: source model outputs, one float32 ``(N, ...)`` array per output.
        labels: ``(N,)`` int labels of the same examples, or ``None``.
        task: ``classification`` (output 0 is class scores, probabilities or logits),
            ``fidelity`` or ``auto`` (softmax-like outputs only; output 0 also when it is a
            ``(N, C)`` output whose top-1 matches ``labels`` at least :data:`LOGITS_MIN_ACCURACY`
            of the time, i.e. a logits classifier).

    Returns:
        Output positions in ascending order; empty when no output holds class scores.
    """
    positions = [i for i, output in enumerate(reference) if is_class_scores(output)]
    first = reference[0]
    if first.ndim == 2 and first.shape[1] > 1 and 0 not in positions:
        labelled_logits = (labels is not None and task == "auto" and labels.max(initial=0) < first.shape[1]
                           and np.mean(first.argmax(1) == labels) >= LOGITS_MIN_ACCURACY)
        if task == "classification" or labelled_logits:
            positions.insert(0, 0)
    return tuple(positions)


def _metric_suffix(name: str) -> str:
    return "".join(c if c.isalnum() or c in "_-." else "_" for c in name)


def fidelity_metrics(
    reference: list[np.ndarray], converted: list[np.ndarray], output_names: list[str] | None = None,
    class_outputs: tuple[int, ...] = (),
) -> dict[str, float]:
    """How closely the converted outputs follow the source model's.

    Args:
        reference: source model outputs, one float32 ``(N, ...)`` array per output.
        converted: dequantized .tflite outputs in the same order and shapes.
        output_names: names for per-output metrics (used when there are several outputs).
        class_outputs: positions of the outputs that hold class scores (see
            :func:`class_score_outputs`); only these get a top-1 ``agreement``.

    Returns:
        ``max_abs_error`` (largest absolute difference over all outputs), ``relative_error``
        (largest relative L2 error ``||c - r|| / ||r||`` over outputs), ``cosine_similarity``
        (smallest, over outputs, mean per-example cosine similarity of the flattened outputs:
        the embedding check), and ``agreement`` (smallest, over ``class_outputs``, fraction of
        examples with the same top-1 class) when there are class-score outputs. With several
        outputs each value is also logged per output as ``<metric>_<output name>``.
    """
    per_output = []
    for position, (r, c) in enumerate(zip(reference, converted)):
        r2, c2 = r.reshape(len(r), -1).astype(np.float64), c.reshape(len(c), -1).astype(np.float64)
        norms = np.linalg.norm(r2, axis=1) * np.linalg.norm(c2, axis=1)
        cosine = np.where(norms > 0, (r2 * c2).sum(axis=1) / np.where(norms > 0, norms, 1.0), 1.0)
        per_output.append({
            "max_abs_error": float(np.max(np.abs(r2 - c2))) if r2.size else 0.0,
            "relative_error": float(np.linalg.norm(c2 - r2) / max(np.linalg.norm(r2), 1e-12)),
            "cosine_similarity": float(cosine.mean()) if len(cosine) else 1.0,
        })
        if position in class_outputs:
            per_output[-1]["agreement"] = float(np.mean(r.argmax(1) == c.argmax(1)))
    metrics = {
        "max_abs_error": max(m["max_abs_error"] for m in per_output),
        "relative_error": max(m["relative_error"] for m in per_output),
        "cosine_similarity": min(m["cosine_similarity"] for m in per_output),
    }
    if class_outputs:
        metrics["agreement"] = min(per_output[i]["agreement"] for i in class_outputs)
    if len(per_output) > 1:
        names = output_names or [str(i) for i in range(len(per_output))]
        for name, values in zip(names, per_output):
            metrics.update({f"{key}_{_metric_suffix(name)}": value for key, value in values.items()})
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
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
    class_outputs: tuple[int, ...] = (),
    task: str = "classification",
) -> dict[str, float]:
    """Accuracy, fidelity and size metrics of one converted model on the held-out split.

    Latency is timed separately, in a quiet phase (``latency.measure_latencies``).

    Args:
        tflite_model: flatbuffer bytes (for the size metrics).
        interpreter: that model loaded by ``runtime.make_interpreter``.
        reference: source model outputs on ``x_test`` (one array per output, source order).
        x_test: one float32 ``(N, ...)`` array per model input (source order).
        y_test: ``(N,)`` int labels, or ``None`` (fidelity only: no accuracy metrics).
        input_names, output_names: the source's input/output names, to match the converted
            model's tensors by name.
        class_outputs: positions of the class-score outputs (:func:`class_score_outputs`).
        task: ``classification`` (accuracy metrics on output 0 when there are labels) or
            ``fidelity`` (never accuracy metrics).

    Returns:
        ``accuracy``, ``source_accuracy``, ``accuracy_drop`` (classification with labels),
        ``agreement`` (class-score outputs), ``max_abs_error``, ``relative_error``,
        ``cosine_similarity`` (and per-output variants), ``size_bytes``, ``gzip_size_bytes``.
    """
    converted = run_in_source_order(interpreter, x_test, input_names, output_names)
    metrics: dict[str, float] = {}
    if task == "classification" and y_test is not None and 0 in class_outputs:
        metrics.update(accuracy_metrics(reference[0], converted[0], y_test))
    metrics.update(fidelity_metrics(reference, converted, output_names, class_outputs))
    metrics.update(size_metrics(tflite_model))
    return metrics
