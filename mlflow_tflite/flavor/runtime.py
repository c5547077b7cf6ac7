"""LiteRT interpreter helpers: tensor details, (de)quantized invocation, batching (latency: ``latency.py``).

Only ``numpy`` and ``ai_edge_litert`` are imported here (TensorFlow only for Flex models), so
serving a ``tflite`` model does not pay for importing TensorFlow.
"""

from __future__ import annotations

import numpy as np

from mlflow_tflite.errors import TFLiteError
from mlflow_tflite.flavor.flatbuffer import flex_ops
from mlflow_tflite.flavor.tensors import TensorInfo, invalid_model_error
from mlflow_tflite.quant_modes import ModelTraits, recognise

# Version of the interpreter package, recorded in the flavor configuration.
RUNTIME_PACKAGE = "ai-edge-litert"


def runtime_version() -> str:
    """Installed version of the LiteRT package, e.g. ``"2.1.0"``."""
    from importlib.metadata import version

    return version(RUNTIME_PACKAGE)


FLEX_UNAVAILABLE = (
    "neither LiteRT nor TensorFlow's Python interpreter here links the Flex delegate (TensorFlow 2.20+ pip "
    "packages dropped it: google-ai-edge/LiteRT issue 6458), so it cannot run in Python; it runs where the "
    "select-tf-ops library is linked (Android/iOS/C++), or convert with ops=builtins"
)


def make_interpreter(tflite_model: bytes, num_threads: int = 1):
    """Load a .tflite flatbuffer into an interpreter with tensors allocated.

    LiteRT's interpreter is used; a model with Flex (SELECT_TF_OPS) ops, which LiteRT cannot
    run, falls back to TensorFlow's ``tf.lite.Interpreter`` (which linked the Flex delegate
    before TensorFlow 2.20).

    Args:
        tflite_model: flatbuffer bytes.
        num_threads: CPU threads the interpreter may use (>= 1).

    Returns:
        An interpreter (``ai_edge_litert.interpreter.Interpreter`` or ``tf.lite.Interpreter``).

    Raises:
        TFLiteError: the bytes are not a model either interpreter can load (for Flex models,
            the message names the ops and says why, see :data:`FLEX_UNAVAILABLE`).
    """
    from ai_edge_litert.interpreter import Interpreter

    try:
        return _allocated(Interpreter, tflite_model, num_threads)
    except (ValueError, RuntimeError) as error:
        if "Flex" not in str(error) and "Select TensorFlow op" not in str(error):
            raise invalid_model_error(tflite_model, error) from None
    import tensorflow as tf

    try:
        return _allocated(tf.lite.Interpreter, tflite_model, num_threads)
    except (ValueError, RuntimeError) as error:
        if "Flex" in str(error) or "Select TensorFlow op" in str(error):
            raise TFLiteError(f"the model needs Flex ops {flex_ops(tflite_model)} but {FLEX_UNAVAILABLE}") from None
        raise invalid_model_error(tflite_model, error) from None


def _allocated(interpreter_class, tflite_model: bytes, num_threads: int):
    interpreter = interpreter_class(model_content=bytes(tflite_model), num_threads=num_threads)
    interpreter.allocate_tensors()
    return interpreter


def _signature_details(interpreter):
    """(inputs, outputs) detail dicts keyed by signature name, or ``None`` without a signature."""
    signatures = interpreter.get_signature_list()
    if not signatures:
        return None
    key = "serving_default" if "serving_default" in signatures else sorted(signatures)[0]
    runner = interpreter.get_signature_runner(key)
    return runner.get_input_details(), runner.get_output_details()


def _tensor_info(name: str, detail: dict) -> TensorInfo:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    shape = detail.get("shape_signature", detail["shape"])
    return TensorInfo(
        name=name,
        index=int(detail["index"]),
        shape=tuple(int(d) for d in shape),
        dtype=np.dtype(detail["dtype"]),
        scale=float(scale),
        zero_point=int(zero_point),
    )


def io_tensors(interpreter) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """Inputs and outputs of a model, named by its signature when it has one.

    Returns:
        ``(inputs, outputs)``: lists of :class:`TensorInfo` in signature order (or tensor order).
    """
    signature = _signature_details(interpreter)
    if signature is None:
        inputs = [_tensor_info(d["name"], d) for d in interpreter.get_input_details()]
        outputs = [_tensor_info(d["name"], d) for d in interpreter.get_output_details()]
        return inputs, outputs
    input_details, output_details = signature
    # The tensor details carry shape_signature; the signature details may not.
    by_index = {d["index"]: d for d in interpreter.get_input_details() + interpreter.get_output_details()}
    inputs = [_tensor_info(name, by_index.get(d["index"], d)) for name, d in input_details.items()]
    outputs = [_tensor_info(name, by_index.get(d["index"], d)) for name, d in output_details.items()]
    return inputs, outputs


def match_order(tensors: list[TensorInfo], names: list[str]) -> list[int]:
    """For each tensor, the index of its counterpart in ``names`` (the source model's order).

    Tensors are matched by name when the names agree (``x`` also matches ``x:0``); otherwise
    by position, which is how the converter orders a model's inputs and outputs.
    """
    base = [n.split(":")[0] for n in names]
    by_name = {n: i for i, n in enumerate(base)}
    if len(by_name) == len(tensors) and all(t.name.split(":")[0] in by_name for t in tensors):
        return [by_name[t.name.split(":")[0]] for t in tensors]
    return list(range(len(tensors)))


def quantize(x: np.ndarray, tensor: TensorInfo) -> np.ndarray:
    """Real values -> the tensor's dtype: ``round(x / scale + zero_point)``, clipped to its range.

    Integer input for a quantized tensor is taken as already quantized and passed through.
    The affine scheme is TFLite's (https://ai.google.dev/edge/litert/models/quantization_spec).
    """
    x = np.asarray(x)
    if not tensor.quantized:
        return x.astype(tensor.dtype, copy=False)
    if np.issubdtype(x.dtype, np.integer):
        return x.astype(tensor.dtype, copy=False)
    info = np.iinfo(tensor.dtype)
    q = np.round(x.astype(np.float64) / tensor.scale + tensor.zero_point)
    return np.clip(q, info.min, info.max).astype(tensor.dtype)


def dequantize(q: np.ndarray, tensor: TensorInfo) -> np.ndarray:
    """Quantized tensor values -> float32 real values: ``(q - zero_point) * scale``."""
    if not tensor.quantized:
        return np.asarray(q).astype(np.float32, copy=False)
    return ((q.astype(np.float32) - tensor.zero_point) * tensor.scale).astype(np.float32)


def _batch_capacity(inputs: list[TensorInfo]) -> int | None:
    """Fixed batch size of the model, or ``None`` when the batch dimension is dynamic."""
    shape = inputs[0].shape
    return None if not shape or shape[0] == -1 else shape[0]


def _current_shape(interpreter, tensor: TensorInfo) -> tuple[int, ...]:
    details = {d["index"]: d for d in interpreter.get_input_details()}
    return tuple(int(d) for d in details[tensor.index]["shape"])


def invoke(interpreter, inputs: list[TensorInfo], outputs: list[TensorInfo], arrays: list[np.ndarray]):
    """Run one batch of inputs (already in the tensors' dtypes); return the raw output arrays."""
    resized = False
    for tensor, array in zip(inputs, arrays):
        if _current_shape(interpreter, tensor) != tuple(array.shape):
            interpreter.resize_tensor_input(tensor.index, list(array.shape), strict=True)
            resized = True
    try:
        if resized:
            interpreter.allocate_tensors()
        for tensor, array in zip(inputs, arrays):
            interpreter.set_tensor(tensor.index, array)
        interpreter.invoke()
    except (RuntimeError, ValueError) as error:
        reason = " ".join(str(error).split())[:300]
        shapes = [tuple(a.shape) for a in arrays]
        raise TFLiteError(f"the TFLite model failed to run on inputs of shape {shapes} ({reason})") from None
    return [interpreter.get_tensor(tensor.index).copy() for tensor in outputs]


def _check_input_shapes(inputs: list[TensorInfo], arrays: list[np.ndarray]) -> int:
    """Validate arrays against the model inputs; return the number of rows (examples)."""
    if len(arrays) != len(inputs):
        raise TFLiteError(
            f"the model takes {len(inputs)} input(s) {[t.name for t in inputs]} but got {len(arrays)}; "
            "pass one array per input (a dict keyed by input name for several)"
        )
    rows = {int(a.shape[0]) if a.ndim else -1 for a in arrays}
    for tensor, array in zip(inputs, arrays):
        expected = tensor.shape[1:]
        got = tuple(array.shape[1:])
        if array.ndim != len(tensor.shape) or any(e not in (-1, g) for e, g in zip(expected, got)):
            shown = tuple("?" if d == -1 else d for d in tensor.shape)
            raise TFLiteError(
                f"input {tensor.name!r} has shape {tuple(array.shape)} but the model expects {shown} "
                "(first axis = batch); reshape or resize the data to the model's input size"
            )
    if len(rows) != 1:
        raise TFLiteError(f"inputs have different numbers of rows {sorted(rows)}; pass the same batch for each input")
    return rows.pop()


def run(interpreter, arrays: list[np.ndarray], batch_size: int = 256) -> list[np.ndarray]:
    """Predict with a .tflite model on float (or already quantized) inputs, in batches.

    Float input is quantized for integer input tensors and integer output is dequantized, using
    each tensor's scale and zero point, so the result is comparable with the source model's.

    Args:
        interpreter: an interpreter from :func:`make_interpreter`.
        arrays: one array per model input, each ``(N, *input_shape[1:])``.
        batch_size: rows per invocation (>= 1) when the batch dimension is dynamic; a model
            with a fixed batch size ``B`` is run ``B`` rows at a time (the last batch zero-padded).

    Returns:
        One float32 array per model output, each ``(N, *output_shape[1:])``.

    Raises:
        TFLiteError: wrong number of inputs, shapes that do not match the model, or
            ``batch_size < 1``.
    """
    if batch_size < 1:
        raise TFLiteError(f"batch_size {batch_size} must be >= 1 (rows per interpreter invocation)")
    inputs, outputs = io_tensors(interpreter)
    rows = _check_input_shapes(inputs, arrays)
    fixed_batch = _batch_capacity(inputs)
    step = fixed_batch or batch_size
    collected: list[list[np.ndarray]] = [[] for _ in outputs]
    for start in range(0, rows, step):
        chunk = [quantize(a[start : start + step], t) for a, t in zip(arrays, inputs)]
        real_rows = chunk[0].shape[0]
        if fixed_batch and real_rows < step:
            chunk = [np.concatenate([c, np.zeros((step - real_rows, *c.shape[1:]), c.dtype)]) for c in chunk]
        raw = invoke(interpreter, inputs, outputs, chunk)
        for store, tensor, value in zip(collected, outputs, raw):
            store.append(dequantize(value[:real_rows], tensor))
    return [np.concatenate(parts) if parts else np.zeros((0,), np.float32) for parts in collected]


def quantization_mode(interpreter):
    """Infer the quantization mode of a loaded model from its tensors and ops.

    Reads the model's traits and applies ``quant_modes.recognise`` (the ``recognised_by`` column of
    ``quant_modes.QUANT_RECIPES``): integer model inputs mean ``int8_full``; ``QUANTIZE`` ops with
    int16 activations mean ``int16x8``, with int8 ones ``int8``; int8 weights without
    ``QUANTIZE`` ops are dynamic-range; float16 constants are ``float16``.

    Returns:
        ``quant_modes.QuantMode`` (equal to its string, e.g. ``"int8"``).
    """
    inputs, _ = io_tensors(interpreter)
    dtypes = {np.dtype(d["dtype"]) for d in interpreter.get_tensor_details()}
    return recognise(ModelTraits(
        integer_inputs=any(t.dtype in (np.int8, np.uint8) for t in inputs),
        quantize_op="QUANTIZE" in {op["op_name"] for op in interpreter._get_ops_details()},
        int16_tensors=np.dtype(np.int16) in dtypes,
        int8_tensors=np.dtype(np.int8) in dtypes,
        float16_tensors=np.dtype(np.float16) in dtypes,
    ))


def _signature(float_model: bytes) -> tuple[str, list[str]]:
    """(signature key, input names) of a float flatbuffer."""
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
