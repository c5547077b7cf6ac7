"""The tests' view of a tracking store: runs of every experiment (the project names its own)."""

from __future__ import annotations

from mlflow import MlflowClient
from mlflow.entities import ViewType


def search_runs(filter_string: str = "", client: MlflowClient | None = None) -> list:
    """Runs of all experiments of the current tracking store that match ``filter_string``, newest first."""
    client = client or MlflowClient()
    experiment_ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    return client.search_runs(experiment_ids, filter_string, max_results=1000)


def load_table(run_id: str, artifact_file: str):
    """A table logged with ``mlflow.log_table`` as a DataFrame, whatever experiment its run is in
    (``mlflow.load_table`` searches the current experiment only)."""
    import mlflow
    import pandas as pd

    table = mlflow.artifacts.load_dict(f"runs:/{run_id}/{artifact_file}")
    return pd.DataFrame(table["data"], columns=table["columns"])
