"""The sweep's comparison: a table (``mlflow.log_table``) and a Pareto plot (PNG) on the parent run."""

from __future__ import annotations

import pandas as pd

import mlflow

from mlflow_tflite.track.selection import quality
from mlflow_tflite.track.rows import Row

TABLE_FILE = "comparison.json"
PLOT_FILE = "pareto.png"
TABLE_METRICS = (
    "accuracy", "accuracy_drop", "agreement", "max_abs_error", "size_bytes", "gzip_size_bytes",
    "latency_ms_p50", "latency_ms_p90", "latency_ms_ci95_low", "latency_ms_ci95_high", "sparsity_achieved",
    "convert_seconds",
)


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


def pareto_figure(rows: list[Row], best: Row | None, max_accuracy_drop: float):
    """Accuracy vs latency p50, marker area by model size, front outlined, chosen variant starred."""
    import matplotlib

    matplotlib.use("Agg")  # no display: figures go to files
    import matplotlib.pyplot as plt

    finished = _evaluated(rows)
    fig, ax = plt.subplots(figsize=(8, 5.5))
    if finished:
        sizes = [r.metrics["size_bytes"] for r in finished]
        scale = 600.0 / max(sizes)
        front = {r.variant for r in pareto_front(finished)}
        for row in finished:
            m = row.metrics
            on_front = row.variant in front
            ax.scatter(m["latency_ms_p50"], _score(m), s=max(20.0, m["size_bytes"] * scale), alpha=0.55,
                       edgecolors="black" if on_front else "none", linewidths=1.5)
            ax.annotate(row.variant, (m["latency_ms_p50"], _score(m)), fontsize=7, xytext=(4, 4),
                        textcoords="offset points")
        if best is not None:
            m = best.metrics
            ax.scatter(m["latency_ms_p50"], _score(m), marker="*", s=300, color="red", label=f"chosen: {best.variant}")
        source_accuracy = finished[0].metrics.get("source_accuracy")
        if source_accuracy is not None:
            ax.axhline(source_accuracy - max_accuracy_drop, color="grey", linestyle="--",
                       label=f"tolerance (source − {max_accuracy_drop:g})")
        ax.legend(loc="best", fontsize=8)
    metric = next((k for k in ("accuracy", "agreement", "cosine_similarity") if finished and k in finished[0].metrics),
                  "accuracy")
    ax.set_xlabel("latency p50 (ms, single example)")
    ax.set_ylabel(metric)
    ax.set_title("Variants: marker area ∝ size in bytes; outlined = Pareto front")
    fig.tight_layout()
    return fig


def log_comparison(rows: list[Row], best: Row | None, max_accuracy_drop: float) -> pd.DataFrame:
    """Log the comparison table and the Pareto plot to the active (parent) run; return the table."""
    import matplotlib.pyplot as plt

    table = comparison_table(rows, best)
    mlflow.log_table(data=table, artifact_file=TABLE_FILE)
    fig = pareto_figure(rows, best, max_accuracy_drop)
    mlflow.log_figure(fig, PLOT_FILE)
    plt.close(fig)
    return table


def tensor_error_figure(rows: list[dict], worst: int = 20):
    """Horizontal bars of the ``worst`` tensors' SNR in dB (lowest first), labelled by op and tensor."""
    import matplotlib

    matplotlib.use("Agg")  # no display: figures go to files
    import matplotlib.pyplot as plt

    shown = rows[:worst][::-1]
    fig, ax = plt.subplots(figsize=(9, 0.3 * len(shown) + 1.5))
    labels = [f"{r['op']}  {r['tensor'][:60]}" for r in shown]
    ax.barh(range(len(shown)), [r["snr_db"] for r in shown], color="tab:red", alpha=0.7)
    ax.set_yticks(range(len(shown)), labels, fontsize=7)
    ax.set_xlabel("SNR vs the float model (dB, higher is better)")
    ax.set_title(f"The {len(shown)} tensors with the most quantization error")
    fig.tight_layout()
    return fig
