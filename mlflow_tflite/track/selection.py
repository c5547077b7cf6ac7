"""Choosing the best variant: the tolerance, one quality score, the objective and latency ties.

Pure ranking on metric dicts (no MLflow calls): registering and the alias guard live in
``registry.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlflow_tflite.checks import check_number, check_optional_number
from mlflow_tflite.errors import TFLiteError
from mlflow_tflite.options import number, option
from mlflow_tflite.track.rows import Row

# Latency differences smaller than this fraction of the p50 are treated as noise even when the
# measured 95% intervals do not overlap: the within-run interval cannot see drift between
# processes (benchmarks/latency_noise.py: <= 0.6% between identical reruns on a quiet 2-core
# machine, so 5% leaves room for a busier one), and a 5% gain is rarely worth a less accurate model.
LATENCY_NOISE_FLOOR = 0.05
_DROP_ADVICE = {"example": 0.01, "hint": " (an absolute fraction)"}
_RELATIVE_ERROR_ADVICE = {"example": 0.05, "hint": ", or none for no bound"}


@dataclass(frozen=True)
class Tolerance:
    """How far a variant may stray from the source model and still be chosen or promoted.

    Attributes:
        max_accuracy_drop: labelled classification: ``accuracy_drop`` (absolute fraction) at
            most this; without labels the same bound applies to ``1 - agreement`` of the
            class-score outputs.
        min_cosine_similarity: fidelity (no labels): ``cosine_similarity`` (mean per example,
            worst output) at least this, in [-1, 1].
        max_relative_error: fidelity: ``relative_error`` (relative L2) at most this, or
            ``None`` for no bound.

    Raises:
        TFLiteError: a bound outside its range or not finite.
    """

    max_accuracy_drop: float = option(
        0.01, "Tolerance: accuracy_drop (labels) or 1 - agreement (no labels), absolute fraction.",
        number(float, 0, optional=True, **_DROP_ADVICE))
    min_cosine_similarity: float = option(
        0.99, "Tolerance without labels: mean cosine similarity to the source outputs.", number(float, example=0.99))
    max_relative_error: float | None = option(
        None, "Tolerance without labels: relative L2 error to the source outputs, or none.",
        number(float, 0, low_open=True, optional=True, **_RELATIVE_ERROR_ADVICE))

    def __post_init__(self):
        # The same checks as the command line's types, for Python callers (NaN and inf are refused).
        object.__setattr__(self, "max_accuracy_drop", check_number(
            self.max_accuracy_drop, "max_accuracy_drop", float, 0, **_DROP_ADVICE))
        cosine = check_number(self.min_cosine_similarity, "min_cosine_similarity", float, example=0.99)
        if not -1.0 <= cosine <= 1.0:
            raise TFLiteError(f"min_cosine_similarity={cosine} must be in [-1, 1]; pass e.g. 0.99")
        object.__setattr__(self, "min_cosine_similarity", cosine)
        object.__setattr__(self, "max_relative_error", check_optional_number(
            self.max_relative_error, "max_relative_error", float, low=0, low_open=True, **_RELATIVE_ERROR_ADVICE))

    def __str__(self) -> str:
        """The bounds as a user types them, e.g. ``max_accuracy_drop=0.01, min_cosine_similarity=0.99``."""
        bounds = {"max_accuracy_drop": self.max_accuracy_drop, "min_cosine_similarity": self.min_cosine_similarity,
                  "max_relative_error": self.max_relative_error}
        return ", ".join(f"{name}={value:g}" for name, value in bounds.items() if value is not None)

    def violation(self, metrics: dict[str, float]) -> str | None:
        """Why ``metrics`` are outside the tolerance (one line), or ``None`` when they are within."""
        if "accuracy_drop" in metrics:
            if metrics["accuracy_drop"] > self.max_accuracy_drop + 1e-12:
                return f"accuracy_drop {metrics['accuracy_drop']:.4f} > max_accuracy_drop {self.max_accuracy_drop:g}"
            return None
        if "agreement" not in metrics and "cosine_similarity" not in metrics:
            return "not evaluated on data"
        if "agreement" in metrics and 1.0 - metrics["agreement"] > self.max_accuracy_drop + 1e-12:
            return f"1 - agreement {1.0 - metrics['agreement']:.4f} > max_accuracy_drop {self.max_accuracy_drop:g}"
        cosine = metrics.get("cosine_similarity")
        if cosine is not None and cosine < self.min_cosine_similarity - 1e-12:
            return f"cosine_similarity {cosine:.6g} < min_cosine_similarity {self.min_cosine_similarity:g}"
        relative = metrics.get("relative_error")
        if self.max_relative_error is not None and relative is not None and relative > self.max_relative_error:
            return f"relative_error {relative:.4g} > max_relative_error {self.max_relative_error:g}"
        return None


QUALITY_METRICS = ("accuracy", "agreement", "cosine_similarity")


def quality_metric(metrics: dict[str, float]) -> str | None:
    """The name of the metric :func:`quality` reads from ``metrics``, or ``None``."""
    return next((key for key in QUALITY_METRICS if key in metrics), None)


def quality(metrics: dict[str, float]) -> float | None:
    """The one quality score variants and versions are compared by (higher is better, a fraction).

    ``accuracy`` on labelled data; else top-1 ``agreement`` with the source (class-score
    outputs); else ``cosine_similarity`` with the source (fidelity); ``None`` when the variant
    was not evaluated on data.
    """
    key = quality_metric(metrics)
    return None if key is None else float(metrics[key])


def within_budgets(metrics: dict[str, float], max_size_bytes: float | None, max_latency_ms: float | None,
                   max_arena_bytes: float | None = None) -> bool:
    """True when ``size_bytes``, ``latency_ms_p50`` and ``tflm_arena_bytes`` are within the optional
    budgets (bytes, ms, bytes). Under an arena budget a variant TFLite Micro could not run (no
    ``tflm_arena_bytes``) is not within it."""
    if max_size_bytes is not None and metrics["size_bytes"] > max_size_bytes:
        return False
    if max_arena_bytes is not None and not metrics.get("tflm_arena_bytes", float("inf")) <= max_arena_bytes:
        return False
    return max_latency_ms is None or metrics["latency_ms_p50"] <= max_latency_ms


def qualifies(metrics: dict[str, float], tolerance: Tolerance, max_size_bytes: float | None = None,
              max_latency_ms: float | None = None, max_arena_bytes: float | None = None) -> bool:
    """Whether a variant meets the tolerance (:meth:`Tolerance.violation`) and the budgets (:func:`within_budgets`)."""
    return (tolerance.violation(metrics) is None
            and within_budgets(metrics, max_size_bytes, max_latency_ms, max_arena_bytes))


def latency_interval(metrics: dict[str, float]) -> tuple[float, float]:
    """The p50 latency's noise interval in ms: its 95% interval, widened to at least
    ``p50 * (1 +- LATENCY_NOISE_FLOOR / 2)``, so two p50s within the floor of each other overlap."""
    p50 = metrics["latency_ms_p50"]
    low = min(metrics.get("latency_ms_ci95_low", p50), p50 * (1 - LATENCY_NOISE_FLOOR / 2))
    high = max(metrics.get("latency_ms_ci95_high", p50), p50 * (1 + LATENCY_NOISE_FLOOR / 2))
    return low, high


def latency_tied(a: dict[str, float], b: dict[str, float]) -> bool:
    """True when two variants' p50 latencies are within the noise of each other (intervals overlap)."""
    (a_low, a_high), (b_low, b_high) = latency_interval(a), latency_interval(b)
    return a_low <= b_high and b_low <= a_high


def _exact(key):
    return key, lambda a, b: key(a) == key(b)


_LATENCY = (lambda m: m["latency_ms_p50"], latency_tied)
_QUALITY = _exact(lambda m: -(quality(m) or 0.0))
_SIZE = _exact(lambda m: m["size_bytes"])
_GZIP_SIZE = _exact(lambda m: m["gzip_size_bytes"])
# Per objective, the criteria in order; each keeps the candidates tied with the best so far.
CRITERIA = {
    "latency": (_LATENCY, _QUALITY, _SIZE),
    "size": (_SIZE, _QUALITY, _LATENCY),
    "gzip_size": (_GZIP_SIZE, _QUALITY, _SIZE, _LATENCY),
    "accuracy": (_QUALITY, _SIZE, _LATENCY),
}
# The metric each objective ranks by first; accuracy ranks by quality(), whichever metric that reads.
OBJECTIVE_METRIC = {"latency": "latency_ms_p50", "size": "size_bytes", "gzip_size": "gzip_size_bytes",
                    "accuracy": None}


def rank_best(candidates: list[Row], objective: str) -> Row:
    """The best of ``candidates`` by the objective's criteria, ties broken by the next, then name.

    Latency counts as tied when the p50 values are within noise (:func:`latency_tied`), so
    identical reruns choose the same variant; size and quality must be equal to tie.

    Args:
        candidates: non-empty list of ``rows.Row`` (``variant`` name, ``metrics``).
        objective: an ``options.Objective`` (or its string).
    """
    remaining = list(candidates)
    for key, tied in CRITERIA[objective]:
        best = min(remaining, key=lambda c: (key(c.metrics), c.variant))
        remaining = [c for c in remaining if tied(c.metrics, best.metrics)]
    return min(remaining, key=lambda c: c.variant)


def select_best(candidates: list[Row], objective: str, tolerance: Tolerance, max_size_bytes: float | None = None,
                max_latency_ms: float | None = None, max_arena_bytes: float | None = None) -> Row | None:
    """The best candidate by ``objective`` among those that qualify, or ``None``.

    Args:
        candidates: ``rows.Row`` values (``variant`` name, ``metrics`` with latency).
        objective: ``latency`` (p50 ms), ``size`` (bytes), ``gzip_size`` (bytes after gzip) or
            ``accuracy`` (:func:`quality`).
        tolerance: accuracy / fidelity bounds (:class:`Tolerance`).
        max_size_bytes, max_latency_ms, max_arena_bytes: optional budgets (:func:`within_budgets`).

    Ties (see :func:`rank_best`) go to quality, then size, then latency, then variant name.
    """
    eligible = [c for c in candidates if qualifies(c.metrics, tolerance, max_size_bytes, max_latency_ms, max_arena_bytes)]
    return rank_best(eligible, objective) if eligible else None
