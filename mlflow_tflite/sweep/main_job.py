"""The ``main`` entry point: one variant converted, measured, logged as a run and registered."""

from __future__ import annotations

from dataclasses import dataclass


from mlflow_tflite.build.graph import Builds
from mlflow_tflite.measure.latency import time_latency
from mlflow_tflite.options import Objective
from mlflow_tflite.sweep.context import Context
from mlflow_tflite.sweep.record import describe, log_outcome, log_trial_latencies, log_variant_source
from mlflow_tflite.sweep.work import variant_work
from mlflow_tflite.track import registry, runs
from mlflow_tflite.track.selection import Tolerance
from mlflow_tflite.variants import Variant


@dataclass(frozen=True)
class VariantResult:
    """What one variant produced: its run id, metrics (latency included) and registration.

    Attributes:
        run_id: the variant's MLflow run.
        variant: the variant.
        metrics: its run metrics.
        model_uri: the logged ``tflite`` model.
        registration: ``registry.Registration``, or ``None`` when not registered.
        message: the ``int8_mixed`` search's one-line outcome, else ``None``.
        size_warning: why the quantized model is larger than the float model, else ``None``
            (tag ``mlflow_tflite.size_warning``).
    """

    run_id: str
    variant: Variant
    metrics: dict[str, float]
    model_uri: str
    registration: registry.Registration | None
    message: str | None = None
    size_warning: str | None = None


def run_variant(context: Context, variant: Variant, registered_model_name: str | None = None, num_threads: int = 1,
                register: bool = True, tolerance: Tolerance = Tolerance(), builds: Builds | None = None,
                objective: Objective = Objective.LATENCY) -> VariantResult:
    """Convert, evaluate and log one variant as an MLflow run; register it if asked.

    Args:
        context: shared inputs from ``context.prepare``.
        variant: the variant (``input_size`` the native size, another size, or ``None``).
        registered_model_name: registry name; default the source's name (``digits-cnn``).
        num_threads: LiteRT interpreter threads for latency and the pyfunc.
        register: register the model version and apply the ``champion`` rule.
        tolerance: a variant outside it is registered as ``challenger`` only.
        builds: the source's build graph, to share pruned models and float flatbuffers between
            calls (one of its own when ``None``).
        objective: what "best" means for the champion, stored on the registered model by its
            first registration (a later one keeps the stored objective).

    Returns:
        :class:`VariantResult`.

    Raises:
        TFLiteError: the variant failed; the run is then FAILED with the message and nothing
            is registered.
    """
    registered_model_name = registered_model_name or context.source.name
    with runs.variant_run(variant, experiment_id=runs.project_experiment(registered_model_name)) as run:
        log_variant_source(describe(context), variant, num_threads, context.dataset)
        outcome = variant_work(context, builds or Builds(context.build_inputs()), variant)
        latencies = {} if outcome.not_evaluated else time_latency(outcome.latency_models(variant.name), num_threads)
        model_info, eval_digest = log_outcome(outcome, variant, context.dataset, num_threads,
                                              latencies.get(variant.name))
        log_trial_latencies(run.info.run_id, outcome, variant.name, latencies)
        metrics = {**outcome.metrics, **latencies.get(variant.name, {})}
        registration = None
        if register and not outcome.not_evaluated and outcome.tolerance_met:
            registration = registry.register_and_promote(model_info.model_uri,
                                                         registered_model_name, metrics,
                                                         eval_digest, variant.name, tolerance, objective)
    message = outcome.search.message if outcome.search is not None else None
    run_id = run.info.run_id
    return VariantResult(run_id, variant, metrics, model_info.model_uri, registration, message, outcome.size_warning)
