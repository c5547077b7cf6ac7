"""Pure parts of choosing a variant: tolerance, quality, latency noise ties, class-score detection."""

from __future__ import annotations

import numpy as np
import pytest

from mlflow_tflite.track.rows import Row
from mlflow_tflite.errors import TFLiteError
from mlflow_tflite.measure.evaluate import class_score_outputs, fidelity_metrics, is_class_scores
from mlflow_tflite.measure.latency import _median_ci95
from mlflow_tflite.track.selection import Tolerance, latency_tied, quality, qualifies, rank_best, select_best


def test_a_variant_with_no_accuracy_or_agreement_is_held_to_the_fidelity_tolerance():
    tolerance = Tolerance()
    huge_error = {"max_abs_error": 1e6, "relative_error": 3.0, "cosine_similarity": 0.2, "size_bytes": 1,
                  "latency_ms_p50": 1.0}
    assert not qualifies(huge_error, tolerance)
    assert "cosine_similarity 0.2 < min_cosine_similarity 0.99" == tolerance.violation(huge_error)
    close = {**huge_error, "cosine_similarity": 0.995, "relative_error": 0.08}
    assert qualifies(close, tolerance)
    assert not qualifies(close, Tolerance(max_relative_error=0.05))
    assert tolerance.violation({"size_bytes": 1}) == "not evaluated on data"


def test_labelled_and_unlabelled_classifiers_use_the_accuracy_bound():
    tolerance = Tolerance(max_accuracy_drop=0.01)
    assert qualifies({"accuracy_drop": 0.01, "cosine_similarity": 0.5}, tolerance)  # labels decide
    assert not qualifies({"accuracy_drop": 0.02}, tolerance)
    assert not qualifies({"agreement": 0.98, "cosine_similarity": 0.999}, tolerance)
    assert qualifies({"agreement": 0.995, "cosine_similarity": 0.999}, tolerance)


@pytest.mark.parametrize("kwargs, message", [
    ({"max_accuracy_drop": -0.1}, "max_accuracy_drop=-0.1 must be >= 0"),
    ({"min_cosine_similarity": 1.5}, "min_cosine_similarity=1.5 must be in [-1, 1]"),
    ({"max_relative_error": 0.0}, "max_relative_error=0.0 must be > 0"),
])
def test_bad_tolerances_are_one_line_errors(kwargs, message):
    with pytest.raises(TFLiteError) as error:
        Tolerance(**kwargs)
    assert message in error.value.message and "\n" not in error.value.message


def test_quality_prefers_accuracy_then_agreement_then_cosine():
    assert quality({"accuracy": 0.9, "agreement": 0.99, "cosine_similarity": 0.5}) == 0.9
    assert quality({"agreement": 0.97, "cosine_similarity": 0.5}) == 0.97
    assert quality({"cosine_similarity": 0.5}) == 0.5
    assert quality({"size_bytes": 3}) is None


def _candidate(name, p50, low=None, high=None, accuracy=0.9, size=100):
    metrics = {"latency_ms_p50": p50, "accuracy": accuracy, "accuracy_drop": 0.0, "size_bytes": size}
    if low is not None:
        metrics.update(latency_ms_ci95_low=low, latency_ms_ci95_high=high)
    return Row(name, metrics=metrics)


def test_latency_within_noise_is_a_tie_broken_by_accuracy_then_size():
    # 1.00 vs 1.03 ms: 3% apart, inside the 5% floor: a tie; the more accurate one wins.
    fast, close = _candidate("a-fast", 1.00, accuracy=0.90), _candidate("b-close", 1.03, accuracy=0.92)
    assert latency_tied(fast.metrics, close.metrics)
    assert rank_best([fast, close], "latency").variant == "b-close"
    # 1.00 vs 1.30 ms with tight intervals: a real difference; the faster one wins.
    nine_percent = _candidate("f", 1.09, 1.08, 1.10, accuracy=0.99)  # 9% slower is a real difference
    assert not latency_tied(fast.metrics, nine_percent.metrics)
    slow = _candidate("c-slow", 1.30, 1.28, 1.32, accuracy=0.95)
    assert not latency_tied(fast.metrics, slow.metrics)
    assert rank_best([fast, slow], "latency").variant == "a-fast"
    # Wide measured intervals that overlap are a tie even 20% apart; then the smaller model wins.
    noisy_a = _candidate("d", 1.0, 0.8, 1.3, size=200)
    noisy_b = _candidate("e", 1.2, 1.1, 1.5, size=100)
    assert rank_best([noisy_a, noisy_b], "latency").variant == "e"


def test_ties_on_every_criterion_go_to_the_name():
    a, b = _candidate("int8-s0.5-8px", 1.0), _candidate("int8-s0-8px", 1.01)
    for objective in ("latency", "size", "accuracy"):
        assert rank_best([a, b], objective).variant == "int8-s0-8px"


def test_size_objective_uses_latency_only_after_size_and_accuracy():
    small_slow = _candidate("small", 5.0, 4.9, 5.1, size=50)
    big_fast = _candidate("big", 1.0, 0.9, 1.1, size=60)
    assert select_best([small_slow, big_fast], "size", Tolerance()).variant == "small"
    same_size_fast = _candidate("z-fast", 1.0, 0.9, 1.1, size=50)
    assert select_best([small_slow, same_size_fast], "size", Tolerance()).variant == "z-fast"


def test_softmax_rows_are_class_scores_boxes_embeddings_and_logits_are_not():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 10)).astype(np.float32)
    softmax = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    boxes = rng.uniform(0, 1, size=(50, 4)).astype(np.float32)  # in [0, 1] but rows do not sum to 1
    embeddings = rng.normal(size=(50, 128)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    assert is_class_scores(softmax)
    assert not any(is_class_scores(x) for x in (boxes, embeddings, logits, softmax[:, :1]))
    assert class_score_outputs([boxes, embeddings, softmax], None, "auto") == (2,)
    assert class_score_outputs([embeddings], rng.integers(0, 10, 50), "auto") == ()  # top-1 is not a class
    labels = logits.argmax(1)
    assert class_score_outputs([logits], labels, "auto") == (0,)  # a logits classifier, known from its labels
    assert class_score_outputs([logits], None, "classification") == (0,)


def test_agreement_only_for_class_score_outputs():
    rng = np.random.default_rng(1)
    boxes = rng.normal(size=(100, 4)).astype(np.float32)
    assert "agreement" not in fidelity_metrics([boxes], [boxes + 0.01])
    probs = np.full((100, 3), 0.1, np.float32)
    probs[np.arange(100), rng.integers(0, 3, 100)] = 0.8
    flipped = probs[:, ::-1].copy()
    metrics = fidelity_metrics([boxes, probs], [boxes, flipped], ["box", "classes"], class_outputs=(1,))
    expected = np.mean(probs.argmax(1) == flipped.argmax(1))
    assert metrics["agreement"] == metrics["agreement_classes"] == pytest.approx(expected)
    assert "agreement_box" not in metrics


def test_median_interval_matches_the_binomial_table():
    # Order statistics of a 95% interval of the median (Conover, table A3): n=10 -> (2, 9), n=20 -> (6, 15).
    assert _median_ci95(np.arange(1.0, 11.0)) == (2.0, 9.0)
    assert _median_ci95(np.arange(20.0, 0.0, -1.0)) == (6.0, 15.0)
    assert _median_ci95(np.array([3.0, 1.0, 2.0])) == (1.0, 3.0)  # too few rounds: the full range


def test_a_tolerance_reads_as_the_user_types_it():
    assert str(Tolerance()) == "max_accuracy_drop=0.01, min_cosine_similarity=0.99"
    assert str(Tolerance(max_accuracy_drop=0.005, max_relative_error=0.05)) == (
        "max_accuracy_drop=0.005, min_cosine_similarity=0.99, max_relative_error=0.05")
