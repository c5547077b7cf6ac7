"""One variant's work as a function of values: ``(context, build graph, variant) -> Outcome``.

Build the variant's model (``build.graph``), make its .tflite (``build.produce``), read the
flatbuffer once (``measure.inspect``), evaluate it against the source's reference outputs and
compare it tensor by tensor with its float model, and run it in TFLite Micro (``measure.tflm``).
No MLflow calls and no latency here: latency is timed later in a quiet phase
(``measure.latency``), and the run is logged by the caller.
"""

from __future__ import annotations

import numpy as np

from mlflow_tflite.build.data import calibration_sample
from mlflow_tflite.build.graph import Builds, ModelKey
from mlflow_tflite.build.mixed import rank_groups
from mlflow_tflite.build.produce import MixedSearch, Produced, mixed_search, produce
from mlflow_tflite.build.qat import qat_params
from mlflow_tflite.build.source import Source
from mlflow_tflite.errors import TFLiteError
from mlflow_tflite.flavor.runtime import make_interpreter
from mlflow_tflite.measure.evaluate import evaluate, size_metrics
from mlflow_tflite.measure.inspect import Inspection, inspect
from mlflow_tflite.measure.size import size_warning
from mlflow_tflite.measure.tensors import tensor_errors
from mlflow_tflite.measure import tflm
from mlflow_tflite.quant_modes import Kernels, QuantMode
from mlflow_tflite.sweep.context import Context
from mlflow_tflite.sweep.outcome import Outcome
from mlflow_tflite.variants import Variant


def variant_work(context: Context, builds: Builds, variant: Variant) -> Outcome:
    """Convert the variant's model and measure it against the original source (no latency yet).

    Accuracy and fidelity compare the variant (on test images at its input size) with the
    source model's reference outputs, so resizing and pruning losses both show. ``int8_mixed``
    searches the layer groups to take out of int8 first; the chosen trial is the model.

    Args:
        context: the source, data and reference outputs (``context.prepare``).
        builds: the build graph of ``context.source`` (models may have been built elsewhere).
        variant: the variant; an ``input_size`` of ``None`` means the native size.

    Returns:
        :class:`~mlflow_tflite.sweep.outcome.Outcome`.

    Raises:
        TFLiteError: building, conversion or quantization failed, or a calibrated mode has no data.
    """
    key = ModelKey.of(variant, context.native_input_size)
    source = builds.model(key)
    x_train, x_test = builds.data(key)
    calibration = None
    if variant.calibrated and x_train is not None:
        calibration = calibration_sample(x_train, variant.calibration_samples)
    search, table_note = None, _table_note(context, variant, x_test)
    if variant.recipe.mixed:
        produced, search = mixed_search(builds, variant, key, calibration, _mixed_search(context, source, x_test))
    else:
        produced = produce(builds, variant, key, calibration, with_float=table_note is None)
    inspection = inspect(produced.tflite_model, _integer_kernels(variant))
    example = _example(source, x_test) if x_test else _probe_input(source)
    common = dict(calibration=calibration, input_example=example, op_inventory=inspection.op_inventory,
                  recipe_json=produced.recipe_json, edgetpu=inspection.edgetpu,
                  size_warning=_size_warning(builds, variant, key, produced))
    try:
        interpreter = make_interpreter(produced.tflite_model)
    except TFLiteError as error:
        if not inspection.flex_ops:
            raise
        metrics = {**size_metrics(produced.tflite_model), **produced.seconds, "float_ops": inspection.float_ops}
        return Outcome(produced.tflite_model, metrics, not_evaluated=error.message, **common)
    metrics = {**_measure(context, source, x_test, produced.tflite_model, inspection, interpreter), **produced.seconds}
    # Every mode, float ones too: an arena budget compares the int8 arenas with the float ones.
    common["tflm"] = tflm.readiness(produced.tflite_model, x_test, source.input_names)
    metrics.update(tflm.metrics(common["tflm"]))
    rows, note = _tensor_table(builds, variant, key, produced, x_test, table_note)
    if rows:
        metrics["min_tensor_snr_db"] = rows[0]["snr_db"]
    return Outcome(produced.tflite_model, metrics, tensor_errors=rows, tensor_errors_note=note, search=search,
                   mode_params=qat_params(context.settings.qat) if variant.recipe.trained else {}, **common)


def _measure(context: Context, source: Source, x_test, tflite_model: bytes, inspection: Inspection | None,
             interpreter=None) -> dict[str, float]:
    """Size, float ops, sparsity, Edge TPU mapping and (with data) accuracy/fidelity of a flatbuffer."""
    inspection = inspection or inspect(tflite_model, False)
    metrics = {**size_metrics(tflite_model), "float_ops": inspection.float_ops,
               "sparsity_achieved": inspection.sparsity}
    if inspection.edgetpu:
        metrics["edgetpu_mapped_fraction"] = inspection.edgetpu["edgetpu_mapped_fraction"]
    if x_test is not None:
        metrics.update(evaluate(
            tflite_model, interpreter or make_interpreter(tflite_model), context.reference, x_test,
            context.dataset.y_test, input_names=source.input_names, output_names=source.output_names,
            class_outputs=context.class_outputs, task=context.task))
    return metrics


def _mixed_search(context: Context, source: Source, x_test) -> MixedSearch:
    """How ``int8_mixed`` judges each trial: on the test split, as every variant's reported metrics.

    Neural Compressor and NNCF judge their accuracy-aware searches on the user's validation set
    the same way. Train rows are no substitute: the model has fitted them (the demo's int8
    cosine similarity is 0.9999992 on train rows and 0.999989 on test rows), so they hide the
    loss the search must see.
    """
    if x_test is None:
        raise TFLiteError("quant=int8_mixed measures each trial against the source; pass data")

    def rank(float_bytes: bytes, full_int8: bytes):
        return rank_groups(tensor_errors(float_bytes, full_int8, x_test, source.input_names), float_bytes)

    return MixedSearch(lambda model: _measure(context, source, x_test, model, None), context.settings.tolerance.violation,
                       rank, context.settings.mixed_precision)


def _table_note(context: Context, variant: Variant, x_test) -> str | None:
    """Why the variant gets no per-tensor table, or ``None`` when it gets one."""
    if not context.settings.tensor_errors:
        return "skipped (no_tensor_errors)"
    if variant.quant == QuantMode.NONE:
        return "the float model"
    if x_test is None:
        return "no evaluation data"
    if variant.recipe.integer_io:
        return f"{variant.quant} has integer I/O; compare the int8 variant (same kernels, float I/O)"
    return None


def _tensor_table(builds: Builds, variant: Variant, key: ModelKey, produced: Produced, x_test,
                  note: str | None) -> tuple[list[dict] | None, str | None]:
    """Per-tensor error rows against the float model of the variant's key, or ``(None, note)`` with
    ``note`` (:func:`_table_note`) saying why there are none.

    The float model is the one the same conversion went through where there is one
    (``Produced.float_reference``), else the key's float flatbuffer.
    """
    if note is not None:
        return None, note
    if variant.recipe.trained:
        return _trained_tensor_errors(builds, variant, key, produced.tflite_model, x_test)
    reference = produced.float_reference or builds.float_model(key, variant.ops).tflite_model
    try:
        return tensor_errors(reference, produced.tflite_model, x_test, builds.model(key).input_names), None
    except TFLiteError as error:
        return None, error.message


def _trained_tensor_errors(builds: Builds, variant: Variant, key: ModelKey, tflite_model: bytes,
                           x_test) -> tuple[list[dict] | None, str]:
    """``qat_int8`` against the float model of the plain resized/pruned model of its key (the QAT
    model's own float conversion carries the fake quantization, so it is no reference). Only
    tensors with the same name in both are compared; the QAT model's layers are TFMOT wrappers
    (``quant_conv2d``...), so that may be only a few: the note says how many."""
    untrained = Variant(QuantMode.NONE, variant.sparsity, variant.input_size, ops=variant.ops)
    what = f"{variant.quant} compared with the float model of {untrained.name} (before quantization-aware training)"
    try:
        float_bytes = builds.float_model(key.base, variant.ops).tflite_model
        rows = tensor_errors(float_bytes, tflite_model, x_test, builds.model(key.base).input_names)
    except TFLiteError as error:
        return None, f"{what}: {error.message}"
    if not rows:
        return None, f"{what}: no tensor has the same name in both models"
    return rows, f"{what}: {len(rows)} tensors share a name"


def _size_warning(builds: Builds, variant: Variant, key: ModelKey, produced: Produced) -> str | None:
    """Why a quantized variant is larger than the float model of its source at its input size
    (``measure.size.size_warning``): the key's float flatbuffer, the ``none`` variant's model
    (of the model before quantization-aware training for ``qat_int8``)."""
    if variant.quant == QuantMode.NONE:
        return None
    float_model = builds.float_model(key.base if variant.recipe.trained else key, variant.ops).tflite_model
    return size_warning(float_model, produced.tflite_model, variant.quant)


def _integer_kernels(variant: Variant) -> bool:
    """The variant's kernels are int8 (Edge TPU readiness applies): int8, int8_full, int8_mixed, qat_int8."""
    return variant.recipe.kernels == Kernels.INT8 or variant.recipe.mixed


def _probe_input(source: Source) -> np.ndarray:
    """A zero example for latency timing when there is no data."""
    return np.zeros([1 if d == -1 else d for d in source.input_shapes[0]], np.float32)


def _example(source: Source, x_test: list[np.ndarray]):
    """Two test examples: an array for one input, a dict by input name for several."""
    if len(x_test) == 1:
        return x_test[0][:2]
    return {name: x[:2] for name, x in zip(source.input_names, x_test)}


def convert_and_evaluate(context: Context, variant: Variant, builds: Builds | None = None) -> Outcome:
    """:func:`variant_work` with a build graph of its own unless one is given (a Python caller's one variant).

    Raises:
        TFLiteError: see :func:`variant_work`.
    """
    return variant_work(context, builds or Builds(context.build_inputs()), variant)
