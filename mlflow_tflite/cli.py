"""``mlflow-tflite`` command line (click): convert one variant, sweep a grid, promote a model.

The options are generated from the option dataclasses (``options.click_options``), so each is
parsed and checked once, here; expert options can also come from ``--config file.yaml``.
Errors print as one line (``Error: ...``) and exit with status 1.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import click

from mlflow_tflite.display import summary
from mlflow_tflite.errors import TFLiteError, first_line

# TensorFlow's C++ INFO/WARNING lines drown the CLI's own output; a user's setting wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# No network at run time: MLflow's usage telemetry stays off unless the user turns it on.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


from mlflow_tflite.build.data import Preprocessing  # noqa: E402
from mlflow_tflite.build.data_checks import check_sizes_fit  # noqa: E402
from mlflow_tflite.config_file import load_config  # noqa: E402
from mlflow_tflite.build.mixed import MixedPrecision  # noqa: E402
from mlflow_tflite.build.qat import QatOptions  # noqa: E402
from mlflow_tflite.options import (  # noqa: E402
    IoType, Objective, OpsSet, QuantizerOptions, RunSettings, choice, click_options, from_kwargs, given, model_name, number, pop_fields,
)
from mlflow_tflite.quant_modes import Backend, QuantMode  # noqa: E402
from mlflow_tflite.quiet import start_tensorflow  # noqa: E402
from mlflow_tflite.sweep.config import SweepConfig  # noqa: E402
from mlflow_tflite.sweep.context import prepare  # noqa: E402
from mlflow_tflite.sweep.main_job import run_variant  # noqa: E402
from mlflow_tflite.sweep.orchestrate import run_sweep  # noqa: E402
from mlflow_tflite.tags import NOT_EVALUATED_TAG  # noqa: E402
from mlflow_tflite.track.explore import downloaded, require_model_explorer, serve  # noqa: E402
from mlflow_tflite.track.node_data import bands_legend  # noqa: E402
from mlflow_tflite.track.registry import promote_logged_model  # noqa: E402
from mlflow_tflite.track.runs import check_tracking_store  # noqa: E402
from mlflow_tflite.variants import Variant, expand_grid, parse_list  # noqa: E402
from mlflow_tflite.track.selection import Tolerance  # noqa: E402
from mlflow_tflite.build.sources import SourceOptions, default_sparsities  # noqa: E402

# Sections of a --config YAML file and the dataclass each one's keys are fields of.
CONFIG_SECTIONS = {"source": SourceOptions, "preprocessing": Preprocessing, "tolerance": Tolerance,
                   "run": RunSettings, "mixed_precision": MixedPrecision, "qat": QatOptions,
                   "quantizer": QuantizerOptions}


class _OneLineErrors(click.Group):
    """Every error as one line (``Error: message``, exit status 1), never a traceback.

    Ctrl-C prints one line and exits 130 (the runs it interrupted end KILLED). Errors that are
    not this project's (MLflow, the network, a bug) name their type; set
    ``MLFLOW_TFLITE_TRACEBACK=1`` to see the traceback instead.
    """

    def invoke(self, ctx):
        from mlflow.exceptions import MlflowException

        try:
            return super().invoke(ctx)
        except TFLiteError as error:
            raise click.ClickException(error.message) from None
        except KeyboardInterrupt:
            click.echo("Error: interrupted (Ctrl-C); the interrupted runs are marked KILLED", err=True)
            ctx.exit(130)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except MlflowException as error:
            raise click.ClickException(f"MLflow: {first_line(error.message)}") from None
        except Exception as error:
            if os.environ.get("MLFLOW_TFLITE_TRACEBACK"):
                raise
            raise click.ClickException(f"{type(error).__name__}: {first_line(error)}") from None


@click.group(cls=_OneLineErrors)
@click.version_option(package_name="mlflow-tflite")
def cli():
    """Convert TensorFlow models to TFLite variants tracked in MLflow."""


@dataclass(frozen=True)
class JobOptions:
    """What `convert` and `sweep` share: the source, its data and how to open, judge and record it."""
    model: str | None
    data: str | None
    source: SourceOptions
    preprocessing: Preprocessing
    tolerance: Tolerance
    run: RunSettings
    mixed_precision: MixedPrecision
    qat: QatOptions
    quantizer: QuantizerOptions

    def open_args(self) -> dict:
        """``context.prepare`` keyword arguments (besides model and data)."""
        preprocessing = None if self.preprocessing == Preprocessing() else self.preprocessing
        return {"task": self.run.task, "preprocessing": preprocessing, "tensor_errors": not self.run.no_tensor_errors,
                "tolerance": self.tolerance, "mixed_precision": self.mixed_precision, "qat": self.qat,
                **asdict(self.source)}


def _job_options(command):
    """The options of :class:`JobOptions`, from the dataclasses' fields, plus ``--config``."""
    for cls in (QuantizerOptions, QatOptions, MixedPrecision, RunSettings, Tolerance, Preprocessing, SourceOptions):
        command = click_options(cls)(command)
    command = click.option("--user-dir", default=None, hidden=True,
                           help="Directory relative model/data/config paths are read from (the MLproject passes "
                                "the directory `mlflow run` was started in).")(command)
    command = click.option("--config", default="none", show_default=True,
                           help="YAML file of expert options: sections " + ", ".join(CONFIG_SECTIONS) + ", sweep.")(command)
    command = click.option("--data", default="demo", show_default=True,
                           help=".npz with x_train/y_train/x_test/y_test (or x/y), .npy, image folder, digits, or demo.")(command)
    return click.option("--model", default="demo", show_default=True,
                        help="A .keras/.h5 file, SavedModel directory, frozen graph, MLflow model URI, or demo.")(command)


def _variant_options(command):
    """The variant options `convert` and `sweep` share (the grid lists are per command)."""
    command = click.option("--backend", default="converter", type=choice(Backend), show_default=True,
                           help="converter (TFLiteConverter) or litert (LiteRT Quantizer on the float model).")(command)
    command = click.option("--io-type", default="int8", type=choice(IoType), show_default=True,
                           help="I/O type of int8_full: int8, or uint8 (Edge TPU).")(command)
    command = click.option("--ops", default="builtins", type=choice(OpsSet), show_default=True,
                           help="builtins, or select_tf for SELECT_TF_OPS.")(command)
    return click.option("--calibration-samples", default=200, type=number(int, 0, low_open=True, example=200,
                        hint=" (100-500 is typical)"), show_default=True,
                        help="Representative dataset size.")(command)


def _read_job_options(kwargs: dict) -> tuple[JobOptions, dict]:
    """Pop the shared options from a command's arguments; a config file fills what was not typed.

    Returns:
        ``(JobOptions, the config file's sweep section)`` (``SweepConfig`` fields, e.g. ``ray_address``).
    """
    user_dir = kwargs.pop("user_dir")
    paths = {key: _from_user_dir(kwargs.pop(key), user_dir) for key in ("model", "data", "config")}
    config = load_config(paths["config"], {**CONFIG_SECTIONS, "sweep": SweepConfig})
    return JobOptions(
        given(paths["model"]), given(paths["data"]),
        *(from_kwargs(cls, kwargs, config[name]) for name, cls in CONFIG_SECTIONS.items()),
    ), config["sweep"]


def _from_user_dir(value: str | None, user_dir: str | None) -> str | None:
    """A relative path that exists under ``user_dir``, made absolute there (``mlflow run`` starts
    the entry point in the project directory, not where the user typed the path); anything else
    (placeholders, ``digits``, URIs, absolute paths, names found only here) unchanged."""
    if not user_dir or given(value) is None or value == "digits" or Path(value).is_absolute():
        return value
    candidate = Path(user_dir) / value
    return str(candidate) if candidate.exists() else value


def _check_mode_options(job: JobOptions, quants) -> None:
    """Options of int8_mixed / qat_int8 given without that mode would be silently ignored: refuse them.

    Raises:
        TFLiteError: names the options, the modes requested and what to do.
    """
    quants = {QuantMode(q) for q in quants}
    for options, mode in ((job.mixed_precision, QuantMode.INT8_MIXED), (job.qat, QuantMode.QAT_INT8)):
        changed = [f"{k}={','.join(v) if isinstance(v, tuple) else v}" for k, v in asdict(options).items()
                   if v != getattr(type(options)(), k)]
        if changed and mode not in quants:
            raise TFLiteError(f"{', '.join(changed)} only apply to quant={mode}, but quant is "
                              f"{','.join(sorted(quants))}; add {mode} to quant or leave them out")


def _one_algorithm(options: QuantizerOptions):
    """``convert`` makes one variant: one algorithm (a list is for ``sweep``)."""
    if len(options.algorithm) != 1:
        raise TFLiteError(f"convert takes one algorithm, got algorithm={','.join(options.algorithm)}; "
                          "pass one, or run sweep to compare several")
    return options.algorithm[0]


def _input_size(value: str | int | None) -> int | None:
    """'native' / None -> None; '96' -> 96; '0', '-5', '96.5', 'inf', 'abc' -> a one-line error."""
    if given(value) is None:
        return None
    if str(value).strip() in ("0", "0.0"):  # not a size: "the native size" is spelled native
        raise TFLiteError("input_size=0 is not a size; pass native for the model's own input size, or e.g. 96")
    return number(int, 1, example=96, hint=", or native").parse_as(str(value), "input_size")


def _check_and_start(job: JobOptions) -> None:
    """Before expensive work: the tracking store answers; then TensorFlow starts quietly."""
    check_tracking_store()
    start_tensorflow()


@cli.command()
@_job_options
@_variant_options
@click.option("--quant", default="int8", type=choice(QuantMode), show_default=True,
              help=", ".join(QuantMode) + " (weight_only_int8, dynamic_int4, weight_only_int4: backend=litert).")
@click.option("--sparsity", default=0.0, type=number(float, example=0.5), show_default=True,
              help="Target pruned fraction in [0, 1).")
@click.option("--input-size", default="native", show_default=True, help="Square input side in pixels, or native.")
def convert(quant, sparsity, input_size, calibration_samples, ops, io_type, backend, **kwargs):
    """Convert one variant, evaluate it and log it as an MLflow run (the `main` entry point)."""
    job, _ = _read_job_options(kwargs)
    requested_size = _input_size(input_size)
    algorithm = _one_algorithm(job.quantizer)
    Variant(quant, sparsity, requested_size, calibration_samples, ops, io_type, backend, algorithm)  # before any work
    _check_mode_options(job, [quant])
    _check_and_start(job)
    context = prepare(job.model, job.data, **job.open_args())
    check_sizes_fit(context.dataset, [requested_size])  # before the run: resized images that cannot fit in memory
    variant = Variant(quant, sparsity, requested_size or context.native_input_size, calibration_samples, ops, io_type,
                      backend, algorithm)
    result = run_variant(context, variant, job.run.registered_model_name, job.run.num_threads,
                         register=not job.run.no_register, tolerance=job.tolerance)
    _print_result(result)


@cli.command()
@_job_options
@_variant_options
@click_options(SweepConfig)
@click.option("--quant", default="none,dynamic,float16,int8", show_default=True, help="Comma-separated modes.")
@click.option("--sparsity", default="auto", show_default=True,
              help="Comma-separated target sparsities, or auto: 0,0.5,0.8 for a tf_keras source (the demo, .h5, "
                   ".keras, MLflow models), 0 for one TFMOT cannot prune (SavedModel, frozen graph, PyTorch).")
@click.option("--input-size", default="native", show_default=True, help="Comma-separated input sizes, or native.")
def sweep(quant, sparsity, input_size, calibration_samples, ops, io_type, backend, **kwargs):
    """Run a grid of variants as child runs of one parent run; register the best (`sweep` entry point)."""
    job, sweep_config = _read_job_options(kwargs)
    sizes = [_input_size(v) for v in parse_list(input_size, "input_size", example="native,96")]
    sparsities = (default_sparsities(job.model, job.source.source_format) if sparsity.strip() == "auto"
                  else parse_list(sparsity, "sparsity", float, example="0,0.5,0.8"))
    variants = expand_grid(parse_list(quant, "quant"), list(sparsities),
                           sizes, calibration_samples, ops, io_type, backend, job.quantizer.algorithm)
    _check_mode_options(job, [v.quant for v in variants])
    config = SweepConfig(
        variants, job.model, job.data, job.open_args(), tolerance=job.tolerance,
        registered_model_name=job.run.registered_model_name, num_threads=job.run.num_threads,
        register=not job.run.no_register, **pop_fields(SweepConfig, kwargs, sweep_config),
    )
    result = run_sweep(config)  # it checks the tracking store while its workers start
    for row in result.rows:
        shown = summary(row.metrics, ("accuracy_drop", "size_bytes", "latency_ms_p50"))
        missed = "" if row.tolerance_met else "  (tolerance not met: never selected)"
        click.echo(f"  {row.variant:<40} {row.status:<9} {shown or row.error}{missed}")
        if row.size_warning:
            click.echo(f"    warning: {row.size_warning}")
    click.echo(f"sweep run {result.parent_run_id}: {result.message}")
    if result.registration:
        _echo_registration(result.registration)
        if result.registration.objective != config.objective:
            click.echo(f"note: {result.registration.name}'s champion is decided by its objective "
                       f"{result.registration.objective} (set by its first registration), not by this sweep's "
                       f"{config.objective}; `mlflow-tflite promote --objective {config.objective}` changes it")


@cli.command()
@click_options(Tolerance)
@click.option("--model-uri", required=True, help="A logged tflite model: runs:/<run_id>/model or models:/m-<id>.")
@click.option("--registered-model-name", required=True, type=model_name(optional=False), help="Registry name.")
@click.option("--objective", default=None, type=choice(Objective),
              help="Change the registered model's objective (" + ", ".join(Objective) + "); default: keep it.")
def promote(model_uri, registered_model_name, objective, **kwargs):
    """Register a logged model; it becomes champion only if within tolerance and it beats the champion."""
    tolerance = from_kwargs(Tolerance, kwargs)
    check_tracking_store()
    _echo_registration(promote_logged_model(model_uri, registered_model_name, tolerance, objective))


@cli.command()
@click.argument("model", metavar="RUN_ID|MODEL_URI")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Port on 127.0.0.1; default: a free one.")
@click.option("--no-browser", is_flag=True, help="Print the URL without opening a browser.")
def explore(model, port, no_browser):
    """Open a variant's graph in Model Explorer, coloured by its per-tensor SNR (extra [explorer])."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # bars would break the one-line output
    require_model_explorer()
    check_tracking_store()
    with downloaded(model, port) as session:
        click.echo(f"run {session.run_id}: {session.model_file.name}, SNR of {session.tensors} tensors against the "
                   f"float model: {bands_legend()}; Ctrl-C stops Model Explorer")
        serve(session, open_browser=not no_browser)


def _print_result(result) -> None:
    metrics = result.metrics
    click.echo(f"run {result.run_id} variant {result.variant.name}: {summary(metrics)}")
    if result.message:
        click.echo(f"int8_mixed: {result.message}")
    if result.size_warning:
        click.echo(f"warning: {result.size_warning}")
    if "latency_ms_p50" not in metrics:

        click.echo(f"not evaluated or registered: see the run's tag {NOT_EVALUATED_TAG}")
    if result.registration:
        _echo_registration(result.registration)


def _echo_registration(r) -> None:
    """One line: the registered version and the alias it took, with the reason."""
    click.echo(f"registered {r.name} version {r.version}; {r.reason}")


def main():
    """Entry point for ``python -m mlflow_tflite.cli``."""
    cli(prog_name="mlflow-tflite")


if __name__ == "__main__":
    main()
