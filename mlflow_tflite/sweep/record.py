"""An :class:`~mlflow_tflite.sweep.outcome.Outcome` recorded in MLflow: the variant run's params,
metrics, artifacts, data set inputs and ``tflite`` model (``main`` runs and sweep children alike)."""

from __future__ import annotations

from dataclasses import dataclass

import mlflow

from mlflow_tflite import tags
from mlflow_tflite.build.data import Dataset
from mlflow_tflite.sweep.context import Context
from mlflow_tflite.sweep.outcome import Outcome
from mlflow_tflite.track import runs
from mlflow_tflite.track.sweep_runs import log_metrics_to
from mlflow_tflite.variants import Variant


@dataclass(frozen=True)
class SourceDescription:
    """What the runs record of a source (a worker describes it to the driver).

    Attributes:
        name: the default registered model name (``digits-cnn``).
        uri: the run param ``source``.
        native_input_size: the square input side in pixels, or ``None``.
        task: ``classification`` or ``fidelity``.
        lineage: tags linking a model converted from an MLflow model to it.
        source_params: source options that differ from their defaults, as run params.
    """

    name: str
    uri: str
    native_input_size: int | None
    task: str
    lineage: dict[str, str]
    source_params: dict[str, str]


def describe(context: Context) -> SourceDescription:
    """A context's :class:`SourceDescription`."""
    return SourceDescription(context.source.name, context.source.uri, context.native_input_size, context.task,
                             dict(context.source.lineage), dict(context.source_params))


def log_variant_source(source: SourceDescription, variant: Variant, num_threads: int, dataset: Dataset | None) -> None:
    """The variant run's params and lineage tags (``runs.log_source``) from a source description."""
    runs.log_source(source.uri, variant, num_threads, source.task, source.lineage,
                    dataset.preprocessing if dataset else None, source.source_params)


def log_outcome(outcome: Outcome, variant: Variant, dataset: Dataset | None, num_threads: int,
                latency: dict[str, float] | None = None):
    """Log metrics (with ``latency`` when timed already), data set inputs and the ``tflite`` model
    into the active run.

    Returns:
        ``(model_info, eval_digest)``: the logged model and the evaluation data digest (or ``None``).
    """
    runs.log_params_once(outcome.mode_params)
    if outcome.search is not None:
        runs.log_search(outcome.search)
    mlflow.log_metrics({**outcome.metrics, **(latency or {})}, step=outcome.final_step)
    mlflow.log_dict(outcome.op_inventory, "op_inventory.json")
    if outcome.edgetpu:
        mlflow.log_dict(outcome.edgetpu, "edgetpu_readiness.json")
    if outcome.tflm:
        mlflow.log_dict(outcome.tflm, "tflm_readiness.json")
    if outcome.not_evaluated:
        mlflow.set_tag(tags.NOT_EVALUATED_TAG, outcome.not_evaluated[:5000])
    if outcome.size_warning:
        mlflow.set_tag(tags.SIZE_WARNING_TAG, outcome.size_warning[:5000])
    eval_digest = runs.log_dataset_inputs(dataset, outcome.calibration) if dataset else None
    runs.log_tensor_errors(outcome.tensor_errors, outcome.tensor_errors_note)
    model_info = runs.log_variant_model(outcome.tflite_model, variant, outcome.input_example, num_threads,
                                        outcome.recipe_json)
    mlflow.set_tag(tags.MODEL_URI_TAG, model_info.model_uri)
    return model_info, eval_digest


def log_trial_latencies(run_id: str, outcome: Outcome, name: str, latencies: dict[str, dict[str, float]]) -> None:
    """``latency_ms_p50`` at each mixed-precision trial's step of the variant's run (nothing for other modes)."""
    for number, p50 in outcome.trial_latencies(name, latencies).items():
        log_metrics_to(run_id, {"latency_ms_p50": p50}, step=number)
