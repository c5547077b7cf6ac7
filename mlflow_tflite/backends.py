"""A variant's .tflite through its quantization backend, and its per-tensor error.

``converter``: one ``TFLiteConverter`` call per variant (``convert.py``). ``litert``: one float
conversion per (source, input size, sparsity), shared by every mode of that key through
``Prepared.float_models``, then the LiteRT Quantizer recipe (``quantize.py``). Either way a
quantized variant is compared tensor by tensor with the float model of the same key.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from mlflow_tflite import convert, quantize
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
    """Make the variant's .tflite with its backend (see module doc).

    Raises:
        TFLiteError: the conversion or the quantization failed (one line, names the backend).
    """
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
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors.*")
        try:
            return quantize.tensor_errors(float_bytes, tflite_model, x_test, source.input_names), None
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
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors.*")
        try:
            rows = quantize.tensor_errors(float_bytes, tflite_model, x_test, reference.input_names)
        except TFLiteError as error:
            return None, f"{what}: {error.message}"
    if not rows:
        return None, f"{what}: no tensor has the same name in both models"
    return rows, f"{what}: {len(rows)} tensors share a name"
