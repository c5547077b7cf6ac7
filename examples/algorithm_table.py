"""Print a sweep's children as an algorithm x mode table (Markdown), read back through the MLflow client.

    mlflow-tflite sweep --backend litert --quant dynamic,int8 --sparsity 0 --algorithm min_max,octav
    python examples/algorithm_table.py                       # the newest sweep in ./mlflow.db
    python examples/algorithm_table.py --parent <run id>     # or one sweep

Columns: the mode, the algorithm, accuracy (or, without labels, the cosine similarity to the
source model's outputs, the lowest of its outputs), the drop from the source model (``accuracy_drop``,
or 1 - cosine), file size (KB = 1000 bytes) and the
lowest per-tensor SNR against the float model (dB). Failed children are listed with their error.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from mlflow import MlflowClient  # noqa: E402

from mlflow_tflite.quant_modes import Algorithm, QuantMode  # noqa: E402
from mlflow_tflite.tags import ERROR_TAG, ROLE_SWEEP, ROLE_TAG  # noqa: E402

MODE_ORDER = [mode.value for mode in QuantMode]
ALGORITHM_ORDER = [algorithm.value for algorithm in Algorithm]


def newest_sweep(client: MlflowClient) -> str:
    """The run id of the most recent sweep parent in any experiment of the tracking store."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    parents = client.search_runs(experiments, f"tags.`{ROLE_TAG}` = '{ROLE_SWEEP}'", order_by=["start_time DESC"],
                                 max_results=1)
    if not parents:
        raise SystemExit("no sweep run in this tracking store; run `mlflow-tflite sweep` first")
    return parents[0].info.run_id


def rows(client: MlflowClient, parent_id: str) -> list[list[str]]:
    """One table row per child run of ``parent_id``, in mode then algorithm order."""
    parent = client.get_run(parent_id)
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    measure = "accuracy" if any("accuracy" in c.data.metrics for c in children) else "cosine_similarity"

    def key(run):
        return (MODE_ORDER.index(run.data.params["quant"]),
                ALGORITHM_ORDER.index(run.data.params.get("algorithm", "min_max")))

    table = []
    for child in sorted(children, key=key):
        params, metrics = child.data.params, child.data.metrics
        if child.info.status != "FINISHED":
            table.append([params["quant"], params.get("algorithm", "min_max"), "failed: " + child.data.tags.get(
                ERROR_TAG, child.info.status), "", "", ""])
            continue
        value = metrics[measure]  # both are against the source model: accuracy_drop, or 1 - cosine
        drop = metrics["accuracy_drop"] if measure == "accuracy" else 1 - value
        snr = metrics.get("min_tensor_snr_db")
        table.append([params["quant"], params.get("algorithm", "min_max"), f"{value:.4f}", f"{drop:.4f}",
                      f"{metrics['size_bytes'] / 1000:.1f}", "" if snr is None else f"{snr:.1f}"])
    return [["mode", "algorithm", measure, "drop", "size (KB)", "min tensor SNR (dB)"]] + table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parent", help="run id of the sweep's parent run (default: the newest sweep)")
    args = parser.parse_args()
    client = MlflowClient()
    header, *body = rows(client, args.parent or newest_sweep(client))
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in body:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
