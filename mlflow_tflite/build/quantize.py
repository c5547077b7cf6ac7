"""The LiteRT Quantizer backend: float .tflite + named recipe -> quantized .tflite; per-tensor error.

``quantize`` applies a named recipe of the LiteRT Quantizer (``ai_edge_quantizer.recipe``,
table in ``quant_modes.QUANT_RECIPES``), with the variant's algorithm overlaid on the weight
ops it supports (``algorithms.overlay``), to a float flatbuffer, calibrating with the same
representative dataset the converter path uses. ``tensor_errors`` runs a quantized model (from
either backend) beside its float flatbuffer on a few evaluation examples and compares every
tensor the two share by name (the LiteRT Quantizer's ``model_validator.compare_model``).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import time
import warnings
from dataclasses import dataclass

import numpy as np

from mlflow_tflite.build import algorithms, rules
from mlflow_tflite.build.mixed import Plan
from mlflow_tflite.flavor import flatbuffer
from mlflow_tflite.errors import TFLiteError, first_line
from mlflow_tflite.flavor.runtime import signature_samples
from mlflow_tflite.quant_modes import Algorithm
from mlflow_tflite.variants import Variant

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class Quantization:
    """A quantized model: flatbuffer bytes, the recipe (JSON text) and the wall time in seconds.

    ``calibration_result`` holds the quantizer's calibration (tensor name -> min/max), to
    quantize the same float model again with another recipe without calibrating again.
    """

    tflite_model: bytes
    recipe_json: str
    quantize_seconds: float
    calibration_result: dict | None = None


def keep_float_io(engine) -> None:
    """Keep a quantizer's model inputs and outputs float32, as the converter's int8 and int16x8 do.

    The static recipes (``static_wi8_ai8``, ``static_wi8_ai16``) quantize the quantizer's virtual
    ``INPUT`` and ``OUTPUT`` ops, which gives an integer-I/O model. A ``NO_QUANTIZE`` rule on those
    two ops leaves the graph's input and output tensors float; the quantizer then inserts a
    QUANTIZE after each float input and a DEQUANTIZE before each float output, where a quantized
    op meets them. Other recipes leave I/O float already, so the rules change nothing there.

    Args:
        engine: an ``ai_edge_quantizer.quantizer.Quantizer`` holding a mode's named recipe.
    """
    from ai_edge_quantizer import qtyping

    for op in (qtyping.TFLOperationName.INPUT, qtyping.TFLOperationName.OUTPUT):
        engine.update_quantization_recipe(".*", op, algorithm_key="no_quantize")


def quantize(float_model: bytes, variant: Variant, calibration: list[np.ndarray] | None,
             input_names: list[str] | None = None, plan: Plan = (),
             calibration_result: dict | None = None) -> Quantization:
    """Quantize a float flatbuffer with the LiteRT Quantizer recipe of ``variant.quant`` and ``variant.algorithm``.

    Args:
        float_model: float32 .tflite bytes (the ``none`` conversion of the same source).
        variant: a variant with ``backend=litert``; its mode names the recipe, its algorithm
            (``quant_modes.Algorithm``) is overlaid on the weight ops it supports.
        calibration: representative dataset (one float32 ``(N, ...)`` array per input), needed
            by the static recipes (int8, int16x8).
        input_names: the source's input names, to match the signature's.
        plan: ``(output tensor name, precision)`` of ops to take out of static int8 (mixed
            precision, ``mixed.Plan``): one rule per precision after the recipe's own, and the
            latest matching rule wins (``rules.add_plan_rules``).
        calibration_result: an earlier :class:`Quantization`'s ``calibration_result`` of the
            same float model, reused instead of calibrating again.

    Returns:
        :class:`Quantization`.

    Raises:
        TFLiteError: a Flex model, missing calibration data, a recipe that changed nothing (with
            no ``plan``), an
            algorithm that handles no weight op of the model, or the quantizer failed (the message keeps its first line and suggests backend=converter).
    """
    from ai_edge_quantizer import quantizer, recipe

    if flatbuffer.flex_ops(float_model):
        raise TFLiteError(f"the LiteRT Quantizer cannot quantize a model with Flex ops {flatbuffer.flex_ops(float_model)}; "
                          "use backend=converter")
    name = variant.recipe.litert_recipe
    if variant.algorithm != Algorithm.MIN_MAX:
        name += f" with algorithm {variant.algorithm.key}"
    started = time.perf_counter()
    float_model = algorithms.float_model_for(variant.algorithm, float_model)
    try:
        engine = quantizer.Quantizer(bytearray(float_model), getattr(recipe, variant.recipe.litert_recipe)())
        if not variant.recipe.integer_io:
            keep_float_io(engine)
        algorithms.overlay(engine, variant.algorithm, float_model)
        rules.add_plan_rules(engine, float_model, plan)
        qsvs = calibration_result
        if engine.need_calibration and qsvs is None:
            if calibration is None or not len(calibration[0]):
                raise TFLiteError(f"quant={variant.quant} (recipe {name}) needs a representative dataset; pass data")
            with _quiet_quantizer():
                qsvs = engine.calibrate(signature_samples(float_model, calibration, input_names), num_threads=1)
        with _quiet_quantizer():
            result = engine.quantize(qsvs, enable_progress_report=False)
    except TFLiteError:
        raise
    except Exception as error:
        advice = "backend=converter" if variant.algorithm == Algorithm.MIN_MAX else "algorithm=min_max"
        raise TFLiteError(f"the LiteRT Quantizer failed on recipe {name} ({first_line(error, 300)}); "
                          f"try {advice}") from None
    quantized = bytes(result.quantized_model)
    # A mixed trial that keeps every op float is the float model: a valid trial.
    if not plan and (quantized == bytes(float_model) or not _has_quantized_tensors(quantized)):
        raise TFLiteError(f"recipe {name} left the model unchanged (no op it quantizes); use backend=converter "
                          "or another quant")
    return Quantization(quantized, json.dumps(result.recipe, default=str), time.perf_counter() - started, qsvs)


class _Held(logging.Filter):
    """Holds the records of a logger instead of letting its handlers print them."""

    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.records.append(record)
        return False


@contextlib.contextmanager
def _quiet_quantizer():
    """Silence the quantizer's progress bar (tqdm on stderr, it breaks the CLI's lines) and debugging-mode
    warning; its absl log lines (e.g. OSCAR's documented fallback to unscaled clipping when it has no
    calibration data) go to this module's log at INFO instead of through the sweep's progress line."""
    absl, held = logging.getLogger("absl"), _Held()
    absl.addFilter(held)
    try:
        with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors.*")
            yield
    finally:
        absl.removeFilter(held)
        for record in held.records:
            _LOG.info("LiteRT Quantizer %s: %s", record.levelname.lower(), record.getMessage())


def _has_quantized_tensors(tflite_model: bytes) -> bool:
    """True when some tensor of the model is stored as an integer with quantization parameters."""
    model = flatbuffer.read_flatbuffer(tflite_model)
    return any(t.quantization is not None and t.quantization.scale is not None and len(t.quantization.scale)
               for sg in model.subgraphs for t in sg.tensors)
