"""calibrated.py: one calibrate-only conversion gives converter.convert()'s quantized model and a
float reference, on a tiny real tf_keras conv net (random weights, fixed seed) and real TensorFlow."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from mlflow_tflite.build import calibrated
from mlflow_tflite.build.convert import SelectiveQuantizer, configure
from mlflow_tflite.build.sources import from_tf_keras
from mlflow_tflite.flavor import flatbuffer, runtime
from mlflow_tflite.measure.tensors import tensor_errors
from mlflow_tflite.errors import TFLiteError
from mlflow_tflite.variants import Variant

# (quant, io_type) of the calibrated converter modes.
MODES = [("int8", "int8"), ("int8_full", "int8"), ("int8_full", "uint8"), ("int16x8", "int8")]
FLOAT_IO = [("int8", "int8"), ("int16x8", "int8")]


@pytest.fixture(scope="module")
def tiny():
    """A small conv net (conv, batch norm, depthwise conv, pool, dense, softmax), its calibration
    data (24 examples) and test inputs (6 examples), all float32 with fixed seeds."""
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.DepthwiseConv2D(3, activation="relu6")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(10)(x)
    model = keras.Model(inputs, keras.layers.Softmax()(x), name="tiny")
    rng = np.random.default_rng(0)
    calibration = [rng.random((24, 12, 12, 3), dtype=np.float32)]
    x_test = [rng.random((6, 12, 12, 3), dtype=np.float32)]
    return model, calibration, x_test


def _converter(tiny, quant: str, io_type: str = "int8"):
    import tensorflow as tf

    model, calibration, _ = tiny
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    configure(converter, Variant(quant, io_type=io_type), calibration)
    return converter


@pytest.fixture(scope="module")
def plain_float(tiny) -> bytes:
    """The plain float conversion (quant none)."""
    return bytes(_converter(tiny, "none").convert())


@pytest.fixture(scope="module")
def conversions(tiny) -> dict:
    """Per mode: (converter.convert()'s bytes, convert_with_float's (quantized, float))."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
        return {mode: (bytes(_converter(tiny, *mode).convert()), calibrated.convert_with_float(_converter(tiny, *mode)))
                for mode in MODES}


def _without_metadata(tflite_model: bytes) -> tuple[bytes, dict[str, bytes]]:
    """(the model re-serialized with its metadata buffers emptied and entries dropped, {name: data})."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(tflite_model))
    metadata = {entry.name.decode(): bytes(model.buffers[entry.buffer].data) for entry in model.metadata or []}
    for entry in model.metadata or []:
        model.buffers[entry.buffer].data = None
    model.metadata = None
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), metadata


def _conversion_metadata(data: bytes):
    # TensorFlow's own schema of the CONVERSION_METADATA entry (LiteRT's package does not ship it).
    from tensorflow.lite.python import conversion_metadata_schema_py_generated as schema

    return schema.ConversionMetadataT.InitFromObj(schema.ConversionMetadata.GetRootAs(data, 0))


def _without_statistics(tflite_model: bytes) -> bytes:
    """The model with every tensor's calibration min/max removed, re-serialized."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(tflite_model))
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            if tensor.quantization is not None:
                tensor.quantization.min = tensor.quantization.max = None
    return _without_metadata(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))[0]


def _outputs(tflite_model: bytes, x: list[np.ndarray]) -> np.ndarray:
    return runtime.run(runtime.make_interpreter(tflite_model), x)[0]


def _compared_tensors(float_model: bytes, quantized_model: bytes, x: list[np.ndarray]) -> list[str]:
    """The tensor names ai_edge_quantizer's compare_model compares (present in both models)."""
    from ai_edge_quantizer import model_validator
    from ai_edge_quantizer.utils import validation_utils

    metric = validation_utils.ValidationErrorMetric("mse")
    data = runtime.signature_samples(float_model, x, None)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors.*")
        result = model_validator.compare_model(float_model, quantized_model, data, [metric],
                                               [validation_utils.get_validation_func(metric)], num_threads=1)
    return sorted(result.get_all_tensor_results())


@pytest.mark.parametrize("mode", MODES, ids=["-".join(m) for m in MODES])
def test_quantized_model_is_convert_s_but_for_the_model_hash(conversions, tiny, mode):
    converted, (quantized, _) = conversions[mode]
    ours, our_metadata = _without_metadata(quantized)
    theirs, their_metadata = _without_metadata(converted)
    # Every tensor, buffer, operator, quantization parameter and signature, byte for byte.
    assert ours == theirs
    assert flatbuffer.op_inventory(quantized) == flatbuffer.op_inventory(converted)
    np.testing.assert_array_equal(_outputs(quantized, tiny[2]), _outputs(converted, tiny[2]))
    # The metadata: the same entries; the conversion metadata may differ in modelHash only (ours is
    # the calibrated model's: convert() hashes the quantized model's structure).
    assert our_metadata.keys() == their_metadata.keys() == {"min_runtime_version", "CONVERSION_METADATA"}
    assert our_metadata["min_runtime_version"] == their_metadata["min_runtime_version"]
    ours_meta, theirs_meta = (_conversion_metadata(m["CONVERSION_METADATA"]) for m in (our_metadata, their_metadata))
    ours_meta.environment.modelHash = theirs_meta.environment.modelHash = 0
    assert vars(ours_meta.environment) == vars(theirs_meta.environment)
    assert vars(ours_meta.options) == vars(theirs_meta.options)


@pytest.mark.parametrize("mode", MODES, ids=["-".join(m) for m in MODES])
def test_float_model_is_the_plain_float_conversion_with_statistics(conversions, plain_float, tiny, mode):
    _, (quantized, float_model) = conversions[mode]
    assert float_model != plain_float  # it carries min/max statistics...
    assert _without_statistics(float_model) == _without_metadata(plain_float)[0]  # ...and nothing else
    np.testing.assert_allclose(_outputs(float_model, tiny[2]), _outputs(plain_float, tiny[2]), rtol=0, atol=1e-6)
    details = runtime.make_interpreter(float_model).get_input_details()
    assert details[0]["dtype"] == np.float32  # float I/O even for int8_full


@pytest.mark.parametrize("mode", FLOAT_IO, ids=["-".join(m) for m in FLOAT_IO])
def test_per_tensor_comparison_is_the_same_as_with_a_plain_float_conversion(conversions, plain_float, tiny, mode):
    converted, (quantized, float_model) = conversions[mode]
    x = tiny[2]
    with_calibrated = _compared_tensors(float_model, quantized, x)
    with_plain = _compared_tensors(plain_float, converted, x)
    print(f"{mode[0]}: compare_model compared {len(with_calibrated)} tensors with the calibrated float model, "
          f"{len(with_plain)} with the plain float conversion")
    assert with_calibrated == with_plain and len(with_plain) == 14  # all 14 tensors of the float model
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors.*")
        assert tensor_errors(float_model, quantized, x) == tensor_errors(plain_float, converted, x)


def test_converter_is_left_as_given(tiny, conversions):
    converter = _converter(tiny, "int8")
    quantized, float_model = calibrated.convert_with_float(converter)
    assert converter._experimental_calibrate_only is False
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
        again = bytes(converter.convert())
    assert _without_metadata(again)[0] == _without_metadata(quantized)[0]


def test_calibrate_then_quantize_is_convert_with_float(tiny, conversions):
    converter = _converter(tiny, "int16x8")
    model = calibrated.calibrate(converter)
    assert calibrated.quantize(converter, model) == conversions[("int16x8", "int8")][1][0]
    assert calibrated.quantize_settings(converter).int16_activations


def test_a_converter_not_set_up_for_calibration_is_refused(tiny):
    for quant in ("none", "dynamic", "float16"):
        with pytest.raises(TFLiteError, match="calibrated conversion"):
            calibrated.convert_with_float(_converter(tiny, quant))


def test_converter_failure_is_one_line(tiny):
    import tensorflow as tf
    import tf_keras as keras

    inputs = keras.Input((4,))
    cumprod = keras.layers.Lambda(lambda t: tf.math.cumprod(t, axis=1))  # no TFLite builtin
    model = keras.Model(inputs, cumprod(keras.layers.Dense(4)(inputs)))
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    configure(converter, Variant("int8_full"), [np.random.default_rng(0).random((4, 4), dtype=np.float32)])
    with pytest.raises(TFLiteError, match="^calibrate-only conversion failed: 'tf.Cumprod' op is neither a custom "
                                          "op nor a flex op$") as raised:
        calibrated.convert_with_float(converter)
    assert "\n" not in raised.value.message
    assert converter._experimental_calibrate_only is False


def test_selective_quantizer_s_calibrated_model_is_a_float_reference(tiny, plain_float):
    """int8_mixed: the QuantizationDebugger behind SelectiveQuantizer keeps the same calibrated model."""
    model, calibration, x = tiny
    selective = SelectiveQuantizer(from_tf_keras(model), Variant("int8_mixed"), calibration)
    float_model = bytes(selective.debugger.calibrated_model)
    assert _without_statistics(float_model) == _without_metadata(plain_float)[0]
    np.testing.assert_allclose(_outputs(float_model, x), _outputs(plain_float, x), rtol=0, atol=1e-6)
    full_int8 = selective(())
    assert _compared_tensors(float_model, full_int8, x) == _compared_tensors(plain_float, full_int8, x)
