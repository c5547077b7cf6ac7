"""The sweep's comparison: a table (``mlflow.log_table``) and a Pareto plot (PNG) on the parent run."""

from __future__ import annotations

import logging
import math

import pandas as pd

import mlflow

from mlflow_tflite.track.figures import ParetoChart, ParetoPoint, pareto_plot
from mlflow_tflite.track.rows import Row
from mlflow_tflite.track.selection import Tolerance, quality

logger = logging.getLogger(__name__)

TABLE_FILE = "comparison.json"
PLOT_FILE = "pareto.png"
TABLE_METRICS = (
    "accuracy", "accuracy_drop", "agreement", "max_abs_error", "size_bytes", "gzip_size_bytes",
    "latency_ms_p50", "latency_ms_p90", "latency_ms_ci95_low", "latency_ms_ci95_high", "sparsity_achieved",
    "convert_seconds", "tflm_arena_bytes",
)
QUALITY_METRICS = ("accuracy", "agreement", "cosine_similarity")  # the order of ``selection.quality``
QUALITY_LABELS = {
    "accuracy": "accuracy on the evaluation data (%)",
    "agreement": "top-1 agreement with the source model (%)",
    "cosine_similarity": "cosine similarity to the source outputs (1 = identical)",
}


def comparison_table(rows: list[Row], best: Row | None) -> pd.DataFrame:
    """One row per variant: name, run id, status, the main metrics, Pareto membership, chosen flag."""
    front = {r.variant for r in pareto_front(_evaluated(rows))}
    records = []
    for row in rows:
        record = {"variant": row.variant, "run_id": row.run_id, "status": row.status}
        record.update({key: row.metrics.get(key) for key in TABLE_METRICS})
        record["pareto"] = row.variant in front
        record["chosen"] = best is not None and row.variant == best.variant
        record["error"] = row.error
        records.append(record)
    return pd.DataFrame.from_records(records)


def _evaluated(rows: list[Row]) -> list[Row]:
    """FINISHED variants that were run here (a Flex-op model has no latency or accuracy)."""
    return [r for r in rows if r.status == "FINISHED" and "latency_ms_p50" in r.metrics]


def _score(metrics: dict) -> float:
    return quality(metrics) or 0.0


def pareto_front(rows: list[Row]) -> list[Row]:
    """Variants no other variant beats on all of accuracy (higher), latency p50 and size (lower)."""

    def dominates(a: Row, b: Row) -> bool:
        ka = (-_score(a.metrics), a.metrics["latency_ms_p50"], a.metrics["size_bytes"])
        kb = (-_score(b.metrics), b.metrics["latency_ms_p50"], b.metrics["size_bytes"])
        return all(x <= y for x, y in zip(ka, kb)) and ka != kb

    return [r for r in rows if not any(dominates(o, r) for o in rows if o is not r)]


def pareto_chart(rows: list[Row], best: Row | None, tolerance: Tolerance) -> ParetoChart:
    """What the Pareto plot shows for ``rows``: the timed, evaluated variants and the tolerance bound.

    Quality is plotted in percent for ``accuracy`` (bound: the source's accuracy less
    ``max_accuracy_drop``) and ``agreement`` (bound: ``1 - max_accuracy_drop``), as is for
    ``cosine_similarity`` (bound: ``min_cosine_similarity``). Variants with a non-finite value
    are left out (and logged).
    """
    finished = _evaluated(rows)
    metric = next((k for k in QUALITY_METRICS if finished and k in finished[0].metrics), "accuracy")
    scale = 1.0 if metric == "cosine_similarity" else 100.0
    plotted = [r for r in finished if _finite(r.metrics, ("latency_ms_p50", "size_bytes", metric))]
    if len(plotted) < len(finished):
        logger.warning("Pareto plot: left out %s (a non-finite metric)",
                       ", ".join(r.variant for r in finished if r not in plotted))
    front = {r.variant for r in pareto_front(plotted)}
    points = tuple(ParetoPoint(r.variant, r.metrics["latency_ms_p50"], scale * r.metrics[metric],
                               r.metrics["size_bytes"], r.variant in front) for r in plotted)
    bound, bound_label = _tolerance_line(metric, plotted, tolerance)
    return ParetoChart(points, QUALITY_LABELS[metric], best.variant if best is not None else None,
                       None if bound is None else scale * bound, bound_label)


def _finite(metrics: dict, keys: tuple[str, ...]) -> bool:
    return all(key in metrics and math.isfinite(metrics[key]) for key in keys)


def _tolerance_line(metric: str, rows: list[Row], tolerance: Tolerance) -> tuple[float | None, str]:
    """The quality bound of ``tolerance`` as a fraction (cosine as is), and its legend entry."""
    drop = tolerance.max_accuracy_drop
    if metric == "agreement":
        return 1.0 - drop, f"tolerance: agreement ≥ {100 * (1.0 - drop):g} %"
    if metric == "cosine_similarity":
        return tolerance.min_cosine_similarity, f"tolerance: cosine ≥ {tolerance.min_cosine_similarity:g}"
    source = next((r.metrics["source_accuracy"] for r in rows if math.isfinite(r.metrics.get("source_accuracy", math.nan))),
                  None)
    if source is None:
        return None, ""
    return source - drop, f"tolerance: source accuracy − {100 * drop:g} pt ({100 * (source - drop):.4g} %)"


def pareto_figure(rows: list[Row], best: Row | None, tolerance: Tolerance):
    """The Pareto plot of ``rows`` (:func:`pareto_chart`, drawn by ``figures.pareto_plot``).

    Returns:
        ``matplotlib.figure.Figure`` on its own Agg canvas (not registered with pyplot).
    """
    return pareto_plot(pareto_chart(rows, best, tolerance))


def log_comparison(rows: list[Row], best: Row | None, tolerance: Tolerance) -> pd.DataFrame:
    """Log the comparison table and the Pareto plot to the active (parent) run; return the table.

    Args:
        rows: every variant of the sweep.
        best: the chosen variant, or ``None``.
        tolerance: the sweep's tolerance (its bound is drawn on the plot).
    """
    table = comparison_table(rows, best)
    mlflow.log_table(data=table, artifact_file=TABLE_FILE)
    mlflow.log_figure(pareto_figure(rows, best, tolerance), PLOT_FILE)
    return table
