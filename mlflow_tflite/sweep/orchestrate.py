"""Sweeps: a grid of variants as child runs of one parent run, compared, and the best registered.

Order: (1) a worker opens the source and describes it, and a resume is checked, before any run
is opened; (2) the executor runs the build waves and the variants (``phases.run_variants``) and
the parent logs each variant as a child run as it arrives (FINISHED, without latency yet);
(3) with the workers shut down, the parent times every variant's latency side by side in a
quiet phase; (4) selection and registration.

Executors (``executor``): ``local`` (default) runs the tasks in spawned worker processes
(``local.LocalExecutor``); ``ray`` runs them on Ray actors (``ray_executor.RayExecutor``). With
either, workers return values and only this process writes to MLflow.
"""

from __future__ import annotations

import os
from contextlib import closing
from dataclasses import asdict, dataclass, field, replace

import mlflow
from mlflow.exceptions import MlflowException
from tqdm.auto import tqdm

from mlflow_tflite import tags
from mlflow_tflite.build.data import load_dataset
from mlflow_tflite.build.data_checks import check_sizes_fit
from mlflow_tflite.errors import TFLiteError
from mlflow_tflite.measure.latency import time_latency
from mlflow_tflite.options import Executor
from mlflow_tflite.sweep.config import SweepConfig
from mlflow_tflite.sweep.local import LocalExecutor, SweepExecutor
from mlflow_tflite.sweep.outcome import Outcome
from mlflow_tflite.track.rows import Row
from mlflow_tflite.sweep.phases import run_variants
from mlflow_tflite.sweep.ray_executor import RayExecutor
from mlflow_tflite.sweep.record import SourceDescription, log_outcome, log_trial_latencies, log_variant_source
from mlflow_tflite.sweep.worker import Describe, Job, ShippedSource
from mlflow_tflite.track import registry, report, runs, selection, sweep_runs
from mlflow_tflite.variants import Variant

PARENT_TAGS = {tags.ROLE_TAG: tags.ROLE_SWEEP}


@dataclass
class SweepResult:
    """The parent run, every variant's row, the chosen one and the registration (if any)."""

    parent_run_id: str
    rows: list[Row] = field(default_factory=list)
    best: Row | None = None
    registration: registry.Registration | None = None
    message: str = ""


def run_sweep(config: SweepConfig, progress: bool = True) -> SweepResult:
    """Run every variant of ``config`` as a child run, then time, compare, choose and register.

    Returns:
        :class:`SweepResult`; ``best`` is ``None`` (and nothing registered) when no variant
        meets the tolerance and budgets.

    Raises:
        TFLiteError: bad configuration, a tracking store that does not answer, an unusable source
            or data, an input size whose resized images cannot fit in memory, a resume of something
            that is not a sweep or with other settings (all before any run is opened or changed), or
            the tracking store stopped answering mid-sweep (the variants converted so far are
            saved to the cache directory, see ``sweep_runs.tracking_lost``).
        KeyboardInterrupt: Ctrl-C; the parent (and an open child) run ends KILLED.
    """
    open_args = {"model": config.model, "data": config.data, **config.open_options}
    # Local workers start first and open the source and data themselves while this process checks
    # the tracking store and loads its own copy of the data (for the runs' data set inputs); Ray
    # workers get the data from this process, through the object store.
    shipped_data = _load_data(config) if config.executor == Executor.RAY else None
    with closing(_executor(config, open_args, shipped_data)) as workers:
        runs.check_tracking_store()
        if config.resume:
            sweep_runs.check_sweep_parent(config.resume)
        dataset = shipped_data if config.executor == Executor.RAY else _load_data(config)
        meta = _describe(workers)
        variants = list(dict.fromkeys(  # "native" may equal a size also given
            v if v.input_size else replace(v, input_size=meta.native_input_size) for v in config.variants))
        if config.resume:
            sweep_runs.check_config(config.resume, config.record(variants))  # before anything moves
        check_sizes_fit(dataset, [v.input_size for v in variants if v.input_size != meta.native_input_size])
        progress_record = sweep_runs.SweepProgress()
        try:
            return _in_parent_run(config, workers, meta, variants, dataset, progress, progress_record)
        except TFLiteError:
            raise
        except MlflowException as error:  # the tracking store itself failed: save what was done
            raise TFLiteError(sweep_runs.tracking_lost(error, progress_record)) from None


def _in_parent_run(config: SweepConfig, workers: SweepExecutor, meta: SourceDescription, variants: list[Variant], dataset,
                   progress: bool, record: sweep_runs.SweepProgress) -> SweepResult:
    # Under `mlflow run`, MLflow has created this entry point's run (MLFLOW_RUN_ID): it is the parent,
    # and a resumed sweep continues in it (sweep_runs.continue_in) instead of leaving it empty.
    # Taken out of the environment as mlflow.start_run does, or every child run would reopen it.
    launched = os.environ.pop("MLFLOW_RUN_ID", None)
    run_id = launched or config.resume
    model_name = config.registered_model_name or meta.name
    # A run mlflow run created gets the name too (MLflow gave it a random one).
    new_run = {} if run_id else {"experiment_id": runs.project_experiment(model_name)}
    with runs.tracked_run(run_id=run_id, run_name=f"sweep-{model_name}-{len(variants)}", **new_run) as parent:
        mlflow.set_tags(PARENT_TAGS)
        record.parent_run_id = parent.info.run_id
        if config.resume and config.resume != parent.info.run_id:
            sweep_runs.continue_in(config.resume, parent.info.run_id)
        sweep_runs.record_or_check_config(parent.info.run_id, config.record(variants), resumed=config.resume is not None)
        runs.log_params_once(_sweep_params(config, variants, meta.uri))
        rows, outcomes = _run_children(config, workers, meta, variants, dataset, progress, record)
        workers.close()  # the quiet phase: nothing else runs on these cores while latency is timed
        _log_phase_totals(outcomes)
        _time_latencies(rows, outcomes, record.finished_runs, config.num_threads)
        return _choose_and_register(parent.info.run_id, rows, config, meta.name)


def _load_data(config: SweepConfig):
    """The sweep's data set (``None`` for a model without data)."""
    if config.data is None and config.model is not None:
        return None
    return load_dataset(config.data, config.open_options.get("preprocessing"))


def _executor(config: SweepConfig, open_args: dict, dataset) -> SweepExecutor:
    """The executor ``config`` asks for, started: local workers read the source and data from this
    machine's disk; Ray workers get ``dataset`` and a local model file through the object store."""
    if config.executor == Executor.RAY:
        return RayExecutor(config.worker_count, Job(open_args, dataset, ShippedSource.of(config.model)),
                           config.ray_address)
    return LocalExecutor(config.worker_count, Job(open_args))


def _describe(workers: SweepExecutor) -> SourceDescription:
    (_, status, meta), = list(workers.run([Describe()]))
    if status != "ok":
        raise TFLiteError(meta)
    return meta


def _run_children(config: SweepConfig, workers: SweepExecutor, meta: SourceDescription, variants: list[Variant], dataset,
                  progress: bool, record: sweep_runs.SweepProgress) -> tuple[list[Row], dict[str, Outcome]]:
    """Each variant's child run as its outcome arrives; earlier sessions' FINISHED ones are kept."""
    parent_run_id = record.parent_run_id
    current = sweep_runs.current_children(parent_run_id)
    record.finished_runs = current.finished
    todo = [v for v in variants if v.name not in current.finished]
    rows, outcomes = {}, {}
    tensor_table = dataset is not None and config.open_options.get("tensor_errors", True)
    # A context manager: the bar ends its line even when an error stops the loop (the CLI's one line follows).
    with tqdm(total=len(variants), initial=len(variants) - len(todo), desc="variants", disable=not progress) as bar:
        bar.set_postfix_str("preparing: pruned/resized models and float flatbuffers first")
        for variant, status, value in run_variants(workers, todo, meta.native_input_size, tensor_table):
            bar.set_postfix_str(variant.name)
            record.converted(variant.name, value.metrics if status == "ok" else None, None if status == "ok" else value)
            rows[variant.name] = _log_child(variant, meta, status, value, dataset, config.num_threads)
            record.logged(variant.name, rows[variant.name].run_id)
            sweep_runs.supersede(current.stale.get(variant.name, []), rows[variant.name].run_id)
            if status == "ok":
                outcomes[variant.name] = value
            bar.update(1)
    rows.update({name: sweep_runs.row_of_run(run) for name, run in current.finished.items()})
    return [rows[v.name] for v in variants if v.name in rows], outcomes


def _log_child(variant: Variant, meta: SourceDescription, status: str, value, dataset, num_threads: int) -> Row:
    """One child run: FINISHED with the outcome, or FAILED with the error message; its row."""
    row = Row(variant.name)
    try:
        with runs.variant_run(variant, nested=True) as run:
            row.run_id = run.info.run_id
            log_variant_source(meta, variant, num_threads, dataset)
            if status != "ok":
                raise TFLiteError(value)
            model_info, row.eval_digest = log_outcome(value, variant, dataset, num_threads)
            row.metrics, row.model_uri, row.evaluated = dict(value.metrics), model_info.model_uri, not value.not_evaluated
            row.tolerance_met, row.final_step = value.tolerance_met, value.final_step
            row.size_warning = value.size_warning
    except TFLiteError as error:
        row.status, row.error = "FAILED", error.message
    return row


def _log_phase_totals(outcomes: dict[str, Outcome]) -> None:
    """Parent metrics: seconds spent on float conversions, quantization and conversion in all (summed)."""
    keys = ("float_convert_seconds", "quantize_seconds", "convert_seconds")
    totals = {key: sum(o.metrics.get(key, 0.0) for o in outcomes.values()) for key in keys}
    if outcomes:
        mlflow.log_metrics({k: v for k, v in totals.items() if v or k == "convert_seconds"})


def _time_latencies(rows: list[Row], outcomes: dict[str, Outcome], earlier_runs: dict, num_threads: int) -> None:
    """Time every evaluated variant side by side (earlier sessions' too); log and keep it."""
    timed = [r for r in rows if r.status == "FINISHED" and r.evaluated]
    if not timed:
        return
    models = {}
    for row in timed:
        outcome = outcomes.get(row.variant)
        models.update(outcome.latency_models(row.variant) if outcome is not None
                      else {row.variant: sweep_runs.logged_model_and_example(earlier_runs[row.variant])})
    latencies = time_latency(models, num_threads)
    for row in timed:
        row.metrics.update(latencies[row.variant])
        sweep_runs.log_metrics_to(row.run_id, latencies[row.variant], step=row.final_step)
        if row.variant in outcomes:
            log_trial_latencies(row.run_id, outcomes[row.variant], row.variant, latencies)


def _sweep_params(config: SweepConfig, variants: list[Variant], source_uri: str) -> dict:
    join = lambda values: ",".join(dict.fromkeys(str(v) for v in values))  # noqa: E731
    return {
        "quant": join(v.quant for v in variants),
        "sparsity": join(f"{v.sparsity:g}" for v in variants),
        "input_size": join(v.input_size for v in variants),
        "calibration_samples": variants[0].calibration_samples,
        "ops": variants[0].ops,
        "source": source_uri,
        "objective": config.objective,
        **asdict(config.tolerance),
        "max_size_bytes": config.max_size_bytes,
        "max_latency_ms": config.max_latency_ms,
        "max_arena_bytes": config.max_arena_bytes,
        "workers": config.workers,
        "executor": config.executor,
        "variants": len(variants),
    }


def _no_winner_message(config: SweepConfig, candidates: int) -> str:
    budgets = "".join(f", {name}={getattr(config, name):g}"
                      for name in ("max_size_bytes", "max_latency_ms", "max_arena_bytes")
                      if getattr(config, name) is not None)
    return (f"no variant meets the tolerance ({config.tolerance}){budgets} among {candidates} finished variants; "
            "nothing registered")


def _choose_and_register(parent_run_id: str, rows: list[Row], config: SweepConfig, source_name: str) -> SweepResult:
    # Variants that could not be run here (Flex ops) have no latency or accuracy to compare.
    # An int8_mixed search that missed the tolerance is never a candidate (tag tolerance_met=false).
    candidates = [r for r in rows if r.candidate]
    best = selection.select_best(candidates, config.objective, config.tolerance,
                                 config.max_size_bytes, config.max_latency_ms, config.max_arena_bytes)
    report.log_comparison(rows, best, config.tolerance)
    result = SweepResult(parent_run_id, rows, best)
    if best is None:
        result.message = _no_winner_message(config, len(candidates))
        mlflow.set_tag(tags.SELECTION_TAG, result.message)
        return result
    mlflow.set_tags({tags.BEST_VARIANT_TAG: best.variant, tags.BEST_RUN_ID_TAG: best.run_id})
    result.message = f"best variant {best.variant} by {config.objective}"
    if config.register:
        result.registration = registry.register_and_promote(
            best.model_uri, config.registered_model_name or source_name, best.metrics, best.eval_digest,
            best.variant, config.tolerance, config.objective)
        mlflow.set_tag(tags.REGISTERED_VERSION_TAG, result.registration.version)
    return result
