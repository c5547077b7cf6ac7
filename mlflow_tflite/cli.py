"""``mlflow-tflite`` command line (click): convert one variant; more commands per pipeline stage.

Errors of this project print as one line (``Error: ...``) and exit with status 1.
"""

from __future__ import annotations

import os

import click

from mlflow_tflite.errors import TFLiteError
from mlflow_tflite.quiet import start_tensorflow

# TensorFlow's C++ INFO/WARNING lines drown the CLI's own output; a user's setting wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# No network at run time: MLflow's usage telemetry stays off unless the user turns it on.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


# MLproject defaults: words rather than empty strings, which MLflow would log as "''".
DEMO = "demo"
NATIVE = "native"
AUTO = "auto"


def _given(value: str | None) -> str | None:
    """None for an unset path or name ('', 'demo', 'auto'), else the value."""
    return None if value in (None, "", DEMO, AUTO) else value


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


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
            raise click.ClickException(f"MLflow: {_first_line(error.message)}") from None
        except Exception as error:
            if os.environ.get("MLFLOW_TFLITE_TRACEBACK"):
                raise
            raise click.ClickException(f"{type(error).__name__}: {_first_line(error)}") from None


@click.group(cls=_OneLineErrors)
@click.version_option(package_name="mlflow-tflite")
def cli():
    """Convert TensorFlow models to TFLite variants tracked in MLflow."""


def _optional_int(value: str | int | None, name: str) -> int | None:
    """'' / None / 0 -> None; '96' -> 96; anything else -> a one-line error."""
    if value in (None, "", "0", 0, NATIVE):
        return None
    try:
        return int(float(value))
    except ValueError:
        raise TFLiteError(f"{name} {value!r} is not a whole number; pass e.g. 96, or nothing for the native size") from None


def _shared_options(command):
    """The options `convert` and `sweep` share (DESIGN.md: the same parameter names)."""
    options = [
        click.option("--model", default=DEMO, show_default=True,
                     help="A .keras/.h5 file or SavedModel directory, or demo."),
        click.option("--data", default=DEMO, show_default=True,
                     help=".npz with x_train/y_train/x_test/y_test (or x/y), digits, or demo."),
        click.option("--calibration-samples", default=200, type=int, show_default=True,
                     help="Representative dataset size."),
        click.option("--ops", default="builtins", show_default=True, help="builtins, or select_tf for SELECT_TF_OPS."),
        click.option("--io-type", default="int8", show_default=True,
                     help="I/O type of int8_full: int8, or uint8 (Edge TPU)."),
        click.option("--registered-model-name", default=AUTO, show_default=True,
                     help="Registry name; auto derives it from the source (digits-cnn for the demo)."),
        click.option("--num-threads", default=1, type=int, show_default=True, help="LiteRT threads for latency/pyfunc."),
        click.option("--max-accuracy-drop", default=0.01, type=float, show_default=True,
                     help="Tolerance: accuracy_drop (labels) or 1 - agreement (no labels), absolute fraction."),
        click.option("--min-cosine-similarity", default=0.99, type=float, show_default=True,
                     help="Tolerance without labels: mean cosine similarity to the source outputs."),
        click.option("--max-relative-error", default="none", show_default=True,
                     help="Tolerance without labels: relative L2 error to the source outputs, or none."),
        click.option("--no-register", is_flag=True, help="Log the run(s) but do not register a model."),
        click.option("--task", default="auto", show_default=True,
                     help="classification, fidelity (regression/embeddings/detection), or auto."),
        click.option("--source-format", default=AUTO, show_default=True,
                     help="keras, h5, saved_model, frozen_graph, mlflow, or auto (detected)."),
        click.option("--signature-key", default="serving_default", show_default=True, help="SavedModel signature."),
        click.option("--input-arrays", default="", help="Frozen graph input node names, comma-separated."),
        click.option("--output-arrays", default="", help="Frozen graph output node names, comma-separated."),
        click.option("--input-shapes", default="", help="Frozen graph shapes: name:1,224,224,3;other:1,10"),
        click.option("--resize", default=NATIVE, show_default=True, help="Resize images to this square side, or native."),
        click.option("--scale", default=1.0, type=float, show_default=True, help="Multiply raw values (1/255 = 0.00392...)."),
        click.option("--mean", default="", help="Per-channel mean to subtract after scaling, comma-separated."),
        click.option("--std", default="", help="Per-channel std to divide by, comma-separated."),
        click.option("--channels", default=AUTO, show_default=True, help="Image folder channels: 1, 3 or auto."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@cli.command()
@_shared_options
@click.option("--quant", default="int8", show_default=True, help="none, dynamic, float16, int8, int8_full, int16x8.")
@click.option("--sparsity", default=0.0, type=float, show_default=True, help="Target pruned fraction in [0, 1).")
@click.option("--input-size", default=NATIVE, show_default=True, help="Square input side in pixels, or native.")
def convert(model, data, quant, sparsity, input_size, calibration_samples, ops, io_type, registered_model_name,
            num_threads, max_accuracy_drop, min_cosine_similarity, max_relative_error, no_register, task,
            source_format, signature_key, input_arrays, output_arrays, input_shapes, resize, scale, mean, std,
            channels):
    """Convert one variant, evaluate it and log it as an MLflow run (the `main` entry point)."""
    from mlflow_tflite.pipeline import prepare, run_variant
    from mlflow_tflite.tracking import check_tracking_store
    from mlflow_tflite.variants import Variant

    requested_size = _optional_int(input_size, "input_size")
    # Check the parameters and the tracking store before any expensive work.
    Variant(quant, sparsity, requested_size, calibration_samples, ops, io_type)
    if num_threads < 1:
        raise TFLiteError(f"num_threads={num_threads} must be >= 1")
    tolerance = _tolerance(max_accuracy_drop, min_cosine_similarity, max_relative_error)
    options = _open_options(task, source_format, signature_key, input_arrays, output_arrays, input_shapes, resize,
                            scale, mean, std, channels)
    check_tracking_store()
    start_tensorflow()
    prepared = prepare(_given(model), _given(data), **options)
    variant = Variant(quant, sparsity, requested_size or prepared.native_input_size, calibration_samples, ops, io_type)
    result = run_variant(prepared, variant, _given(registered_model_name), num_threads, register=not no_register,
                         tolerance=tolerance)
    _print_result(result)


def _tolerance(max_accuracy_drop: float, min_cosine_similarity: float, max_relative_error: str):
    from mlflow_tflite.selection import Tolerance

    return Tolerance(max_accuracy_drop, min_cosine_similarity,
                     _optional_float(max_relative_error, "max_relative_error"))


def _floats(value: str, name: str) -> tuple[float, ...] | None:
    if value in ("", "none"):
        return None
    try:
        return tuple(float(v) for v in value.split(","))
    except ValueError:
        raise TFLiteError(f"{name} {value!r} is not a comma-separated list of numbers, e.g. 0.485,0.456,0.406") from None


def _input_shapes(value: str) -> dict[str, tuple[int, ...]] | None:
    """'a:1,8,8,1;b:1,4' -> {'a': (1, 8, 8, 1), 'b': (1, 4)}."""
    if value in ("", "none"):
        return None
    shapes = {}
    for part in value.split(";"):
        name, _, dims = part.partition(":")
        try:
            shapes[name.strip()] = tuple(int(d) for d in dims.split(","))
        except ValueError:
            raise TFLiteError(f"input_shapes part {part!r} is not name:d1,d2,...; e.g. input:1,224,224,3") from None
    return shapes


def _open_options(task, source_format, signature_key, input_arrays, output_arrays, input_shapes, resize, scale,
                  mean, std, channels) -> dict:
    """`pipeline.prepare` keyword arguments from the shared CLI options."""
    from mlflow_tflite.data import Preprocessing

    preprocessing = Preprocessing(
        _optional_int(resize, "resize"), scale, _floats(mean, "mean"), _floats(std, "std"),
        None if channels in ("", AUTO) else _optional_int(channels, "channels"),
    )
    split = lambda v: None if v in ("", "none") else [n.strip() for n in v.split(",") if n.strip()] or None  # noqa: E731
    return {
        "task": task,
        "preprocessing": None if preprocessing == type(preprocessing)() else preprocessing,
        "source_format": _given(source_format),
        "signature_key": signature_key,
        "input_arrays": split(input_arrays),
        "output_arrays": split(output_arrays),
        "input_shapes": _input_shapes(input_shapes),
    }


def _optional_float(value: str | float | None, name: str) -> float | None:
    """'' / 'none' / None -> None; '65536' -> 65536.0; anything else -> a one-line error."""
    if value in (None, "", "none"):
        return None
    try:
        return float(value)
    except ValueError:
        raise TFLiteError(f"{name} {value!r} is not a number; pass e.g. 100000, or none for no budget") from None


@cli.command()
@_shared_options
@click.option("--quant", default="none,dynamic,float16,int8", show_default=True, help="Comma-separated modes.")
@click.option("--sparsity", default="0,0.5,0.8", show_default=True, help="Comma-separated target sparsities.")
@click.option("--input-size", default=NATIVE, show_default=True, help="Comma-separated input sizes, or native.")
@click.option("--objective", default="latency", show_default=True, help="latency, size or accuracy.")
@click.option("--max-size-bytes", default="none", show_default=True, help="Size budget in bytes, or none.")
@click.option("--max-latency-ms", default="none", show_default=True, help="Latency p50 budget in ms, or none.")
@click.option("--workers", default=1, type=int, show_default=True, help="Worker processes.")
@click.option("--resume", default="", help="Parent run id of an interrupted sweep: FINISHED variants are skipped.")
def sweep(model, data, quant, sparsity, input_size, calibration_samples, ops, io_type, objective,
          max_size_bytes, max_latency_ms, registered_model_name, workers, num_threads, max_accuracy_drop,
          min_cosine_similarity, max_relative_error, resume, no_register, task, source_format, signature_key,
          input_arrays, output_arrays, input_shapes, resize, scale, mean, std, channels):
    """Run a grid of variants as child runs of one parent run; register the best (`sweep` entry point)."""
    from mlflow_tflite.sweep import SweepConfig, run_sweep
    from mlflow_tflite.tracking import check_tracking_store
    from mlflow_tflite.variants import expand_grid, parse_list

    sizes = [_optional_int(v, "input_size") for v in parse_list(input_size, "input_size")]
    variants = expand_grid(
        parse_list(quant, "quant"), parse_list(sparsity, "sparsity", float), sizes, calibration_samples, ops, io_type
    )
    options = _open_options(task, source_format, signature_key, input_arrays, output_arrays, input_shapes, resize,
                            scale, mean, std, channels)
    config = SweepConfig(
        variants, _given(model), _given(data), options, objective,
        _tolerance(max_accuracy_drop, min_cosine_similarity, max_relative_error),
        _optional_float(max_size_bytes, "max_size_bytes"), _optional_float(max_latency_ms, "max_latency_ms"),
        _given(registered_model_name), workers, num_threads, None if resume in ("", "none") else resume,
        not no_register,
    )
    check_tracking_store()
    start_tensorflow()
    result = run_sweep(config)
    for row in result.rows:
        shown = ", ".join(f"{k}={row['metrics'][k]:.4g}" for k in ("accuracy_drop", "size_bytes", "latency_ms_p50")
                          if k in row["metrics"])
        click.echo(f"  {row['variant']:<28} {row['status']:<9} {shown or row['error']}")
    click.echo(f"sweep run {result.parent_run_id}: {result.message}")
    if result.registration:
        _echo_registration(result.registration)


@cli.command()
@click.option("--model-uri", required=True, help="A logged tflite model: runs:/<run_id>/model or models:/m-<id>.")
@click.option("--registered-model-name", required=True, help="Registry name.")
@click.option("--max-accuracy-drop", default=0.01, type=float, show_default=True, help="Tolerance (see convert).")
@click.option("--min-cosine-similarity", default=0.99, type=float, show_default=True, help="Tolerance (see convert).")
@click.option("--max-relative-error", default="none", show_default=True, help="Tolerance (see convert).")
def promote(model_uri, registered_model_name, max_accuracy_drop, min_cosine_similarity, max_relative_error):
    """Register a logged model; it becomes champion only if within tolerance and it beats the champion."""
    from mlflow_tflite.registry import promote_logged_model
    from mlflow_tflite.tracking import check_tracking_store

    tolerance = _tolerance(max_accuracy_drop, min_cosine_similarity, max_relative_error)
    check_tracking_store()
    _echo_registration(promote_logged_model(model_uri, registered_model_name, tolerance))


def _print_result(result) -> None:
    metrics = result.metrics
    shown = ", ".join(
        f"{key}={metrics[key]:.4g}"
        for key in ("accuracy", "accuracy_drop", "agreement", "size_bytes", "latency_ms_p50")
        if key in metrics
    )
    click.echo(f"run {result.run_id} variant {result.variant.name}: {shown}")
    if "latency_ms_p50" not in metrics:
        click.echo("not evaluated or registered: see the run's tag mlflow_tflite.not_evaluated")
    if result.registration:
        _echo_registration(result.registration)


def _echo_registration(r) -> None:
    """One line: the registered version and the alias it took, with the reason."""
    click.echo(f"registered {r.name} version {r.version} ({'champion' if r.champion else 'challenger'}: {r.reason})")


def main():
    """Entry point for ``python -m mlflow_tflite.cli``."""
    cli(prog_name="mlflow-tflite")


if __name__ == "__main__":
    main()
