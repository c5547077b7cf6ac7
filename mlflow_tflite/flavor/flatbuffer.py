"""Reading a .tflite flatbuffer without an interpreter: ops, input/output tensors, weight sparsity.

The flatbuffer is parsed with LiteRT's own tools (``ai_edge_litert.tools.flatbuffer_utils`` and
the schema's object API, ``ai_edge_litert.schema_py_generated``): op names come from
``flatbuffer_utils.opcode_to_name`` and tensor type names from ``flatbuffer_utils.type_to_name``.
This works for models no interpreter here can load (Flex ops). Only ``numpy`` and
``ai_edge_litert`` are imported, never TensorFlow.
"""

from __future__ import annotations

import numpy as np

from mlflow_tflite.errors import TFLiteError
from mlflow_tflite.flavor.tensors import TensorInfo, invalid_model_error


def read_flatbuffer(tflite_model: bytes):
    """Parse a .tflite flatbuffer into the LiteRT schema's object API.

    Args:
        tflite_model: .tflite flatbuffer bytes (any bytes-like object).

    Returns:
        ``ai_edge_litert.schema_py_generated.ModelT``: ``subgraphs`` (tensors, operators,
        inputs, outputs), ``operatorCodes``, ``buffers`` and ``signatureDefs``, as read by
        ``flatbuffer_utils.read_model_from_bytearray``.

    Raises:
        TFLiteError: the bytes are not a TFLite flatbuffer (no ``TFL3`` identifier, or a
            flatbuffer that does not parse).
    """
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    data = bytes(tflite_model)
    if len(data) < 8 or not schema.Model.ModelBufferHasIdentifier(data, 0):
        raise TFLiteError(
            f"the {len(data)}-byte model is not a valid TFLite flatbuffer (no TFL3 identifier); "
            "pass the bytes or path of a .tflite file written by TFLiteConverter"
        )
    try:
        return flatbuffer_utils.read_model_from_bytearray(bytearray(data))
    except Exception as error:
        raise invalid_model_error(data, error) from None


def as_model(tflite_model):
    """``tflite_model`` parsed (:func:`read_flatbuffer`), or itself when it is parsed already.

    The readers below take either, so a caller that needs several of them parses once.

    Raises:
        TFLiteError: bytes that are not a TFLite flatbuffer.
    """
    from ai_edge_litert import schema_py_generated as schema

    return tflite_model if isinstance(tflite_model, schema.ModelT) else read_flatbuffer(tflite_model)


def op_names(model) -> list[str]:
    """Name of each operator code of a parsed model, indexed like ``model.operatorCodes``.

    A custom op (Flex ops included) is named by its custom code (``"FlexCumprod"``), a builtin
    op by ``flatbuffer_utils.opcode_to_name`` (``"CONV_2D"``), an unknown builtin code by its number.
    """
    from ai_edge_litert.tools import flatbuffer_utils

    names = []
    for index, code in enumerate(model.operatorCodes or []):
        if code.customCode:
            names.append(code.customCode.decode())
        else:
            name = flatbuffer_utils.opcode_to_name(model, index)
            names.append(name or str(flatbuffer_utils.get_builtin_code_from_operator_code(code)))
    return names


def type_name(tensor_type: int) -> str | None:
    """TensorType name of a schema type code (``0`` -> ``"FLOAT32"``), ``None`` for an unknown code."""
    from ai_edge_litert.tools import flatbuffer_utils

    try:
        return flatbuffer_utils.type_to_name(tensor_type)
    except KeyError:
        return None


def numpy_dtype(tensor_type: int) -> np.dtype:
    """numpy dtype of a schema type code: the type name in lower case (``INT8`` -> ``int8``).

    Types numpy has no dtype for (STRING, RESOURCE, VARIANT, INT4, BFLOAT16, FLOAT8 ...) and
    unknown codes read as float32.
    """
    name = type_name(tensor_type)
    try:
        return np.dtype(name.lower()) if name else np.dtype(np.float32)
    except TypeError:
        return np.dtype(np.float32)


def op_inventory(tflite_model: bytes) -> dict[str, int]:
    """Count the ops of a model, read from the flatbuffer (works for Flex models too).

    Args:
        tflite_model: .tflite flatbuffer bytes.

    Returns:
        Op name -> uses in all subgraphs, sorted by name, e.g. ``{"CONV_2D": 3, "FlexCumprod": 1}``:
        builtin ops by their ``BuiltinOperator`` name, custom and Flex ops by their custom code.

    Raises:
        TFLiteError: the bytes are not a TFLite flatbuffer.
    """
    model = as_model(tflite_model)
    names = op_names(model)
    counts: dict[str, int] = {}
    for subgraph in model.subgraphs:
        for op in subgraph.operators or []:
            name = names[op.opcodeIndex]
            counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


_FLOAT_TYPES = ("FLOAT32", "FLOAT16", "FLOAT64", "BFLOAT16")


def float_ops(tflite_model: bytes) -> int:
    """Number of ops of the main subgraph with a float tensor (the run's ``float_ops``).

    An op counts when any of its input or output tensors (constants included) is FLOAT32,
    FLOAT16, FLOAT64 or BFLOAT16: so a float16 model's DEQUANTIZE ops count, and 0 means an
    integer-only model.

    Args:
        tflite_model: .tflite flatbuffer bytes.

    Returns:
        A count of ops, ``0`` to the number of ops of the first subgraph.

    Raises:
        TFLiteError: the bytes are not a TFLite flatbuffer.
    """
    model = as_model(tflite_model)
    subgraph = model.subgraphs[0]
    count = 0
    for op in subgraph.operators or []:
        indices = list(op.inputs if op.inputs is not None else []) + list(op.outputs if op.outputs is not None else [])
        if any(type_name(subgraph.tensors[i].type) in _FLOAT_TYPES for i in indices if i >= 0):
            count += 1
    return count


def tensor_producers(tflite_model: bytes) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Tensor name -> (name of the op that writes it, shape), for the main subgraph's op outputs.

    Constants (weights) and model inputs, which no op writes, are not in the mapping.

    Raises:
        TFLiteError: the bytes are not a TFLite flatbuffer.
    """
    model = as_model(tflite_model)
    names = op_names(model)
    subgraph = model.subgraphs[0]
    produced = {}
    for op in subgraph.operators or []:
        for index in op.outputs if op.outputs is not None else []:
            tensor = subgraph.tensors[index]
            shape = tuple(int(d) for d in (tensor.shape if tensor.shape is not None else []))
            produced[tensor.name.decode()] = (names[op.opcodeIndex], shape)
    return produced


def op_tensors(tflite_model: bytes) -> list[tuple[str, list[str], list[str]]]:
    """``(op name, input tensor names, output tensor names)`` of each op of the main subgraph, in execution order.

    Optional inputs that are absent (index -1) are left out.

    Raises:
        TFLiteError: the bytes are not a TFLite flatbuffer.
    """
    model = as_model(tflite_model)
    names = op_names(model)
    subgraph = model.subgraphs[0]
    tensor_names = lambda indices: [subgraph.tensors[i].name.decode()  # noqa: E731
                                    for i in (indices if indices is not None else []) if i >= 0]
    return [(names[op.opcodeIndex], tensor_names(op.inputs), tensor_names(op.outputs))
            for op in subgraph.operators or []]


def with_batch_one(tflite_model: bytes) -> bytes:
    """The model with its open batch dimension fixed to 1: static shapes, nothing else changed.

    TFLiteConverter gives Keras models a batch dimension of -1 in every tensor's
    ``shape_signature`` (``shape`` holds 1). The Edge TPU compiler and TensorFlow Lite Micro need
    static shapes ("Attempting to use a delegate that only supports static-sized tensors with a
    graph that has dynamic-sized tensors", google-coral/edgetpu#586, #829); Samsung ONE's
    ``--dynamic_batch_to_single_batch`` pass makes the same change (Samsung/ONE#8739). Each
    tensor whose signature is open only in its first dimension, with ``shape[0] == 1``, gets its
    ``shape`` as signature; other open dimensions are left as they are.

    Args:
        tflite_model: .tflite flatbuffer bytes.

    Returns:
        Flatbuffer bytes (the input itself when no tensor changes).

    Raises:
        TFLiteError: the bytes are not a TFLite flatbuffer.
    """
    from ai_edge_litert.tools import flatbuffer_utils

    model = read_flatbuffer(tflite_model)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)) if fix_batch_one(model) else tflite_model


def fix_batch_one(model) -> bool:
    """:func:`with_batch_one` on a parsed model, in place; True when some tensor changed."""
    changed = False
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            signature = tensor.shapeSignature
            if signature is None or tensor.shape is None or not len(signature) or len(signature) != len(tensor.shape):
                continue
            if signature[0] == -1 and tensor.shape[0] == 1 and all(d != -1 for d in signature[1:]):
                tensor.shapeSignature = list(tensor.shape)
                changed = True
    return changed


def flex_ops(tflite_model: bytes) -> list[str]:
    """Names of the Flex (SELECT_TF_OPS) ops in a model.

    Args:
        tflite_model: .tflite flatbuffer bytes.

    Returns:
        Op names starting with ``Flex``, sorted, each once, e.g. ``["FlexCumprod"]``; empty if none.

    Raises:
        TFLiteError: the bytes are not a TFLite flatbuffer.
    """
    return [name for name in op_inventory(tflite_model) if name.startswith("Flex")]


def static_io_tensors(tflite_model: bytes) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """Inputs and outputs of a model read from the flatbuffer, without an interpreter.

    The counterpart of :func:`mlflow_tflite.runtime.io_tensors` for models no interpreter here
    can load (Flex ops). Tensors are named by the first signature when the model has one, else
    by their tensor names; shapes come from ``shape_signature`` (``-1`` for dynamic dimensions)
    when present; scale and zero point are the first (per-tensor) quantization parameters, 0.0
    and 0 for float tensors.

    Args:
        tflite_model: .tflite flatbuffer bytes.

    Returns:
        ``(inputs, outputs)``: lists of :class:`~mlflow_tflite.runtime.TensorInfo` of the first
        subgraph, in its input and output order. dtypes follow the tensor type (``INT8`` ->
        ``int8``); types numpy has no dtype for read as float32.

    Raises:
        TFLiteError: the bytes are not a TFLite flatbuffer.
    """
    model = read_flatbuffer(tflite_model)
    subgraph = model.subgraphs[0]
    names = {}
    if model.signatureDefs:
        signature = model.signatureDefs[0]
        names = {t.tensorIndex: t.name.decode() for t in list(signature.inputs) + list(signature.outputs)}

    def info(index: int) -> TensorInfo:
        tensor = subgraph.tensors[index]
        shape = tensor.shapeSignature if tensor.shapeSignature is not None else tensor.shape
        quantization = tensor.quantization
        scale = float(quantization.scale[0]) if quantization is not None and quantization.scale is not None else 0.0
        zero_point = int(quantization.zeroPoint[0]) if scale and quantization.zeroPoint is not None else 0
        return TensorInfo(names.get(index, tensor.name.decode()), int(index), tuple(int(d) for d in shape),
                          numpy_dtype(tensor.type), scale, zero_point)

    return [info(i) for i in subgraph.inputs], [info(i) for i in subgraph.outputs]


# --------------------------------------------------------------------------------------------
# Sparsity of the weights
# --------------------------------------------------------------------------------------------

# Ops whose constant inputs of rank >= 2 are weights (kernels, matrices, embedding tables).
