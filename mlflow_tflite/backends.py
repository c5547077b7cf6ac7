"""A variant's .tflite through its quantization backend, and its per-tensor error.

``converter``: one ``TFLiteConverter`` call per variant (``convert.py``). ``litert``: one float
conversion per (source, input size, sparsity), shared by every mode of that key through
``Prepared.float_models``, then the LiteRT Quantizer recipe (``quantize.py``). Either way a
quantized variant is compared tensor by tensor with the float model of the same key.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np

from mlflow_tflite import convert, mixed, quantize, tflite_file
from mlflow_tflite.errors import TFLiteError
from mlflow_tflite.quant_modes import Backend, QuantMode
from mlflow_tflite.variants import Variant


@dataclass(frozen=True)
class Produced:
    """A variant's flatbuffer, how long it took (seconds) and how it was made.

    Attributes:
        tflite_model: flatbuffer bytes.
        seconds: ``convert_seconds``, and for ``litert`` also ``float_convert_seconds`` (0.0 when
            the float model came from the cache) and ``quantize_seconds``.
        recipe_json: the LiteRT Quantizer recipe (JSON text), or ``None`` for the converter.
    """

    tflite_model: bytes
    seconds: dict[str, float]
    recipe_json: str | None = None


def float_model(prepared, variant: Variant, source) -> tuple[bytes, float]:
    """The float (``none``) flatbuffer of ``variant.model_key``, converted once per key.

    Returns:
        ``(flatbuffer bytes, seconds spent converting now)``: 0.0 when it came from the cache.
    """
    key = (variant.model_key, variant.ops)
    if key in prepared.float_models:
        return prepared.float_models[key], 0.0
    conversion = convert.convert(source, Variant(QuantMode.NONE, variant.sparsity, variant.input_size, ops=variant.ops))
    prepared.float_models[key] = conversion.tflite_model
    return conversion.tflite_model, conversion.convert_seconds


def produce(prepared, variant: Variant, source, calibration: list[np.ndarray] | None) -> Produced:
    """Make the variant's .tflite with its backend (see module doc); a ``static_batch`` mode gets batch 1.

    Raises:
        TFLiteError: the conversion or the quantization failed (one line, names the backend).
    """
    produced = _produce(prepared, variant, source, calibration)
    if not variant.recipe.static_batch:
        return produced
    return Produced(tflite_file.with_batch_one(produced.tflite_model), produced.seconds, produced.recipe_json)


def _produce(prepared, variant: Variant, source, calibration: list[np.ndarray] | None) -> Produced:
    if variant.backend == Backend.CONVERTER:
        conversion = convert.convert(source, variant, calibration)
        return Produced(conversion.tflite_model, {"convert_seconds": conversion.convert_seconds})
    float_bytes, float_seconds = float_model(prepared, variant, source)
    if variant.quant == QuantMode.NONE:
        seconds = {"float_convert_seconds": float_seconds, "quantize_seconds": 0.0}
        return Produced(float_bytes, {**seconds, "convert_seconds": float_seconds})
    quantization = quantize.quantize(float_bytes, variant, calibration, source.input_names)
    seconds = {"float_convert_seconds": float_seconds, "quantize_seconds": quantization.quantize_seconds}
    return Produced(quantization.tflite_model, {**seconds, "convert_seconds": sum(seconds.values())},
                    quantization.recipe_json)


def mixed_search(prepared, variant: Variant, source, calibration: list[np.ndarray] | None,
                 x_rank: list[np.ndarray] | None, measure) -> tuple[Produced, mixed.SearchResult]:
    """``int8_mixed``: search the layers to keep in float (``mixed.search``) with the variant's backend.

    The converter calibrates once and re-quantizes with denylisted nodes
    (``convert.SelectiveQuantizer``); the LiteRT Quantizer calibrates once and re-quantizes with
    ``NO_QUANTIZE`` rules (``quantize.quantize(keep_float=...)``). Layers are ranked by the
    per-tensor error of the full int8 model against the float model of the same key.

    Args:
        x_rank: inputs for the per-tensor comparison that ranks the layers (the first 16 are used).
        measure: flatbuffer bytes -> metrics (accuracy or fidelity, size, float ops).

    Returns:
        ``(Produced, SearchResult)``: the chosen trial's model; ``quantize_seconds`` sums the
        time spent calibrating and quantizing (not evaluating) over all trials.

    Raises:
        TFLiteError: no calibration or evaluation data, an unknown float layer name, or a
            quantization failure.
    """
    if calibration is None or x_rank is None:
        raise TFLiteError("quant=int8_mixed measures each trial against the source; pass data with training "
                          "(calibration) and test examples")
    float_bytes, float_seconds = float_model(prepared, variant, source)
    spent = [0.0]
    recipes: dict[tuple[str, ...], str] = {}
    if variant.backend == Backend.CONVERTER:
        started = time.perf_counter()
        selective = convert.SelectiveQuantizer(source, variant, calibration)
        spent[0] += time.perf_counter() - started
        make = selective
    else:
        calibrated: dict = {}

        def make(keep_float: tuple[str, ...]) -> bytes:
            result = quantize.quantize(float_bytes, variant, calibration, source.input_names, keep_float,
                                       calibrated.get("qsvs"))
            calibrated["qsvs"], recipes[keep_float] = result.calibration_result, result.recipe_json
            return result.tflite_model

    def timed(keep_float: tuple[str, ...]) -> bytes:
        started = time.perf_counter()
        try:
            return make(keep_float)
        finally:
            spent[0] += time.perf_counter() - started

    def rank(full_int8: bytes) -> list[mixed.Layer]:
        return mixed.rank_layers(_compare(float_bytes, full_int8, x_rank, source.input_names), float_bytes)

    result = mixed.search(timed, measure, prepared.tolerance.violation, rank, mixed.model_layers(float_bytes),
                          prepared.mixed_precision)
    seconds = {"float_convert_seconds": float_seconds, "quantize_seconds": spent[0]}
    return (Produced(result.chosen.tflite_model, {**seconds, "convert_seconds": sum(seconds.values())},
                     recipes.get(result.chosen.float_layers)), result)


def _compare(float_bytes: bytes, tflite_model: bytes, x_test: list[np.ndarray], input_names) -> list[dict]:
    """``quantize.tensor_errors`` without the interpreter's debugging-mode warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors.*")
        return quantize.tensor_errors(float_bytes, tflite_model, x_test, input_names)


def tensor_errors(prepared, variant: Variant, source, tflite_model: bytes,
                  x_test: list[np.ndarray] | None) -> tuple[list[dict] | None, str | None]:
    """Per-tensor error of a quantized variant against the float model of its key.

    Returns:
        ``(rows, None)`` (see ``quantize.tensor_errors``), or ``(None, reason)`` when there is
        nothing to compare: the float model itself, no data, or integer model I/O (the float
        model's inputs are float).
    """
    if variant.quant == QuantMode.NONE:
        return None, "the float model"
    if x_test is None:
        return None, "no evaluation data"
    if variant.recipe.integer_io:
        return None, f"{variant.quant} has integer I/O; compare the int8 variant (same kernels, float I/O)"
    if variant.recipe.trained:
        return _trained_tensor_errors(prepared, variant, tflite_model, x_test)
    float_bytes, _ = float_model(prepared, variant, source)
    try:
        return _compare(float_bytes, tflite_model, x_test, source.input_names), None
    except TFLiteError as error:
        return None, error.message


def _trained_tensor_errors(prepared, variant: Variant, tflite_model: bytes,
                           x_test: list[np.ndarray]) -> tuple[list[dict] | None, str]:
    """``qat_int8`` against the float model of the plain resized/pruned source of its size and
    sparsity (the QAT model's own float conversion carries the fake quantization, so it is no
    reference). Only tensors with the same name in both are compared; the QAT model's layers are
    TFMOT wrappers (``quant_conv2d``...), so that may be only a few: the note says how many."""
    from mlflow_tflite.pipeline import untrained_variant, variant_model

    untrained = untrained_variant(variant)
    reference = variant_model(prepared, untrained).source
    float_bytes, _ = float_model(prepared, untrained, reference)
    what = f"{variant.quant} compared with the float model of {untrained.name} (before quantization-aware training)"
    try:
        rows = _compare(float_bytes, tflite_model, x_test, reference.input_names)
    except TFLiteError as error:
        return None, f"{what}: {error.message}"
    if not rows:
        return None, f"{what}: no tensor has the same name in both models"
    return rows, f"{what}: {len(rows)} tensors share a name"
