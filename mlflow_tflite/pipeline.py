"""One variant end to end: source -> convert -> evaluate -> log -> register.

:func:`prepare` does the work every variant shares (open the source, load and check the data,
draw the representative dataset, compute the source model's reference outputs) once;
:func:`run_variant` does the rest for one variant inside its own MLflow run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mlflow
import numpy as np

from mlflow_tflite import convert, evaluate, selection, tracking
from mlflow_tflite.data import Dataset, calibration_sample, load_dataset, validate_dataset
from mlflow_tflite.errors import TFLiteError
from mlflow_tflite.sources import Source, open_source
from mlflow_tflite.variants import Variant

DEMO_URI = "demo:digits-cnn"


@dataclass
class Prepared:
    """Shared inputs of every variant of one source.

    Attributes:
        source: the opened model.
        dataset: its data (``None`` when a model is given without data).
        reference: source outputs on ``dataset.x_test`` (one float32 array per output).
    """

    source: Source
    dataset: Dataset | None
    reference: list[np.ndarray] | None

    def calibration(self, samples: int) -> np.ndarray | None:
        """``samples`` rows of the train split (the representative dataset), or ``None`` without data."""
        return None if self.dataset is None else calibration_sample(self.dataset.x_train, samples)

    @property
    def native_input_size(self) -> int | None:
        """Side of a square image input (e.g. 8 for digits), or ``None`` for other inputs."""
        shape = self.source.input_shapes[0]
        return shape[1] if len(shape) == 4 and shape[1] == shape[2] and shape[1] > 0 else None


def prepare(model: Any = None, data: str | None = None) -> Prepared:
    """Open the source and data and compute the reference outputs.

    With neither ``model`` nor ``data``, trains the digits demo CNN (``demo.py``).

    Raises:
        TFLiteError: a bad model path or format, data missing for a demo-less model, or data
            that does not fit the model (see ``data.validate_dataset``).
    """
    if model in (None, "") and data in (None, ""):
        from mlflow_tflite.demo import DEMO_MODEL_NAME, train_digits_cnn
        from mlflow_tflite.sources import from_tf_keras

        dataset = load_dataset(None)
        source = from_tf_keras(train_digits_cnn(dataset), uri=DEMO_URI)
        source.name = DEMO_MODEL_NAME
    elif model in (None, ""):
        raise TFLiteError(f"data {data!r} was given without a model; pass model too (or neither for the demo)")
    else:
        source = open_source(model)
        dataset = load_dataset(data) if data else None
    if dataset is None:
        return Prepared(source, None, None)
    validate_dataset(dataset, source.input_shapes[0], source.num_classes)
    return Prepared(source, dataset, source.predict([dataset.x_test]))


@dataclass(frozen=True)
class VariantResult:
    """What one variant produced: its run id, metrics and (if registered) its registration."""

    run_id: str
    variant: Variant
    metrics: dict[str, float]
    model_uri: str
    registration: selection.Registration | None


def _probe_input(source: Source) -> np.ndarray:
    """A zero example for latency timing when there is no data."""
    shape = [1 if d == -1 else d for d in source.input_shapes[0]]
    return np.zeros(shape, np.float32)


def variant_metrics(prepared: Prepared, tflite_model: bytes, num_threads: int) -> dict[str, float]:
    """Evaluate a converted model on the prepared test split (size and latency only without data)."""
    if prepared.dataset is None:
        interpreter_metrics = evaluate.size_metrics(tflite_model)
        from mlflow_tflite import runtime

        interpreter = runtime.make_interpreter(tflite_model, num_threads)
        return {**interpreter_metrics, **runtime.measure_latency(interpreter, [_probe_input(prepared.source)])}
    return evaluate.evaluate(
        tflite_model, prepared.reference, [prepared.dataset.x_test], prepared.dataset.y_test, num_threads
    )


def run_variant(
    prepared: Prepared,
    variant: Variant,
    registered_model_name: str | None = None,
    num_threads: int = 1,
    register: bool = True,
    nested: bool = False,
) -> VariantResult:
    """Convert, evaluate and log one variant as an MLflow run; register it if asked.

    Args:
        prepared: shared inputs from :func:`prepare`.
        variant: the variant (its ``input_size`` is the native size or ``None``).
        registered_model_name: registry name; default the source's name (``digits-cnn``).
        num_threads: LiteRT interpreter threads for latency and the pyfunc.
        register: register the model version and apply the ``champion`` alias guard.
        nested: start the run as a child of the active run (sweeps).

    Returns:
        :class:`VariantResult`.

    Raises:
        TFLiteError: the conversion failed or the data cannot calibrate the variant; the run
            is then FAILED with the message and nothing is registered.
    """
    with tracking.variant_run(variant, nested=nested) as run:
        tracking.log_params_once(tracking.variant_params(variant, prepared.source.uri, num_threads))
        calibration = prepared.calibration(variant.calibration_samples) if variant.calibrated else None
        conversion = convert.convert(prepared.source, variant, None if calibration is None else [calibration])
        metrics = {**variant_metrics(prepared, conversion.tflite_model, num_threads)}
        metrics["convert_seconds"] = conversion.convert_seconds
        mlflow.log_metrics(metrics)
        eval_digest = tracking.log_dataset_inputs(prepared.dataset, calibration) if prepared.dataset else None
        example = prepared.dataset.x_test[:2] if prepared.dataset else _probe_input(prepared.source)
        model_info = tracking.log_variant_model(conversion.tflite_model, variant, example, num_threads)
        registration = None
        if register:
            name = registered_model_name or prepared.source.name
            registration = selection.register_and_promote(
                model_info.model_uri, name, metrics, eval_digest, variant.name
            )
            mlflow.set_tags({"mlflow_tflite.registered_model": name, "mlflow_tflite.registered_version": registration.version})
    return VariantResult(run.info.run_id, variant, metrics, model_info.model_uri, registration)
