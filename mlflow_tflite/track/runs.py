"""One variant -> one MLflow run: params, tags, metrics, dataset inputs and the ``tflite`` model."""

from __future__ import annotations

import contextlib
import os
import warnings

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException

from mlflow_tflite import tags
from mlflow_tflite import flavor
from mlflow_tflite.build.data import DIGITS_SOURCE, Dataset
from mlflow_tflite.errors import TFLiteError, first_line
from mlflow_tflite.tags import (ERROR_TAG, EXPERIMENT_KIND_TAG, ROLE_TAG, ROLE_VARIANT, TRAINING_EXPERIMENT_KIND,
                                VARIANT_TAG)
from mlflow_tflite.track.figures import tensor_error_figure
from mlflow_tflite.track.node_data import TENSOR_SNR_ARTIFACT, tensor_snr_node_data
from mlflow_tflite.variants import Variant

MODEL_NAME = "model"
EXPERIMENT_PREFIX = "mlflow-tflite/"
# How a user chooses the experiment; set, they win over the project's default.
_CHOSEN_EXPERIMENT_ENV = ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID")


def project_experiment(registered_model_name: str) -> str | None:
    """The experiment a run the project creates goes to, unless the user chose one.

    The user's choice is ``MLFLOW_EXPERIMENT_NAME`` / ``MLFLOW_EXPERIMENT_ID``, a run started by
    ``mlflow run`` (``MLFLOW_RUN_ID``, which lives in the experiment ``--experiment-name`` gave) or
    an active run; otherwise runs go to ``mlflow-tflite/<registered model name>``, created on
    first use (by another process at the same time too).

    Args:
        registered_model_name: the name the variants are registered under, e.g. ``digits-cnn``.

    Returns:
        The experiment id to start runs in, or ``None`` to leave the choice to MLflow.

    Raises:
        TFLiteError: the experiment exists but is deleted (the message says how to restore it).
    """
    if mlflow.active_run() is not None or any(os.environ.get(key) for key in _CHOSEN_EXPERIMENT_ENV):
        return None
    name = EXPERIMENT_PREFIX + registered_model_name
    client = MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: TRAINING_EXPERIMENT_KIND})
        except MlflowException:  # created by another process in between
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        raise TFLiteError(f"the experiment {name!r} is deleted; restore it (mlflow experiments restore "
                          f"--experiment-id {experiment.experiment_id}) or set MLFLOW_EXPERIMENT_NAME to another")
    return experiment.experiment_id


def mark_training_experiment(experiment_id: str) -> None:
    """Give the experiment the kind ``custom_model_development`` if it has no kind yet.

    MLflow 3's UI opens an experiment without a kind on its GenAI overview, where no runs show.
    """
    client = MlflowClient()
    if EXPERIMENT_KIND_TAG not in client.get_experiment(experiment_id).tags:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, TRAINING_EXPERIMENT_KIND)


def variant_params(variant: Variant, source_uri: str, num_threads: int) -> dict[str, object]:
    """Run params of a variant (DESIGN.md contract names, plus ``io_type`` and ``num_threads``)."""
    return {
        "quant": variant.quant,
        "sparsity": variant.sparsity,
        "input_size": variant.input_size,
        "calibration_samples": variant.calibration_samples,
        "ops": variant.ops,
        "source": source_uri,
        "io_type": variant.io_type,
        "backend": variant.backend,
        "algorithm": variant.algorithm,
        "num_threads": num_threads,
    }


def log_source(source_uri: str, variant: Variant, num_threads: int, task: str = "classification",
               lineage: dict[str, str] | None = None, preprocessing=None,
               source_params: dict[str, str] | None = None) -> None:
    """Params of a variant run (contract names, ``task``, preprocessing) and lineage tags.

    ``lineage`` (``Source.lineage``: tag name -> value) links a model converted from an MLflow
    model to it: tags ``tags.SOURCE_MODEL_URI_TAG`` / ``tags.SOURCE_RUN_ID_TAG``
    (``mlflow_tflite.source_model_uri`` / ``mlflow_tflite.source_run_id``). ``source_params``
    are the source options that differ from their defaults (``Context.source_params``).
    """
    params = {**variant_params(variant, source_uri, num_threads), "task": task, **(source_params or {})}
    if preprocessing is not None:
        params.update(preprocessing.as_params())
    log_params_once(params)
    if lineage:
        mlflow.set_tags(lineage)


def log_params_once(params: dict[str, object]) -> None:
    """Log params the active run does not have yet.

    Under ``mlflow run`` the entry point's parameters are already logged as the user typed them
    (``sparsity=0``, ``input_size=native``); MLflow forbids changing a param, so those stay and
    the resolved values show in the variant tag (``int8-s0-8px``).
    """
    logged = mlflow.get_run(mlflow.active_run().info.run_id).data.params
    missing = {key: value for key, value in params.items() if key not in logged}
    if missing:
        mlflow.log_params(missing)


def _mlflow_dataset(features, targets: np.ndarray | None, dataset: Dataset, split: str):
    """An ``mlflow.data`` NumPy dataset; several inputs become a dict of arrays ``input_0``, ..."""
    if isinstance(features, (list, tuple)):
        features = features[0] if len(features) == 1 else {f"input_{i}": x for i, x in enumerate(features)}
    if dataset.source == DIGITS_SOURCE:
        from mlflow.data.code_dataset_source import CodeDatasetSource

        source = CodeDatasetSource(tags={"loader": DIGITS_SOURCE})
    else:
        source = dataset.source
    with warnings.catch_warnings():
        # A local path matches MLflow's two local artifact sources (schemes "" and "file"), which are
        # the same class; MLflow warns about the choice it then makes correctly.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
        return mlflow.data.from_numpy(features, targets=targets, source=source, name=f"{dataset.name}-{split}")


def log_dataset_inputs(dataset: Dataset, calibration) -> str:
    """Record the evaluation (and calibration) data as run inputs; return the evaluation digest."""
    evaluation = _mlflow_dataset(dataset.x_test, dataset.y_test, dataset, "test")
    mlflow.log_input(evaluation, context="evaluation")
    if calibration is not None:
        mlflow.log_input(_mlflow_dataset(calibration, None, dataset, "calibration"), context="calibration")
    return evaluation.digest


def evaluation_digest(run) -> str | None:
    """Digest of the data set a run logged as its ``evaluation`` input, or ``None``."""
    for dataset_input in run.inputs.dataset_inputs:
        if any(tag.value == "evaluation" for tag in dataset_input.tags):
            return dataset_input.dataset.digest
    return None


@contextlib.contextmanager
def tracked_run(**start_run_args):
    """``mlflow.start_run(**start_run_args)`` that records how it ended.

    An exception inside the block tags the run with the one-line error message
    (``mlflow_tflite.error``), ends it FAILED (KILLED for Ctrl-C) and propagates.

    Yields:
        The active ``mlflow.ActiveRun``.
    """
    with mlflow.start_run(**start_run_args) as run:
        try:
            if not start_run_args.get("nested"):
                mark_training_experiment(run.info.experiment_id)
            yield run
        except BaseException as error:
            end_with_error(error)
            raise


@contextlib.contextmanager
def variant_run(variant: Variant, nested: bool = False, experiment_id: str | None = None):
    """Start (or resume, under ``mlflow run``) a run for one variant, tagged with its name and role.

    Ends like :func:`tracked_run` on an exception.

    Args:
        variant: names the run.
        nested: a child run of the active run, in the parent's experiment.
        experiment_id: where a new run goes (:func:`project_experiment`), ``None`` for MLflow's choice.

    Yields:
        The active ``mlflow.ActiveRun``.
    """
    if nested and experiment_id is None:  # MLflow would put the child in its own current experiment
        experiment_id = mlflow.active_run().info.experiment_id
    with tracked_run(nested=nested, run_name=variant.name, experiment_id=experiment_id) as run:
        mlflow.set_tags({VARIANT_TAG: variant.name, ROLE_TAG: ROLE_VARIANT})
        yield run


def end_with_error(error: BaseException) -> None:
    """Tag the active run with the one-line error and end it: KILLED for Ctrl-C, else FAILED."""
    interrupted = isinstance(error, KeyboardInterrupt)
    message = error.message if isinstance(error, TFLiteError) else f"{type(error).__name__}: {error}"
    try:
        mlflow.set_tag(ERROR_TAG, "interrupted (Ctrl-C)" if interrupted else message[:5000])
        mlflow.end_run(RunStatus.to_string(RunStatus.KILLED if interrupted else RunStatus.FAILED))
    except MlflowException:
        # The tracking store itself failed (a server that went away): the run stays RUNNING there,
        # a resumed sweep ends it; the original error is what the caller reports.
        pass


def log_variant_model(
    tflite_model: bytes,
    variant: Variant,
    input_example: np.ndarray | None,
    num_threads: int,
    recipe_json: str | None = None,
):
    """Log the .tflite as an MLflow model of flavor ``tflite`` named ``model`` in the active run.

    The flavor records the quantization mode, the backend and (LiteRT Quantizer) the recipe.

    Returns:
        ``mlflow.models.model.ModelInfo`` (its ``model_uri`` is what gets registered).
    """
    return flavor.log_model(
        tflite_model,
        name=MODEL_NAME,
        input_example=input_example,
        quantization=variant.quant,
        num_threads=num_threads,
        metadata={"variant": variant.name},
        quantization_backend=str(variant.backend),
        quantization_recipe=recipe_json,
    )


TENSOR_ERRORS_FILE = "tensor_errors.json"
TENSOR_ERRORS_PLOT = "tensor_errors.png"


def log_tensor_errors(rows: list[dict] | None, note: str | None) -> None:
    """Per-tensor error on the active run: a table, a bar chart of the 20 worst, the worst tensor,
    and the SNR as a Model Explorer overlay (``model_explorer/tensor_snr.json``, ``track.node_data``).

    ``rows`` as from ``measure.tensors.tensor_errors`` (worst SNR first); ``note`` (tag
    ``mlflow_tflite.tensor_errors``) says why there are none, or qualifies them (QAT: how many
    tensors share a name with the float model).
    """
    if note:
        mlflow.set_tag(tags.TENSOR_ERRORS_NOTE_TAG, note[:5000])
    if not rows:
        return
    import pandas as pd

    mlflow.log_table(data=pd.DataFrame.from_records(rows), artifact_file=TENSOR_ERRORS_FILE)
    mlflow.set_tag(tags.WORST_TENSOR_TAG, f"{rows[0]['tensor']} ({rows[0]['op']})"[:5000])
    # Drawn outside pyplot (figures.py): nothing to close, freed with its last reference.
    mlflow.log_figure(tensor_error_figure(rows), TENSOR_ERRORS_PLOT)
    mlflow.log_dict(tensor_snr_node_data(rows), TENSOR_SNR_ARTIFACT)


# Metrics logged at each mixed-precision trial's step (the run's final values follow at the next step).
TRIAL_STEP_METRICS = ("accuracy_drop", "cosine_similarity", "float_ops", "size_bytes", "gzip_size_bytes")
MIXED_PRECISION_FILE = "mixed_precision.json"


def log_search(search) -> None:
    """An ``int8_mixed`` search on the active run: trial steps, the chosen precisions, the tolerance tag.

    Each trial ``t`` logs :data:`TRIAL_STEP_METRICS` at step ``t``; the param ``mixed_float_layers``
    holds the names of the layers kept in float (short; ``mixed_precision.json`` has every op out of
    static int8 with its precision, every ranked group and every trial), tag
    ``mlflow_tflite.tolerance_met`` is ``true`` or ``false`` and the run's description gives the
    search's one-line outcome.

    Args:
        search: ``precision_search.SearchResult``.
    """
    log_params_once({"max_trials": search.max_trials, "mixed_float_layers": search.short_layer_list(),
                     "mixed_trials": len(search.trials)})
    mlflow.set_tag(tags.TOLERANCE_MET_TAG, str(search.tolerance_met).lower())
    mlflow.set_tag("mlflow.note.content", f"int8_mixed: {search.message}")  # the run's description in the UI
    mlflow.log_dict(search.report(), MIXED_PRECISION_FILE)
    for trial in search.trials:
        mlflow.log_metrics({k: trial.metrics[k] for k in TRIAL_STEP_METRICS if k in trial.metrics}, step=trial.number)


def check_tracking_store(timeout_seconds: int = 10) -> None:
    """Fail fast when the tracking store cannot be used, before any conversion work.

    A sqlite store is opened directly first (its directory made, as MLflow does, and a write lock
    taken and released), because MLflow retries a sqlite file it cannot open for minutes; any
    store then gets one request, no retries (MLflow's default retry schedule waits minutes on a
    dead server).

    Raises:
        TFLiteError: the store at ``mlflow.get_tracking_uri()`` cannot be opened or does not
            answer; the message names the URI and the advice fits the kind of store.
    """
    uri = mlflow.get_tracking_uri()
    _check_sqlite_store(uri, timeout_seconds)
    overrides = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout_seconds)}
    saved = {key: os.environ.get(key) for key in overrides}
    os.environ.update(overrides)
    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except Exception as error:
        raise TFLiteError(
            f"the MLflow tracking store {uri} cannot be reached ({first_line(error, 200)}); {_store_advice(uri)}"
        ) from None
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


SQLITE_ADVICE = "set MLFLOW_TRACKING_URI to a database file in a writable directory, e.g. sqlite:///mlflow.db"


def _store_advice(uri: str) -> str:
    """What to do about a store that fails, by its kind (URI scheme)."""
    from urllib.parse import urlparse

    scheme = urlparse(uri).scheme.lower()
    if scheme == "sqlite":
        return SQLITE_ADVICE
    if scheme in ("http", "https", "databricks", "databricks-uc"):
        return "start the server or set MLFLOW_TRACKING_URI to one that answers"
    if scheme in ("", "file"):
        return "make the directory writable or set MLFLOW_TRACKING_URI, e.g. sqlite:///mlflow.db"
    return "check that the database runs and the URI (host, credentials, database name), or set MLFLOW_TRACKING_URI"


def _check_sqlite_store(uri: str, timeout_seconds: float) -> None:
    """A sqlite store's file can be created, opened and written (no-op for other stores)."""
    import sqlite3
    from contextlib import closing
    from pathlib import Path

    if not uri.startswith("sqlite:"):
        return
    from sqlalchemy.engine import make_url

    database = make_url(uri).database
    if not database or database == ":memory:":
        return
    path = Path(database)
    if path.is_dir():
        raise TFLiteError(f"the MLflow tracking store {uri} names a directory, not a database file; {SQLITE_ADVICE}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)  # as MLflow does, so the same paths work
        with closing(sqlite3.connect(path, timeout=timeout_seconds)) as connection:
            connection.execute("BEGIN IMMEDIATE")  # reads the header and takes the write lock
            connection.rollback()
    except (OSError, sqlite3.Error) as error:
        if isinstance(error, (FileExistsError, NotADirectoryError)):
            in_the_way = next(parent for parent in path.parents if parent.exists())
            reason = f"{in_the_way} is a file, not a directory"
        else:
            reason = f"{error.strerror}: {error.filename}" if isinstance(error, OSError) and error.strerror else error
        raise TFLiteError(f"the MLflow tracking store {uri} cannot be opened ({reason}); {SQLITE_ADVICE}") from None
