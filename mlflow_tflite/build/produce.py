"""A variant's .tflite through its quantization backend.

``converter``: one ``TFLiteConverter`` call per variant (``convert.py``); the ``none`` variant is
the float flatbuffer of its key itself. ``litert``: the float flatbuffer of the variant's key
(``graph.Builds.float_model``, converted once per key and op set), then the LiteRT Quantizer
recipe (``quantize.py``). ``int8_mixed`` searches the layer groups to take out of int8
(``precision_search.search``) with either backend.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from mlflow_tflite.build import convert, mixed, precision_search, quantize, rules
from mlflow_tflite.build.graph import Builds, FloatModel, ModelKey
from mlflow_tflite.errors import TFLiteError
from mlflow_tflite.flavor import flatbuffer
from mlflow_tflite.quant_modes import Backend, QuantMode
from mlflow_tflite.variants import Variant


@dataclass(frozen=True)
class Produced:
    """A variant's flatbuffer, how long it took (seconds) and how it was made.

    Attributes:
        tflite_model: flatbuffer bytes.
        seconds: ``convert_seconds``, and where the work is split also ``float_convert_seconds``
            (0.0 when the float model was converted for another variant) and ``quantize_seconds``.
        recipe_json: the LiteRT Quantizer recipe (JSON text), or ``None`` for the converter.
        float_reference: a float flatbuffer made by the same conversion (the converter's
            calibrated model), to compare the variant with tensor by tensor; ``None`` otherwise.
    """

    tflite_model: bytes
    seconds: dict[str, float] = field(default_factory=dict)
    recipe_json: str | None = None
    float_reference: bytes | None = None


def _split(float_seconds: float, quantize_seconds: float) -> dict[str, float]:
    return {"float_convert_seconds": float_seconds, "quantize_seconds": quantize_seconds,
            "convert_seconds": float_seconds + quantize_seconds}


def produce(builds: Builds, variant: Variant, key: ModelKey, calibration: list[np.ndarray] | None,
            with_float: bool = False) -> Produced:
    """Make the variant's .tflite with its backend (see module doc); a ``static_batch`` mode gets batch 1.

    Args:
        builds: the source's build graph.
        variant: the variant; ``key`` its model key (``ModelKey.of``).
        calibration: representative dataset (one float32 ``(n, ...)`` array per input) or ``None``.
        with_float: the caller will compare the variant with its float model: a calibrated
            converter mode then keeps the calibrated float model of the same conversion.

    Raises:
        TFLiteError: the model could not be built, converted or quantized (one line).
    """
    produced = _produce(builds, variant, key, calibration, with_float)
    if not variant.recipe.static_batch:
        return produced
    return Produced(flatbuffer.with_batch_one(produced.tflite_model), produced.seconds, produced.recipe_json,
                    produced.float_reference)


def _produce(builds: Builds, variant: Variant, key: ModelKey, calibration, with_float: bool) -> Produced:
    if variant.quant == QuantMode.NONE:
        float_model = builds.float_model(key, variant.ops)
        if variant.backend == Backend.CONVERTER:
            return Produced(float_model.tflite_model, {"convert_seconds": float_model.seconds})
        return Produced(float_model.tflite_model, _split(float_model.seconds, 0.0))
    if variant.backend == Backend.CONVERTER:
        conversion = convert.convert(builds.model(key), variant, calibration, keep_float=with_float)
        return Produced(conversion.tflite_model, {"convert_seconds": conversion.convert_seconds},
                        float_reference=conversion.float_model)
    float_model = builds.float_model(key, variant.ops)
    quantization = quantize.quantize(float_model.tflite_model, variant, calibration, builds.model(key).input_names)
    return Produced(quantization.tflite_model, _split(float_model.seconds, quantization.quantize_seconds),
                    quantization.recipe_json)


@dataclass(frozen=True)
class MixedSearch:
    """An ``int8_mixed`` search's inputs besides the model: how a trial is judged and layers ranked.

    Attributes:
        measure: flatbuffer bytes -> metrics (accuracy or fidelity, size, float ops).
        violation: metrics -> why they are outside the tolerance, or ``None``.
        rank: (float flatbuffer, fully quantized flatbuffer) -> layer groups, most harmful first
            (``mixed.rank_groups``).
        options: ``mixed.MixedPrecision``.
    """

    measure: Callable[[bytes], dict]
    violation: Callable[[dict], str | None]
    rank: Callable[[bytes, bytes], list[mixed.Group]]
    options: mixed.MixedPrecision


def mixed_search(builds: Builds, variant: Variant, key: ModelKey, calibration: list[np.ndarray] | None,
                 how: MixedSearch) -> tuple[Produced, precision_search.SearchResult]:
    """``int8_mixed``: search the layer groups to take out of int8 (``precision_search.search``) with the
    variant's backend.

    The converter calibrates once and re-quantizes with denylisted nodes
    (``convert.SelectiveQuantizer``): its only fallback is float. The LiteRT Quantizer calibrates once
    and re-quantizes with one rule per precision (``quantize.quantize(plan=...)``): weight ops fall
    back to dynamic-range int8 (or weight-only int8) before float (``rules.op_fallback``). Groups are
    ranked against the float model: the debugger's calibrated model (converter), the key's float
    flatbuffer (LiteRT).

    Returns:
        ``(Produced, SearchResult)``: the chosen trial's model; ``quantize_seconds`` sums the
        time spent calibrating and quantizing (not evaluating) over all trials.

    Raises:
        TFLiteError: no calibration data, an unknown float layer name, or a quantization failure.
    """
    if calibration is None:
        raise TFLiteError("quant=int8_mixed measures each trial against the source; pass data with training "
                          "(calibration) and test examples")
    spent = [0.0]
    started = time.perf_counter()
    make, recipes, float_model = _trial_quantizer(builds, variant, key, calibration)
    spent[0] += time.perf_counter() - started

    def timed(plan: mixed.Plan) -> bytes:
        started = time.perf_counter()
        try:
            return make(plan)
        finally:
            spent[0] += time.perf_counter() - started

    result = precision_search.search(timed, how.measure, how.violation, lambda full: how.rank(float_model.tflite_model, full),
                                 mixed.model_layers(float_model.tflite_model), how.options,
                                     _fallback(variant, float_model.tflite_model))
    return (Produced(result.chosen.tflite_model, _split(float_model.seconds, spent[0]),
                     recipes.get(result.chosen.plan), float_model.tflite_model), result)


def _fallback(variant: Variant, float_model: bytes) -> Callable[[mixed.Layer], mixed.Precision]:
    """An op's cheapest precision above static int8 on the variant's backend: float on the converter
    (its debugger has no per-op dynamic range), the LiteRT Quantizer's per op otherwise
    (``rules.op_fallbacks``)."""
    if variant.backend == Backend.CONVERTER:
        return lambda layer: mixed.Precision.FLOAT
    fallbacks = rules.op_fallbacks(float_model)
    return lambda layer: fallbacks.get(layer.tensor, mixed.Precision.FLOAT)


def _trial_quantizer(builds: Builds, variant: Variant, key: ModelKey, calibration):
    """(plan -> flatbuffer, recipes by plan, the float model the layers are named in):
    the backend's calibrate-once quantizer. The converter's float model is the debugger's calibrated
    model (the same conversion: no second float conversion); the LiteRT Quantizer's is the key's."""
    recipes: dict[mixed.Plan, str] = {}
    if variant.backend == Backend.CONVERTER:
        selective = convert.SelectiveQuantizer(builds.model(key), variant, calibration)
        return lambda plan: selective(mixed.float_tensors(plan)), recipes, FloatModel(bytes(selective.debugger.calibrated_model), 0.0)
    float_model = builds.float_model(key, variant.ops)
    float_bytes = float_model.tflite_model
    calibrated: dict = {}
    input_names = builds.model(key).input_names

    def make(plan: mixed.Plan) -> bytes:
        result = quantize.quantize(float_bytes, variant, calibration, input_names, plan, calibrated.get("qsvs"))
        calibrated["qsvs"], recipes[plan] = result.calibration_result, result.recipe_json
        return result.tflite_model

    return make, recipes, float_model
