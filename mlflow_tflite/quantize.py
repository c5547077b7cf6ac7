"""The LiteRT Quantizer backend: float .tflite + named recipe -> quantized .tflite; per-tensor error.

``quantize`` applies a named recipe of the LiteRT Quantizer (``ai_edge_quantizer.recipe``,
table in ``quant_modes.QUANT_RECIPES``) to a float flatbuffer, calibrating with the same
representative dataset the converter path uses. ``tensor_errors`` runs a quantized model (from
either backend) beside its float flatbuffer on a few evaluation examples and compares every
tensor the two share by name (the LiteRT Quantizer's ``model_validator.compare_model``).
"""

from __future__ import annotations

import contextlib
import io
import json
import time
import warnings
from dataclasses import dataclass

import numpy as np

from mlflow_tflite import tflite_file
from mlflow_tflite.errors import TFLiteError, first_line
from mlflow_tflite.variants import Variant

# Per-tensor comparison metrics, as named by ai_edge_quantizer.utils.validation_utils.
ERROR_METRICS = ("snr", "cosine_similarity", "mse")


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


def _signature(float_model: bytes) -> tuple[str, list[str]]:
    """(signature key, input names) of a float flatbuffer."""
    from mlflow_tflite.runtime import make_interpreter

    signatures = make_interpreter(float_model).get_signature_list()
    if not signatures:
        raise TFLiteError("the float model has no signature, which the LiteRT Quantizer needs; use backend=converter")
    key = "serving_default" if "serving_default" in signatures else sorted(signatures)[0]
    return key, list(signatures[key]["inputs"])


def signature_samples(float_model: bytes, arrays: list[np.ndarray], input_names: list[str] | None) -> dict:
    """``{signature key: [{input name: (1, ...) array}, ...]}``, one dict per example.

    Args:
        float_model: the float flatbuffer whose signature names the inputs.
        arrays: one float32 ``(N, ...)`` array per model input, in the source's order.
        input_names: the source's input names (matched to the signature by name; a single
            input needs no name).

    Raises:
        TFLiteError: several inputs whose names are not the signature's.
    """
    key, names = _signature(float_model)
    if len(arrays) == 1 and len(names) == 1:
        by_name = {names[0]: arrays[0]}
    else:
        given = [n.split(":")[0] for n in (input_names or [])]
        if sorted(given) != sorted(names):
            raise TFLiteError(f"calibration data has inputs {given} but the model's signature {key!r} takes {names}; "
                              "name the data arrays after the model inputs")
        by_name = dict(zip(given, arrays))
    rows = len(next(iter(by_name.values())))
    return {key: [{name: x[i : i + 1].astype(np.float32) for name, x in by_name.items()} for i in range(rows)]}


def skip_rule(tensor: str) -> str:
    """The recipe scope regex that matches the op whose (first) output tensor is ``tensor``.

    The LiteRT Quantizer names an op's scope by its output tensor names joined by ``;`` with a
    trailing ``;`` (``ai_edge_quantizer.utils.tfl_flatbuffer_utils.get_op_scope``).
    """
    import re

    return "^" + re.escape(tensor) + ";"


def quantize(float_model: bytes, variant: Variant, calibration: list[np.ndarray] | None,
             input_names: list[str] | None = None, keep_float: tuple[str, ...] = (),
             calibration_result: dict | None = None) -> Quantization:
    """Quantize a float flatbuffer with the LiteRT Quantizer recipe of ``variant.quant``.

    Args:
        float_model: float32 .tflite bytes (the ``none`` conversion of the same source).
        variant: a variant with ``backend=litert``; its mode names the recipe.
        calibration: representative dataset (one float32 ``(N, ...)`` array per input), needed
            by the static recipes (int8, int16x8).
        input_names: the source's input names, to match the signature's.
        keep_float: output tensor names of ops to leave in float (mixed precision): each gets a
            ``NO_QUANTIZE`` rule after the recipe's own, and the latest matching rule wins.
        calibration_result: an earlier :class:`Quantization`'s ``calibration_result`` of the
            same float model, reused instead of calibrating again.

    Returns:
        :class:`Quantization`.

    Raises:
        TFLiteError: a Flex model, missing calibration data, a recipe that changed nothing, or
            the quantizer failed (the message keeps its first line and suggests backend=converter).
    """
    from ai_edge_quantizer import quantizer, recipe

    if tflite_file.flex_ops(float_model):
        raise TFLiteError(f"the LiteRT Quantizer cannot quantize a model with Flex ops {tflite_file.flex_ops(float_model)}; "
                          "use backend=converter")
    name = variant.recipe.litert_recipe
    started = time.perf_counter()
    try:
        engine = quantizer.Quantizer(bytearray(float_model), getattr(recipe, name)())
        for tensor in keep_float:
            engine.update_quantization_recipe(skip_rule(tensor), "*", algorithm_key="no_quantize")
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
        raise TFLiteError(f"the LiteRT Quantizer failed on recipe {name} ({first_line(error, 300)}); "
                          "try backend=converter") from None
    quantized = bytes(result.quantized_model)
    if quantized == bytes(float_model) or not _has_quantized_tensors(quantized):
        raise TFLiteError(f"recipe {name} left the model unchanged (no op it quantizes); use backend=converter "
                          "or another quant")
    return Quantization(quantized, json.dumps(result.recipe, default=str), time.perf_counter() - started, qsvs)


@contextlib.contextmanager
def _quiet_quantizer():
    """Silence the quantizer's progress bar (tqdm on stderr, it breaks the CLI's lines) and debugging-mode warning."""
    with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors.*")
        yield


def _has_quantized_tensors(tflite_model: bytes) -> bool:
    """True when some tensor of the model is stored as an integer with quantization parameters."""
    model = tflite_file.read_flatbuffer(tflite_model)
    return any(t.quantization is not None and t.quantization.scale is not None and len(t.quantization.scale)
               for sg in model.subgraphs for t in sg.tensors)


def tensor_errors(float_model: bytes, quantized_model: bytes, arrays: list[np.ndarray],
                  input_names: list[str] | None = None, samples: int = 16) -> list[dict]:
    """Per-tensor quantization error of ``quantized_model`` against ``float_model``.

    Both models run on the first ``samples`` examples of ``arrays`` (float inputs, so a model
    with integer I/O cannot be compared here); every op output present in both under the same
    name and size is compared with the LiteRT Quantizer's metrics
    (``model_validator.compare_model``), averaged over the examples: signal-to-noise ratio
    ``mean(float^2) / mean((quantized - float)^2)``, reported as ``10 log10`` (dB, higher is
    better), cosine similarity and mean squared error.

    Returns:
        One dict per tensor, worst SNR first: ``tensor``, ``op`` (the op that writes it in the
        quantized model, e.g. ``CONV_2D``), ``shape`` (text), ``snr_db``, ``cosine``, ``mse``.

    Raises:
        TFLiteError: the models cannot be compared (integer I/O, other signature).
    """
    from ai_edge_quantizer import model_validator
    from ai_edge_quantizer.utils import validation_utils

    metrics = [validation_utils.ValidationErrorMetric(m) for m in ERROR_METRICS]
    compare_fns = [_same_size_only(validation_utils.get_validation_func(m)) for m in metrics]
    data = signature_samples(float_model, [a[:samples] for a in arrays], input_names)
    try:
        result = model_validator.compare_model(float_model, quantized_model, data, metrics, compare_fns, num_threads=1)
    except Exception as error:
        raise TFLiteError(f"per-tensor comparison with the float model failed ({first_line(error, 200)})") from None
    producers = tflite_file.tensor_producers(quantized_model)
    rows = [{"tensor": name, "op": producers[name][0], "shape": str(list(producers[name][1])),
             "snr_db": float(10 * np.log10(max(values["snr"], 1e-30))), "cosine": values["cosine_similarity"],
             "mse": values["mse"]}
            for name, values in result.get_all_tensor_results().items()
            if name in producers and np.isfinite(values["mse"])]
    return sorted(rows, key=lambda r: (r["snr_db"], r["tensor"]))


def _same_size_only(compare):
    """A comparison that gives NaN (left out) for tensors whose sizes differ between the models.

    A float16 model keeps float16 copies of the weights under the float names; those are storage,
    not activations, and cannot be compared element by element.
    """

    def compare_same_size(target, reference) -> float:
        if np.size(target) != np.size(reference):
            return float("nan")
        return float(compare(target, reference))

    return compare_same_size
