"""A calibrated mode's quantized model and its float reference from one conversion.

``converter.convert()`` for full-integer post-training quantization (int8 with float I/O,
int8_full with integer I/O, int16x8) converts the model to a float flatbuffer, runs the
representative dataset through it to record each tensor's min/max (calibration) and quantizes
with those statistics. The per-tensor error table needs the float model too, which used to
take a second conversion (quant ``none``). Here, as ``tf.lite.experimental.QuantizationDebugger``
does, the converter stops after calibration (``_experimental_calibrate_only``): that float model
with statistics is quantized with the settings ``convert()`` would use and also serves, as it
is, as the float reference:

- int8 and int8_full: ``mlir_quantize`` with the converter's per-channel setting and I/O types,
  as ``TFLiteConverterBase._quantize`` calls it;
- int16x8: the calibrator's quantizer (``Calibrator.calibrate_and_quantize`` with nothing more
  to feed, so the statistics already in the model are used), which is what ``convert()`` uses for
  16-bit activations; ``mlir_quantize`` rejects them.

The quantized model equals ``convert()``'s in every tensor, buffer, operator, quantization
parameter and signature. The bytes differ: ``convert()`` then re-serializes the model in Python
(read-only buffer deduplication, which finds nothing more to merge here, and its
``CONVERSION_METADATA`` entry with a hash of the model's structure), while here the quantizer's
output keeps the calibrated model's entry, hash included. Replaying those two steps with
TensorFlow's helpers gives ``convert()``'s bytes exactly; they are private APIs
``QuantizationDebugger`` does not use, so they are left out. Settings ``mlflow_tflite.build.convert.configure``
never changes keep their defaults here (variable quantization, per-channel dense layers, the bias
type, debug options); a converter that changes those private settings is not reproduced.

The calibrated model is the plain float conversion (quant ``none``) plus each tensor's min/max
(``quantization.min``/``max``, no scales): the same tensors (names, shapes, weights), ops and
buffers. Interpreters ignore the statistics, so it gives the float conversion's outputs, and the
quantized model keeps its tensor names, so ``measure.tensors.tensor_errors`` compares the same tensors.
Its ``CONVERSION_METADATA`` names the full-integer quantization it was calibrated for.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from dataclasses import dataclass

from mlflow_tflite.errors import TFLiteError, first_line
from mlflow_tflite.quiet import dropped_lines


@dataclass(frozen=True)
class QuantizeSettings:
    """What ``converter.convert()`` passes its quantizer after calibration (TensorFlow 2.21's
    ``TFLiteConverterBase._optimize_tflite_model`` and ``_quantize``).

    Attributes:
        int16_activations: 16-bit activations, 8-bit weights (the calibrator's quantizer), else int8
            (``mlir_quantize``).
        input_type: the model input's ``tf.DType`` (float32, int8 or uint8; float32 for int16x8).
        output_type: the model output's ``tf.DType``.
        allow_float: ops without an integer kernel may stay float (``TFLITE_BUILTINS`` or
            ``SELECT_TF_OPS`` among the supported ops); only the int16x8 quantizer takes it.
        disable_per_channel: per-tensor instead of per-channel weight scales.
    """

    int16_activations: bool
    input_type: object
    output_type: object
    allow_float: bool
    disable_per_channel: bool


def quantize_settings(converter) -> QuantizeSettings:
    """The quantizer settings ``converter.convert()`` would use, read from the converter.

    Args:
        converter: a ``tf.lite.TFLiteConverter`` set up for post-training full-integer
            quantization (``optimizations=[tf.lite.Optimize.DEFAULT]``, a representative dataset),
            e.g. by ``mlflow_tflite.build.convert.configure`` for int8, int8_full or int16x8.

    Returns:
        :class:`QuantizeSettings`.

    Raises:
        TFLiteError: a converter this module cannot reproduce: no optimization or no
            representative dataset (nothing to calibrate), float16 weights, the old quantizer
            (``experimental_new_quantizer=False``), the StableHLO quantizer, sparsity encoding,
            or int16x8 with integer I/O.
    """
    import tensorflow as tf

    ops = set(converter.target_spec.supported_ops)
    if tf.lite.Optimize.DEFAULT not in set(converter.optimizations) or converter.representative_dataset is None:
        raise TFLiteError("calibrated conversion needs optimizations=[tf.lite.Optimize.DEFAULT] and a "
                          "representative dataset; use convert.configure with quant int8, int8_full or int16x8")
    unsupported = [
        (tf.float16 in set(converter.target_spec.supported_types), "float16 weights"),
        (not converter.experimental_new_quantizer, "experimental_new_quantizer=False"),
        (getattr(converter, "experimental_use_stablehlo_quantizer", False), "the StableHLO quantizer"),
        (tf.lite.Optimize.EXPERIMENTAL_SPARSITY in set(converter.optimizations), "sparsity encoding"),
    ]
    for present, what in unsupported:
        if present:
            raise TFLiteError(f"calibrated conversion does not reproduce converter.convert() with {what}; "
                              "call converter.convert() and convert the float model separately")
    int16 = tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8 in ops
    # V2 converters default the I/O types to float32, V1 (frozen graph) converters to None.
    input_type = getattr(converter, "inference_input_type", None) or tf.float32
    output_type = getattr(converter, "inference_output_type", None) or tf.float32
    if int16 and (input_type, output_type) != (tf.float32, tf.float32):
        raise TFLiteError("calibrated conversion supports int16x8 with float I/O only; call converter.convert()")
    return QuantizeSettings(
        int16_activations=int16,
        input_type=input_type,
        output_type=output_type,
        allow_float=tf.lite.OpsSet.TFLITE_BUILTINS in ops or tf.lite.OpsSet.SELECT_TF_OPS in ops,
        # Private attribute, read as QuantizationDebugger._get_quantized_model reads it: the only
        # place the converter keeps the per-channel setting it passes its quantizer.
        disable_per_channel=bool(converter._experimental_disable_per_channel),  # pylint: disable=protected-access
    )


def calibrate(converter) -> bytes:
    """One calibrate-only conversion: the float model with each tensor's calibrated min/max.

    The converter converts and runs its representative dataset through the float model, then
    stops before quantizing (as ``QuantizationDebugger`` sets it up). The converter is left as it
    was given.

    Args:
        converter: a ``tf.lite.TFLiteConverter`` configured for int8, int8_full or int16x8 (see
            :func:`quantize_settings`).

    Returns:
        float32 .tflite flatbuffer bytes with float32 inputs and outputs whatever the
        converter's I/O types; its tensors carry ``quantization.min``/``max`` statistics (no
        scales), which interpreters ignore.

    Raises:
        TFLiteError: the converter is not set up for calibration (see :func:`quantize_settings`),
            the conversion failed (one line with the converter's first error), or the model came
            back without statistics (a quantization-aware trained model needs no calibration).
    """
    quantize_settings(converter)
    # Private flag, set as QuantizationDebugger._set_converter_options_for_calibration sets it:
    # TFLiteConverterBase._quantize returns the calibrated model instead of quantizing it.
    previous = converter._experimental_calibrate_only  # pylint: disable=protected-access
    converter._experimental_calibrate_only = True  # pylint: disable=protected-access
    try:
        with _quiet():
            calibrated = bytes(converter.convert())
    except Exception as error:  # the converter raises ConverterError, ValueError, RuntimeError...
        raise TFLiteError(f"calibrate-only conversion failed: {_error_line(error)}") from None
    finally:
        converter._experimental_calibrate_only = previous  # pylint: disable=protected-access
    if not _has_statistics(calibrated):
        raise TFLiteError("the converter returned no calibration statistics (a quantization-aware trained "
                          "model is not calibrated); call converter.convert()")
    return calibrated


def quantize(converter, calibrated_model: bytes) -> bytes:
    """Quantize a calibrated model as ``converter.convert()`` quantizes after calibrating.

    Args:
        converter: the converter :func:`calibrate` ran (its settings choose the quantizer).
        calibrated_model: :func:`calibrate`'s bytes.

    Returns:
        The quantized .tflite flatbuffer bytes: int8 (or int16) activations, int8 weights, and
        the converter's input/output types (float32, int8 or uint8).

    Raises:
        TFLiteError: the converter's settings are not reproducible (see
            :func:`quantize_settings`) or the quantizer failed (one line).
    """
    settings = quantize_settings(converter)
    try:
        with _quiet():
            if settings.int16_activations:
                return _quantize_int16x8(calibrated_model, settings)
            # Private module, as QuantizationDebugger uses it: mlir_quantize is the quantizer
            # convert() calls for int8 activations and has no public entry point.
            from tensorflow.lite.python import convert as tflite_convert

            return bytes(tflite_convert.mlir_quantize(
                calibrated_model, settings.disable_per_channel,
                input_data_type=settings.input_type, output_data_type=settings.output_type))
    except Exception as error:
        raise TFLiteError(f"quantizing the calibrated model failed: {_error_line(error)}") from None


def convert_with_float(converter) -> tuple[bytes, bytes]:
    """The quantized model and its float reference from one calibrate-only conversion.

    Args:
        converter: a ``tf.lite.TFLiteConverter`` configured by ``mlflow_tflite.build.convert.configure``
            for int8 (float I/O), int8_full (int8/uint8 I/O) or int16x8. It is left as given.

    Returns:
        ``(quantized, float_model)`` flatbuffer bytes: ``quantized`` is what
        ``converter.convert()`` returns (same tensors, buffers, ops and quantization; see the
        module doc for the metadata difference); ``float_model`` is the calibrated float32 model
        (float32 I/O), which runs like the plain float conversion (quant none) and whose tensor
        names the quantized model keeps, for ``measure.tensors.tensor_errors(float_model, quantized, ...)``
        (with float I/O only: an integer-I/O model takes quantized inputs).

    Raises:
        TFLiteError: see :func:`calibrate` and :func:`quantize`.
    """
    calibrated_model = calibrate(converter)
    return quantize(converter, calibrated_model), calibrated_model


def _quantize_int16x8(calibrated_model: bytes, settings: QuantizeSettings) -> bytes:
    """16-bit activations: the quantizer ``TFLiteConverterBase._quantize`` calls for them.

    That quantizer (``Calibrator.calibrate_and_quantize``) records statistics while it feeds the
    dataset and writes them over the model's; fed nothing, it quantizes with the statistics the
    calibrate-only conversion already put in the model.
    """
    import tensorflow as tf

    # Private module: QuantizationDebugger quantizes with mlir_quantize, which fails on int16
    # activations ("binary op operands have same element type"); convert() uses this calibrator
    # for them, and it is the only entry point of that quantizer.
    from tensorflow.lite.python.optimize import calibrator

    return bytes(calibrator.Calibrator(calibrated_model).calibrate_and_quantize(
        lambda: iter(()), settings.input_type, settings.output_type, settings.allow_float,
        activations_type=tf.int16, bias_type=tf.int64, disable_per_channel=settings.disable_per_channel))


def _has_statistics(tflite_model: bytes) -> bool:
    """True when some tensor carries calibration min/max (read lazily, no copy of the weights)."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(tflite_model, 0)
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        for t in range(subgraph.TensorsLength()):
            quantization = subgraph.Tensors(t).Quantization()
            if quantization is not None and quantization.MinLength():
                return True
    return False


def _error_line(error: Exception) -> str:
    """The converter's first ``error:`` message without its source location (``'tf.Cumprod' op is
    neither a custom op nor a flex op``), or the exception's first line."""
    lines = [line.rsplit("error:", 1)[1].strip() for line in str(error).splitlines() if "error:" in line]
    return (lines[0] or first_line(error))[:300] if lines else first_line(error, 300)


@contextlib.contextmanager
def _quiet():
    """The quantizer's C++ line per model and the converter's warning about input statistics
    (emitted for every int8 model with float I/O, which needs none)."""
    with warnings.catch_warnings(), dropped_lines(re.compile(r"fully_quantize: \d")):
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
        yield
