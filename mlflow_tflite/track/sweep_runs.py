"""A sweep's runs in MLflow: its configuration record, its current child per variant, resume.

A sweep parent records its configuration (``sweep_config.json`` and its digest as a tag) so a
resumed sweep can refuse different settings. Each variant has one current child run: when a
FAILED or KILLED variant is run again, the old child is tagged ``mlflow_tflite.superseded_by``
and deleted (soft: ``mlflow runs restore`` brings it back).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.models import Model

from mlflow_tflite.track import runs
from mlflow_tflite.errors import TFLiteError, first_line
from mlflow_tflite.flavor import FLAVOR_NAME
from mlflow_tflite.track.rows import Row
from mlflow_tflite.cache import cache_dir
from mlflow_tflite.tags import (
    CONFIG_DIGEST_TAG, CONTINUED_IN_TAG, ERROR_TAG, MODEL_URI_TAG, NOT_EVALUATED_TAG, RESUMED_FROM_TAG, ROLE_SWEEP,
    ROLE_TAG, SIZE_WARNING_TAG, SUPERSEDED_TAG, TOLERANCE_MET_TAG, VARIANT_TAG,
)

CONFIG_FILE = "sweep_config.json"


def config_digest(config: dict) -> str:
    """sha256 (first 16 hex digits) of a configuration dict, in canonical JSON."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def record_or_check_config(parent_run_id: str, config: dict, resumed: bool) -> None:
    """Record the sweep's configuration on its parent run, or check it against the recorded one.

    Args:
        parent_run_id: the sweep's parent run (active).
        config: JSON-able dict of everything that changes the results (variants, calibration,
            source and data options, selection policy, threads).
        resumed: the parent run came from ``resume``: compare instead of record.

    Raises:
        TFLiteError: on resume, a setting differs from the recorded one (the message names
            each differing key with both values).
    """
    recorded = MlflowClient().get_run(parent_run_id).data.tags.get(CONFIG_DIGEST_TAG)
    if not resumed or recorded is None:
        mlflow.log_dict(config, CONFIG_FILE)
        mlflow.set_tag(CONFIG_DIGEST_TAG, config_digest(config))
        return
    check_config(parent_run_id, config)


def check_config(parent_run_id: str, config: dict) -> None:
    """Check a sweep's configuration against the one recorded on ``parent_run_id`` (see above).

    Raises:
        TFLiteError: a setting differs (the message names each differing key with both values).
    """
    recorded = MlflowClient().get_run(parent_run_id).data.tags.get(CONFIG_DIGEST_TAG)
    if recorded is None or recorded == config_digest(config):
        return
    before = mlflow.artifacts.load_dict(f"runs:/{parent_run_id}/{CONFIG_FILE}")
    now = json.loads(json.dumps(config, default=str))
    changed = [f"{key}: {before.get(key)!r} -> {now.get(key)!r}" for key in sorted(set(before) | set(now))
               if before.get(key) != now.get(key)]
    raise TFLiteError(
        f"resume {parent_run_id} was started with other settings ({'; '.join(changed)}); "
        "resume with the same settings, or start a new sweep"
    )


def check_sweep_parent(run_id: str) -> None:
    """Refuse to resume a run that is not a sweep's parent (a variant run, another job's run).

    Raises:
        TFLiteError: no such run, or its ``mlflow_tflite.role`` tag is not ``sweep``.
        MlflowException: the tracking store failed (not an input error).
    """
    try:
        role = MlflowClient().get_run(run_id).data.tags.get(ROLE_TAG)
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise TFLiteError(f"resume {run_id!r} is not a run in this tracking store; pass a sweep's parent run id") from None
    if role != ROLE_SWEEP:
        raise TFLiteError(f"run {run_id} is not a sweep parent (role {role!r}); pass the parent run id of a sweep")


@dataclass
class SweepProgress:
    """What a sweep has done so far, kept outside MLflow to be saved if the tracking store fails.

    Attributes:
        parent_run_id: the parent run, once opened.
        results: variant name -> ``{"status": "converted" | "FAILED", "metrics" | "error", "logged_run_id"}``.
        finished_runs: variant name -> the FINISHED child run of an earlier session (resume).
    """

    parent_run_id: str | None = None
    results: dict[str, dict] = field(default_factory=dict)
    finished_runs: dict[str, object] = field(default_factory=dict)

    def converted(self, variant: str, metrics: dict | None, error: str | None) -> None:
        """Record a variant's result as it arrives from a worker, before it is logged."""
        self.results[variant] = {"status": "converted", "metrics": dict(metrics)} if error is None \
            else {"status": "FAILED", "error": error}

    def logged(self, variant: str, run_id: str | None) -> None:
        """Record the child run a variant was logged to."""
        self.results[variant]["logged_run_id"] = run_id


def tracking_lost(error: Exception, progress: SweepProgress) -> str:
    """Save a sweep's local results when the tracking store stops answering; the one-line message.

    Args:
        error: the MLflow error that stopped the sweep.
        progress: what the sweep had done (:class:`SweepProgress`).

    Returns:
        One line: what failed, how many variants were converted, the JSON file they were saved
        to (``sweeps/mlflow-tflite-sweep-<parent run id>.json`` in the cache directory,
        ``cache.cache_dir``) and how to resume.
    """
    reason = first_line(error, 200)
    uri = mlflow.get_tracking_uri()
    if progress.parent_run_id is None:
        return f"MLflow tracking store {uri} failed before the sweep started ({reason})"
    path = cache_dir() / "sweeps" / f"mlflow-tflite-sweep-{progress.parent_run_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"parent_run_id": progress.parent_run_id, "tracking_uri": uri, "error": reason,
                                "variants": progress.results}, indent=2, default=str))
    logged = sum(1 for r in progress.results.values() if r.get("logged_run_id"))
    return (f"MLflow tracking store {uri} stopped answering ({reason}); {len(progress.results)} "
            f"variant(s) finished here, {logged} logged: results saved to {path}; once the server is back, "
            f"continue with --resume {progress.parent_run_id}")


def continue_in(old_parent_id: str, new_parent_id: str) -> None:
    """Make ``new_parent_id`` the sweep that ``old_parent_id`` was: its children and its settings.

    ``mlflow run . -e sweep -P resume=<id>`` creates a run of its own before the sweep starts;
    that run continues the sweep (the MLflow UI shows one parent with every variant), and the old
    parent keeps only a link. Every child's ``mlflow.parentRunId`` tag is moved, the recorded
    configuration is copied, the old parent is tagged ``mlflow_tflite.continued_in`` (ended
    KILLED if it was left RUNNING) and the new one ``mlflow_tflite.resumed_from``.
    """
    client = MlflowClient()
    old = client.get_run(old_parent_id)
    if CONFIG_DIGEST_TAG in old.data.tags:
        client.log_dict(new_parent_id, mlflow.artifacts.load_dict(f"runs:/{old_parent_id}/{CONFIG_FILE}"), CONFIG_FILE)
        client.set_tag(new_parent_id, CONFIG_DIGEST_TAG, old.data.tags[CONFIG_DIGEST_TAG])
    for run in children(old_parent_id):
        client.set_tag(run.info.run_id, "mlflow.parentRunId", new_parent_id)
    client.set_tag(new_parent_id, RESUMED_FROM_TAG, old_parent_id)
    client.set_tag(old_parent_id, CONTINUED_IN_TAG, new_parent_id)
    if old.info.status == "RUNNING":
        client.set_terminated(old_parent_id, "KILLED")


def children(parent_run_id: str) -> list:
    """Active (not deleted) child runs of a parent run, oldest first."""
    client = MlflowClient()
    return client.search_runs(
        [client.get_run(parent_run_id).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
        max_results=10000,
        order_by=["attributes.start_time ASC"],
    )


@dataclass
class CurrentChildren:
    """A sweep's child runs by variant name: FINISHED ones (kept) and the rest (to run again)."""

    finished: dict[str, object]
    stale: dict[str, list]


def current_children(parent_run_id: str) -> CurrentChildren:
    """The sweep's children; RUNNING ones (a killed sweep) are ended KILLED and count as stale."""
    client = MlflowClient()
    finished: dict[str, object] = {}
    stale: dict[str, list] = {}
    for run in children(parent_run_id):
        name = run.data.tags.get(VARIANT_TAG)
        if name is None:
            continue
        if run.info.status == "FINISHED" and name not in finished:
            finished[name] = run
            continue
        if run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, "KILLED")
        stale.setdefault(name, []).append(run)
    return CurrentChildren(finished, stale)


def supersede(old_runs: list, new_run_id: str) -> None:
    """Tag earlier FAILED/KILLED children of a variant with their replacement and delete them (soft)."""
    client = MlflowClient()
    for run in old_runs:
        client.set_tag(run.info.run_id, SUPERSEDED_TAG, new_run_id)
        client.delete_run(run.info.run_id)


def logged_model_and_example(run) -> tuple[bytes, object]:
    """The ``model.tflite`` bytes and input example a variant run logged (for timing it again)."""
    model_uri = run.data.tags.get(MODEL_URI_TAG) or f"runs:/{run.info.run_id}/{runs.MODEL_NAME}"
    with tempfile.TemporaryDirectory() as folder:
        local = mlflow.artifacts.download_artifacts(model_uri, dst_path=folder)
        model = Model.load(local)
        tflite_model = Path(local, model.flavors[FLAVOR_NAME]["model_file"]).read_bytes()
        return tflite_model, model.load_input_example(local)


def log_metrics_to(run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    """Add metrics at ``step`` to a (possibly ended) run in one call."""
    now = int(time.time() * 1000)
    MlflowClient().log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])


def row_of_run(run) -> Row:
    """The row of a child run logged by an earlier session of this sweep (resume)."""
    return Row(
        variant=run.data.tags[VARIANT_TAG],
        run_id=run.info.run_id,
        status=run.info.status,
        metrics=dict(run.data.metrics),
        model_uri=run.data.tags.get(MODEL_URI_TAG),
        error=run.data.tags.get(ERROR_TAG, ""),
        eval_digest=runs.evaluation_digest(run),
        evaluated=NOT_EVALUATED_TAG not in run.data.tags,
        tolerance_met=run.data.tags.get(TOLERANCE_MET_TAG, "true") == "true",
        final_step=int(run.data.params.get("mixed_trials", -1)) + 1,
        size_warning=run.data.tags.get(SIZE_WARNING_TAG),
    )
