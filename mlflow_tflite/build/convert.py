"""Variant + source + representative dataset -> .tflite flatbuffer bytes.

The recipes are TensorFlow Lite's post-training quantization guide
(https://ai.google.dev/edge/litert/models/post_training_quantization): dynamic range,
float16, full integer with a representative dataset (float or integer I/O) and 16x8.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
import warnings
from dataclasses import dataclass

import numpy as np

from mlflow_tflite.build import calibrated
from mlflow_tflite.errors import TFLiteError
from mlflow_tflite.options import IoType, OpsSet
from mlflow_tflite.quiet import dropped_lines
from mlflow_tflite.build.sources import Source
from mlflow_tflite.variants import Variant

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Conversion:
    """A converted model: ``tflite_model`` flatbuffer bytes and ``convert_seconds`` (wall time).

    ``float_model`` is the float flatbuffer the same conversion went through (the calibrated
    model of a calibrated mode, see :func:`convert`'s ``keep_float``), or ``None``.
    """

    tflite_model: bytes
    convert_seconds: float
    float_model: bytes | None = None


def representative_dataset(calibration: list[np.ndarray], input_names: list[str] | None = None):
    """Generator factory for ``converter.representative_dataset``: one example per step.

    Args:
        calibration: one float32 ``(N, ...)`` array per model input, same N for all.
        input_names: the signature's input names; with several inputs each step is a dict
            keyed by them (the converter's signature order need not be the model's order),
            otherwise a list in input order.
    """

    def generate():
        for i in range(len(calibration[0])):
            example = [array[i : i + 1].astype(np.float32) for array in calibration]
            yield dict(zip(input_names, example)) if input_names and len(example) > 1 else example

    return generate


def configure(converter, variant: Variant, calibration: list[np.ndarray] | None,
              input_names: list[str] | None = None) -> None:
    """Set a ``tf.lite.TFLiteConverter`` up for a variant's quantization mode and op set.

    The settings are the mode's row of ``quant_modes.QUANT_RECIPES``.

    Raises:
        TFLiteError: a calibrated mode (int8, int8_full, int16x8) without calibration data.
    """
    import tensorflow as tf

    recipe = variant.recipe
    if recipe.calibrated and (calibration is None or len(calibration[0]) == 0):
        raise TFLiteError(
            f"quant={variant.quant} needs a representative dataset but no calibration data was given; "
            "pass data (x_train) or choose quant=dynamic for weight-only quantization"
        )
    if recipe.optimize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if recipe.float16_weights:
        converter.target_spec.supported_types = [tf.float16]
    if recipe.calibrated:
        converter.representative_dataset = representative_dataset(calibration, input_names)
    if recipe.integer_io:
        io_type = tf.uint8 if variant.io_type == IoType.UINT8 else tf.int8
        converter.inference_input_type = io_type
        converter.inference_output_type = io_type
    ops = [getattr(tf.lite.OpsSet, recipe.kernels)]
    if variant.ops == OpsSet.SELECT_TF:
        ops.append(tf.lite.OpsSet.SELECT_TF_OPS)
    converter.target_spec.supported_ops = ops


def convert(source: Source, variant: Variant, calibration: list[np.ndarray] | None = None,
            keep_float: bool = False) -> Conversion:
    """Convert ``source`` to a .tflite flatbuffer for ``variant``.

    Args:
        source: the (possibly pruned or resized) model.
        variant: quantization mode and op set.
        calibration: representative dataset, one float32 ``(N, ...)`` array per input;
            required for int8, int8_full and int16x8.
        keep_float: also return the float model of the same conversion where there is one
            (``Conversion.float_model``), to compare the variant with tensor by tensor: a
            calibrated mode then converts once, calibrate-only, and quantizes that model
            (``calibrated.convert_with_float``) instead of converting a float model again.

    Returns:
        :class:`Conversion` with the bytes and the wall time in seconds.

    Raises:
        TFLiteError: missing calibration data, or the converter failed (the message keeps the
            converter's first error line and suggests ``ops=select_tf`` for unsupported ops).
    """
    converter = source.converter()
    # TF1 frozen-graph converters have no signature: their calibration steps are plain lists.
    names = None if source.kind == "frozen_graph" else source.input_names
    configure(converter, variant, calibration, names)
    started = time.perf_counter()
    if keep_float and variant.recipe.calibrated and not variant.recipe.trained:
        try:
            tflite_model, float_model = calibrated.convert_with_float(converter)
            return Conversion(tflite_model, time.perf_counter() - started, float_model)
        except TFLiteError as error:  # converter.convert() below fails with the usual message, or succeeds
            logger.info("calibrate-only conversion of %s failed (%s); converting as usual", variant.name, error.message)
    try:
        with _quiet_conversion():  # the same C++ line and warning as the debugger's
            tflite_model = converter.convert()
    except Exception as error:  # the converter raises ConverterError, ValueError, RuntimeError...
        raise TFLiteError(_conversion_error_message(variant, error)) from None
    return Conversion(tflite_model, time.perf_counter() - started)


def unsupported_ops(message: str) -> list[str]:
    """TensorFlow op names the converter could not lower to TFLite builtins, from its error text."""
    names = re.findall(r"'(tf\.[A-Za-z0-9_]+)' op is neither a custom op nor a flex op", message)
    return sorted(set(names))


def _conversion_error_message(variant: Variant, error: Exception) -> str:
    ops = unsupported_ops(str(error))
    if ops and variant.ops == "builtins":
        return (f"conversion of variant {variant.name!r} failed: ops {', '.join(ops)} are not TFLite builtins; "
                "set ops=select_tf to run them as Flex (SELECT_TF_OPS) ops")
    lines = [line.strip() for line in str(error).splitlines() if "error:" in line] or [
        line.strip() for line in str(error).splitlines() if line.strip()
    ]
    reason = (lines[0] if lines else type(error).__name__)[:300]
    hint = "try ops=select_tf or another quant mode" if variant.ops == "builtins" else "try another quant mode"
    return f"conversion of variant {variant.name!r} failed: {reason}; {hint}"


class SelectiveQuantizer:
    """The converter's full-integer quantization with chosen ops left in float (mixed precision).

    TensorFlow Lite's selective quantization recipe
    (https://ai.google.dev/edge/litert/models/quantization_debugger, "Selective quantization"):
    one ``QuantizationDebugger`` calibrates the model once; each call then re-quantizes the
    calibrated model with ``QuantizationDebugOptions(denylisted_nodes=...)`` and returns
    ``get_nondebug_quantized_model()``.
    """

    def __init__(self, source: Source, variant: Variant, calibration: list[np.ndarray]):
        """Calibrate ``source`` for ``variant`` (an int8_mixed variant: builtin kernels, float I/O).

        Raises:
            TFLiteError: no calibration data, or the converter failed to calibrate.
        """
        import tensorflow as tf

        converter = source.converter()
        names = None if source.kind == "frozen_graph" else source.input_names
        configure(converter, variant, calibration, names)
        self.variant = variant
        try:
            with _quiet_conversion():
                self.debugger = tf.lite.experimental.QuantizationDebugger(
                    converter=converter, debug_dataset=representative_dataset(calibration, names))
        except Exception as error:
            raise TFLiteError(_conversion_error_message(variant, error)) from None

    def __call__(self, keep_float: tuple[str, ...]) -> bytes:
        """The int8 model with the ops writing the tensors ``keep_float`` (float model names) in float.

        Raises:
            TFLiteError: the converter could not quantize (one line).
        """
        import tensorflow as tf

        try:
            with _quiet_conversion():
                self.debugger.options = tf.lite.experimental.QuantizationDebugOptions(
                    denylisted_nodes=list(keep_float))
                return self.debugger.get_nondebug_quantized_model()
        except Exception as error:
            raise TFLiteError(_conversion_error_message(self.variant, error)) from None


@contextlib.contextmanager
def _quiet_conversion():
    """Conversion noise: the quantizer's C++ line per model, the warning about input statistics (emitted for
    every int8 model with float I/O, which needs none) and, in the debugger, TensorFlow's interpreter
    deprecation warning."""
    with warnings.catch_warnings(), dropped_lines(re.compile(r"fully_quantize: \d|Created TensorFlow Lite XNNPACK delegate")):
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
        yield
