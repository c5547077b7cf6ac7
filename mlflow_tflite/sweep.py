"""Sweeps: a grid of variants as child runs of one parent run, compared, and the best registered.

Phases: (1) a worker opens the source (the demo CNN is trained once and shared through its
on-disk cache); (2) each pruned or resized model is built once and shared with the other
workers as a saved .h5; (3) workers convert and evaluate the variants, and the parent logs each
as a child run as it arrives (FINISHED, without latency yet); (4) with the workers shut down,
the parent times every variant's latency side by side in a quiet phase and adds it to the
child runs; (5) selection and registration.

Executors (``executor``): ``local`` (default) runs the tasks in ``concurrent.futures``
processes with the spawn start method (``workers.Workers``): a worker that crashes fails only
its variant, the remaining variants run one at a time in a fresh worker. ``ray`` runs them as
tasks of Ray actors on a cluster (``ray_executor.RayExecutor``, at ``ray_address``): the
source, the data and each pruned/resized model go through the object store, and a variant
whose worker dies is retried once, then FAILED. With either, workers return results and only
the parent process writes to MLflow, so the tracking store has a single writer.
"""

from __future__ import annotations

import functools
import os
import tempfile
from contextlib import closing
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import mlflow

from mlflow_tflite import pipeline, registry, selection, sweep_runs, tags, tracking
from mlflow_tflite.data import load_dataset
from mlflow_tflite.errors import TFLiteError
from mlflow_tflite.options import Executor, Objective, check_range, choice, given, number, option, parse_enum, text
from mlflow_tflite.selection import Tolerance
from mlflow_tflite.variants import Variant
from mlflow_tflite.workers import SweepExecutor, Workers

PARENT_TAGS = {tags.ROLE_TAG: tags.ROLE_SWEEP}


@dataclass(frozen=True)
class SweepConfig:
    """What to sweep and how to choose.

    Attributes:
        variants: the grid (``variants.expand_grid``); ``input_size=None`` means native.
        model, data: the ``model`` / ``data`` parameters (``None`` and ``None`` for the demo).
        open_options: further ``pipeline.prepare`` arguments (task, preprocessing, source options).
        objective: ``latency``, ``size`` or ``accuracy`` (see ``selection.select_best``).
        tolerance: accuracy / fidelity bounds a variant must meet (``selection.Tolerance``).
        max_size_bytes, max_latency_ms: optional budgets (bytes, ms).
        registered_model_name: registry name (default from the source).
        workers: worker processes (>= 1); with ``executor=ray`` the number of Ray actors (one CPU each).
        executor: ``local`` (worker processes on this machine) or ``ray`` (Ray actors on a cluster).
        ray_address: the Ray cluster to join (``host:port`` or ``ray://host:port``); ``None``
            (``auto``/``none``) joins the running cluster Ray finds or starts a local one.
        num_threads: LiteRT threads per interpreter.
        resume: parent run id of an earlier sweep to continue (FINISHED variants are kept; the
            settings must be the same).
        register: register the best variant.
    """

    variants: list[Variant]
    model: str | None = None
    data: str | None = None
    open_options: dict = field(default_factory=dict)
    objective: Objective = option(Objective.LATENCY, "latency, size or accuracy.", choice(Objective))
    tolerance: Tolerance = Tolerance()
    max_size_bytes: float | None = option(None, "Size budget in bytes, or none.",
                                          number(float, 0, low_open=True, optional=True))
    max_latency_ms: float | None = option(None, "Latency p50 budget in ms, or none.",
                                          number(float, 0, low_open=True, optional=True))
    registered_model_name: str | None = None
    workers: int = option(1, "Worker processes (executor=ray: Ray actors).", number(int, 1))
    executor: Executor = option(Executor.LOCAL, "local (worker processes) or ray (Ray actors; see ray_address).",
                                choice(Executor))
    ray_address: str | None = option(None, "Ray cluster address host:port or ray://host:port; auto joins a running "
                                           "cluster or starts a local one.", text())
    num_threads: int = 1
    resume: str | None = option(None, "Parent run id of an interrupted sweep: FINISHED variants are kept.", text())
    register: bool = True

    def __post_init__(self):
        if not self.variants:
            raise TFLiteError("the sweep has no variants; give at least one quant, sparsity and input_size")
        object.__setattr__(self, "objective", parse_enum(Objective, self.objective, "objective"))
        for name in ("max_size_bytes", "max_latency_ms"):
            if getattr(self, name) is not None:
                check_range(getattr(self, name), name, 0, low_open=True, hint=", or none for no budget")
        check_range(self.workers, "workers", 1)
        object.__setattr__(self, "executor", parse_enum(Executor, self.executor, "executor"))
        object.__setattr__(self, "ray_address", given(self.ray_address))
        if self.ray_address is not None and self.executor != Executor.RAY:
            raise TFLiteError(f"ray_address={self.ray_address!r} only applies to executor=ray, but executor is "
                              f"{self.executor}; add executor=ray or leave ray_address out")

    def record(self, variants: list[Variant]) -> dict:
        """Everything that changes a sweep's results, as JSON-able data (checked on resume).

        ``workers``, ``executor`` and ``ray_address`` are not in it: they change where and how fast
        the variants run, not their results (every task is deterministic and the same code runs
        either way; latency is always timed in the parent), so a sweep may resume on another one.
        """
        return {
            "variants": [v.name for v in variants],
            "calibration_samples": sorted({v.calibration_samples for v in variants}),
            "model": self.model, "data": self.data,
            "open_options": {k: str(v) for k, v in sorted(self.open_options.items())},
            "objective": self.objective, "tolerance": asdict(self.tolerance),
            "max_size_bytes": self.max_size_bytes, "max_latency_ms": self.max_latency_ms,
            "num_threads": self.num_threads, "registered_model_name": self.registered_model_name,
            "register": self.register,
        }


@dataclass
class SweepResult:
    """The parent run, every variant's outcome and the registration (if any)."""

    parent_run_id: str
    rows: list[dict] = field(default_factory=list)
    best: dict | None = None
    registration: registry.Registration | None = None
    message: str = ""


# ----------------------------------------------------------------------------------------------
# Worker side: module-level state and task functions (picklable for the spawn start method).
# ----------------------------------------------------------------------------------------------

_WORKER: dict = {}


def _worker_init(open_args: dict, workdir: str) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    _WORKER.update(open_args=open_args, workdir=Path(workdir))
    from mlflow_tflite.quiet import start_tensorflow

    start_tensorflow()


def _prepared() -> pipeline.Prepared:
    """This worker's shared inputs, opened once (the demo CNN comes from its on-disk cache)."""
    if "prepared" not in _WORKER:
        prepared = pipeline.prepare(**_WORKER["open_args"])
        if "source_identity" in _WORKER:  # a copy of the source (Ray): runs record the original's URI and name
            prepared.source.uri, prepared.source.name = _WORKER["source_identity"]
        _WORKER["prepared"] = prepared
    return _WORKER["prepared"]


def _warm_up(_: object = None) -> None:
    """Import TensorFlow in a new worker while the first one opens the source."""
    import tensorflow  # noqa: F401
    import tf_keras  # noqa: F401


def _model_file(variant: Variant) -> Path:
    trained = "-qat" if variant.recipe.trained else ""  # the QAT model of a key is not its plain pruned model
    return _WORKER["workdir"] / f"model-i{variant.input_size}-s{variant.sparsity:g}{trained}.h5"


def _load_saved_models(prepared: pipeline.Prepared, variants: list[Variant]) -> None:
    """Cache the models phase 2 saved for ``variants`` (when saved and not cached yet)."""
    for variant in variants:
        if variant.model_key not in prepared.variant_models and _model_file(variant).exists():
            prepared.variant_models[variant.model_key] = pipeline.load_variant_model(
                prepared, variant, _model_file(variant))


def _guarded(task):
    """Decorator for worker tasks: return ("ok", value) or ("error", one-line message), never raise."""

    @functools.wraps(task)
    def run(item):
        try:
            return "ok", task(item)
        except TFLiteError as error:
            return "error", error.message
        except Exception as error:  # any other failure of a variant is reported, not raised
            lines = str(error).strip().splitlines()
            return "error", f"{type(error).__name__}: {lines[0] if lines else ''}"

    return run


@_guarded
def describe(_: object) -> dict:
    """Phase 1: open the source (train the demo) in a worker; its name, URI and native size."""
    prepared = _prepared()
    return {"name": prepared.source.name, "uri": prepared.source.uri, "native_input_size": prepared.native_input_size,
            "task": prepared.task, "lineage": prepared.source.lineage, "source_params": prepared.source_params}


@_guarded
def build_variant_model(variant: Variant) -> str:
    """Phase 2: resize/prune (or QAT-train) once, save it for the other workers.

    A QAT model starts from the plain resized/pruned model of its key, saved earlier in phase 2.
    """
    prepared = _prepared()
    if variant.recipe.trained:
        _load_saved_models(prepared, [pipeline.untrained_variant(variant)])
    adapted = pipeline.variant_model(prepared, variant)
    adapted.source.keras_model.save(_model_file(variant))
    return str(_model_file(variant))


@_guarded
def run_variant_task(variant: Variant) -> pipeline.Outcome:
    """Phase 3: convert and evaluate one variant (the pruned/resized model comes from phase 2)."""
    prepared = _prepared()
    # A QAT variant's per-tensor error compares with the float model of its plain pruned model.
    _load_saved_models(prepared, [pipeline.untrained_variant(variant)] if variant.recipe.trained else [])
    _load_saved_models(prepared, [variant])
    return pipeline.convert_and_evaluate(prepared, variant)


# ----------------------------------------------------------------------------------------------
# Parent side
# ----------------------------------------------------------------------------------------------


def _log_child(variant: Variant, meta: dict, status: str, value, dataset, num_threads: int) -> dict:
    """One child run: FINISHED with the outcome, or FAILED with the error message; its row."""
    row = {"variant": variant.name, "status": "FINISHED", "metrics": {}, "model_uri": None, "error": "",
           "eval_digest": None, "evaluated": False, "tolerance_met": True, "final_step": 0}
    try:
        with tracking.variant_run(variant, nested=True) as run:
            row["run_id"] = run.info.run_id
            tracking.log_source(meta["uri"], variant, num_threads, meta["task"], meta["lineage"],
                                dataset.preprocessing if dataset else None, meta["source_params"])
            if status != "ok":
                raise TFLiteError(value)
            model_info, row["eval_digest"] = pipeline.log_outcome(value, variant, dataset, num_threads)
            row.update(metrics=dict(value.metrics), model_uri=model_info.model_uri, evaluated=not value.not_evaluated,
                       tolerance_met=value.tolerance_met, final_step=value.final_step)
    except TFLiteError as error:
        row.update(status="FAILED", error=error.message)
    return row


def _row_of_run(run) -> dict:
    """The row of a child run logged by an earlier session of this sweep (resume)."""
    return {
        "variant": run.data.tags[tags.VARIANT_TAG],
        "run_id": run.info.run_id,
        "status": run.info.status,
        "metrics": dict(run.data.metrics),
        "model_uri": run.data.tags.get(tags.MODEL_URI_TAG),
        "error": run.data.tags.get(tags.ERROR_TAG, ""),
        "eval_digest": tracking.evaluation_digest(run),
        "evaluated": tags.NOT_EVALUATED_TAG not in run.data.tags,
        "tolerance_met": run.data.tags.get(tags.TOLERANCE_MET_TAG, "true") == "true",
        "final_step": int(run.data.params.get("mixed_trials", -1)) + 1,
    }


def run_sweep(config: SweepConfig, progress: bool = True) -> SweepResult:
    """Run every variant of ``config`` as a child run, then time, compare, choose and register.

    Returns:
        :class:`SweepResult`; ``best`` is ``None`` (and nothing registered) when no variant
        meets the tolerance and budgets.

    Raises:
        TFLiteError: bad configuration, an unusable source/data, a resume with other
            settings (before any child run), or the tracking server stopped answering (the
            variants converted so far are saved locally, see ``sweep_runs.tracking_lost``).
        KeyboardInterrupt: Ctrl-C; the parent (and an open child) run ends KILLED.
    """
    from mlflow.exceptions import MlflowException

    local: dict = {}
    try:
        return _run_sweep(config, progress, local)
    except MlflowException as error:
        raise TFLiteError(sweep_runs.tracking_lost(error, local)) from None


def _run_sweep(config: SweepConfig, progress: bool, local: dict) -> SweepResult:
    preprocessing = config.open_options.get("preprocessing")
    dataset = load_dataset(config.data, preprocessing) if (config.data or config.model is None) else None
    open_args = {"model": config.model, "data": config.data, **config.open_options}
    if config.resume:
        sweep_runs.check_sweep_parent(config.resume)
    # Under `mlflow run`, MLflow has created this entry point's run (MLFLOW_RUN_ID): it is the parent,
    # and a resumed sweep continues in it (sweep_runs.continue_in) instead of leaving it empty.
    # Taken out of the environment as mlflow.start_run does, or every child run would reopen it.
    launched = os.environ.pop("MLFLOW_RUN_ID", None)
    run_id = launched or config.resume
    with tempfile.TemporaryDirectory(prefix="mlflow-tflite-sweep-") as workdir, \
            closing(_executor(config, open_args, workdir, dataset)) as workers, \
            tracking.tracked_run(run_id=run_id, run_name=None if run_id else "sweep") as parent:
        mlflow.set_tags(PARENT_TAGS)
        return _sweep(parent.info.run_id, config, workers, dataset, progress, local)


def _executor(config: SweepConfig, open_args: dict, workdir: str, dataset) -> SweepExecutor:
    """The executor ``config`` asks for (Ray is imported only for ``executor=ray``)."""
    if config.executor == Executor.RAY:
        from mlflow_tflite.ray_executor import RayExecutor

        return RayExecutor(config.workers, open_args, dataset, config.ray_address)
    return Workers(config.workers, _worker_init, (open_args, workdir), _warm_up)


def _describe(workers: SweepExecutor) -> dict:
    (_, status, meta), = list(workers.run(describe, [None]))
    if status != "ok":
        raise TFLiteError(meta)
    return meta


def _sweep(parent_run_id: str, config: SweepConfig, workers: SweepExecutor, dataset, progress: bool,
           local: dict) -> SweepResult:
    """The phases (module doc); ``local`` collects each variant's result as it arrives, before logging."""
    from tqdm.auto import tqdm

    local.update(parent_run_id=parent_run_id, results={})
    meta = _describe(workers)
    variants = list(dict.fromkeys(  # "native" may equal a size also given
        v if v.input_size else replace(v, input_size=meta["native_input_size"]) for v in config.variants))
    if config.resume and config.resume != parent_run_id:
        sweep_runs.check_config(config.resume, config.record(variants))  # before anything moves
        sweep_runs.continue_in(config.resume, parent_run_id)
    sweep_runs.record_or_check_config(parent_run_id, config.record(variants), resumed=config.resume is not None)
    tracking.log_params_once(_sweep_params(config, variants, meta["uri"]))
    current = sweep_runs.current_children(parent_run_id)
    todo = [v for v in variants if v.name not in current.finished]
    rows, outcomes = {}, {}
    # A context manager: the bar ends its line even when an error stops the loop (the CLI's one line follows).
    with tqdm(total=len(variants), initial=len(variants) - len(todo), desc="variants", disable=not progress) as bar:
        for variant, status, value in _convert(workers, todo, meta["native_input_size"]):
            bar.set_postfix_str(variant.name)
            local["results"][variant.name] = ({"status": "converted", "metrics": dict(value.metrics)}
                                              if status == "ok" else {"status": "FAILED", "error": value})
            rows[variant.name] = _log_child(variant, meta, status, value, dataset, config.num_threads)
            local["results"][variant.name]["logged_run_id"] = rows[variant.name].get("run_id")
            sweep_runs.supersede(current.stale.get(variant.name, []), rows[variant.name]["run_id"])
            if status == "ok":
                outcomes[variant.name] = value
            bar.update(1)
    workers.close()  # the quiet phase: nothing else runs on these cores while latency is timed
    _log_phase_totals(outcomes)
    rows.update({name: _row_of_run(run) for name, run in current.finished.items()})
    ordered = [rows[v.name] for v in variants if v.name in rows]
    _time_latencies(ordered, outcomes, current.finished, config.num_threads)
    return _choose_and_register(parent_run_id, ordered, config, meta["name"])


def _log_phase_totals(outcomes: dict) -> None:
    """Parent metrics: seconds spent on float conversions, quantization and conversion in all (summed)."""
    keys = ("float_convert_seconds", "quantize_seconds", "convert_seconds")
    totals = {key: sum(o.metrics.get(key, 0.0) for o in outcomes.values()) for key in keys}
    if outcomes:
        mlflow.log_metrics({k: v for k, v in totals.items() if v or k == "convert_seconds"})


def _convert(workers: SweepExecutor, variants: list[Variant], native: int | None):
    """Phases 2 and 3: yield ``(variant, status, Outcome or error message)`` as variants finish."""
    model_errors = _build_variant_models(workers, variants, native)
    for variant in variants:
        if variant.model_key in model_errors:
            yield variant, "error", model_errors[variant.model_key]
    runnable = [v for v in variants if v.model_key not in model_errors]
    yield from workers.run(run_variant_task, runnable)


def _build_variant_models(workers: SweepExecutor, variants: list[Variant], native: int | None) -> dict:
    """Phase 2: build each resized/pruned model once, then each QAT model from it (QAT always
    needs a build); return {model_key: error message} (a QAT key inherits its base's error)."""
    plain: dict[tuple, Variant] = {}
    trained: dict[tuple, Variant] = {}
    for v in variants:
        base = pipeline.untrained_variant(v) if v.recipe.trained else v
        if base.sparsity > 0 or base.input_size not in (None, native):
            plain.setdefault(base.model_key, base)
        if v.recipe.trained:
            trained.setdefault(v.model_key, v)
    errors = {}
    for v, status, value in workers.run(build_variant_model, list(plain.values())):
        if status != "ok":
            errors[v.model_key] = value
    for key, v in trained.items():
        base_key = pipeline.untrained_variant(v).model_key
        if base_key in errors:
            errors[key] = errors[base_key]
    for v, status, value in workers.run(build_variant_model, [v for k, v in trained.items() if k not in errors]):
        if status != "ok":
            errors[v.model_key] = value
    return errors


def _time_latencies(rows: list[dict], outcomes: dict, earlier_runs: dict, num_threads: int) -> None:
    """Phase 4: time every evaluated variant side by side (earlier sessions' too); log and keep it."""
    timed = [r for r in rows if r["status"] == "FINISHED" and r["evaluated"]]
    if not timed:
        return
    models = {}
    for row in timed:
        outcome = outcomes.get(row["variant"])
        models.update(outcome.latency_models(row["variant"]) if outcome is not None
                      else {row["variant"]: sweep_runs.logged_model_and_example(earlier_runs[row["variant"]])})
    latencies = pipeline.time_latency(models, num_threads)
    for row in timed:
        row["metrics"].update(latencies[row["variant"]])
        sweep_runs.log_metrics_to(row["run_id"], latencies[row["variant"]], step=row["final_step"])
        if row["variant"] in outcomes:
            pipeline.log_trial_latencies(row["run_id"], outcomes[row["variant"]], row["variant"], latencies)


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
        "workers": config.workers,
        "executor": config.executor,
        "variants": len(variants),
    }


def _no_winner_message(config: SweepConfig, candidates: int) -> str:
    budgets = "".join(f", {name}={getattr(config, name):g}" for name in ("max_size_bytes", "max_latency_ms")
                      if getattr(config, name) is not None)
    return (f"no variant meets the tolerance ({config.tolerance}){budgets} among {candidates} finished variants; "
            "nothing registered")


def _choose_and_register(parent_run_id: str, rows: list[dict], config: SweepConfig, source_name: str) -> SweepResult:
    from mlflow_tflite import report

    # Variants that could not be run here (Flex ops) have no latency or accuracy to compare.
    # An int8_mixed search that missed the tolerance is never a candidate (tag tolerance_met=false).
    candidates = [r for r in rows if r["status"] == "FINISHED" and "latency_ms_p50" in r["metrics"]
                  and r["tolerance_met"]]
    best = selection.select_best(candidates, config.objective, config.tolerance,
                                 config.max_size_bytes, config.max_latency_ms)
    report.log_comparison(rows, best, config.tolerance.max_accuracy_drop)
    result = SweepResult(parent_run_id, rows, best)
    if best is None:
        result.message = _no_winner_message(config, len(candidates))
        mlflow.set_tag(tags.SELECTION_TAG, result.message)
        return result
    mlflow.set_tags({tags.BEST_VARIANT_TAG: best["variant"], tags.BEST_RUN_ID_TAG: best["run_id"]})
    result.message = f"best variant {best['variant']} by {config.objective}"
    if config.register:
        result.registration = registry.register_and_promote(
            best["model_uri"], config.registered_model_name or source_name, best["metrics"], best["eval_digest"],
            best["variant"], config.tolerance,
        )
        mlflow.set_tag(tags.REGISTERED_VERSION_TAG, result.registration.version)
    return result
