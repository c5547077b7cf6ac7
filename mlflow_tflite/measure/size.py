"""Why a quantized model is larger than its float model, read from both flatbuffers.

Quantization shrinks weights 4x, but adds bytes of its own: an int32 bias per quantized op
(an op whose float bias was shared, e.g. each step of an unrolled recurrence, gets a bias of
its own, because the bias scale is the product of that op's input and weight scales), a scale
(float32) and a zero point (int64) per channel of each per-channel tensor, QUANTIZE/DEQUANTIZE
ops with their tensors, and the float constants kept. :func:`size_warning` names the parts
that grew, largest growth first.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlflow_tflite.display import human_bytes
from mlflow_tflite.flavor import flatbuffer

# Ops whose bias is an input, and its index (the TFLite builtin op signatures).
_BIAS_INPUT = {"CONV_2D": 2, "DEPTHWISE_CONV_2D": 2, "FULLY_CONNECTED": 2, "CONV_3D": 2, "TRANSPOSE_CONV": 3}


@dataclass(frozen=True)
class Footprint:
    """Where a .tflite model's bytes go (all subgraphs; a constant buffer shared by tensors counts once).

    Attributes:
        size: the flatbuffer's bytes.
        biases: bias constants (the bias input of CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED,
            CONV_3D, TRANSPOSE_CONV): count of buffers, and their types, e.g. ``("INT32",)``.
        bias_bytes: bytes of those buffers.
        constants: other constant buffers (weights, shapes, lookup tables).
        constant_bytes: bytes of those buffers.
        float_constant_bytes: bytes of the constants (biases included) stored as float types.
        quantized_tensors: tensors with quantization parameters; ``per_channel``: with more than one scale.
        quantization_bytes: bytes of their scales (float32), zero points (int64), min and max (float32).
        ops, tensors: counts.
        graph_bytes: the rest: op and tensor records, tensor names, signatures, metadata.
    """

    size: int
    biases: int
    bias_types: tuple[str, ...]
    bias_bytes: int
    constants: int
    constant_bytes: int
    float_constant_bytes: int
    quantized_tensors: int
    per_channel: int
    quantization_bytes: int
    ops: int
    tensors: int

    @property
    def graph_bytes(self) -> int:
        """Bytes not in constants or quantization parameters."""
        return self.size - self.bias_bytes - self.constant_bytes - self.quantization_bytes


def footprint(tflite_model: bytes) -> Footprint:
    """The :class:`Footprint` of .tflite flatbuffer bytes.

    Raises:
        TFLiteError: the bytes are not a TFLite flatbuffer.
    """
    model = flatbuffer.read_flatbuffer(tflite_model)
    names = flatbuffer.op_names(model)
    buffer_types: dict[int, str] = {}
    bias_buffers: set[int] = set()
    quantized = per_channel = quantization_bytes = ops = tensor_count = 0
    for subgraph in model.subgraphs:
        tensors = subgraph.tensors if subgraph.tensors is not None else []
        tensor_count += len(tensors)
        for op in subgraph.operators if subgraph.operators is not None else []:
            ops += 1
            index = _BIAS_INPUT.get(names[op.opcodeIndex])
            inputs = list(op.inputs) if op.inputs is not None else []
            if index is not None and index < len(inputs) and inputs[index] >= 0:
                bias_buffers.add(tensors[inputs[index]].buffer)
        for tensor in tensors:
            if _buffer_bytes(model, tensor.buffer):
                buffer_types.setdefault(tensor.buffer, flatbuffer.type_name(tensor.type) or str(tensor.type))
            quantization_bytes += _quantization_bytes(tensor.quantization)
            scales = len(tensor.quantization.scale) if tensor.quantization and tensor.quantization.scale is not None else 0
            quantized, per_channel = quantized + (scales > 0), per_channel + (scales > 1)
    biases = {b: t for b, t in buffer_types.items() if b in bias_buffers}
    constants = {b: t for b, t in buffer_types.items() if b not in bias_buffers}
    floats = [b for b, t in buffer_types.items() if t in ("FLOAT32", "FLOAT16", "FLOAT64", "BFLOAT16")]
    total = lambda buffers: sum(_buffer_bytes(model, b) for b in buffers)  # noqa: E731
    return Footprint(len(tflite_model), len(biases), tuple(sorted(set(biases.values()))), total(biases), len(constants),
                     total(constants), total(floats), quantized, per_channel, quantization_bytes, ops, tensor_count)


def _buffer_bytes(model, index: int) -> int:
    """Bytes of buffer ``index``: its data, or its size when stored outside the flatbuffer (models over 2 GB)."""
    if not index or index >= len(model.buffers):
        return 0
    buffer = model.buffers[index]
    return len(buffer.data) if buffer.data is not None else int(getattr(buffer, "size", 0) or 0)


def _quantization_bytes(quantization) -> int:
    """Bytes of a tensor's quantization parameters: float32 scales, min, max and int64 zero points."""
    if quantization is None:
        return 0
    count = lambda values: 0 if values is None else len(values)  # noqa: E731
    return 4 * (count(quantization.scale) + count(quantization.min) + count(quantization.max)) \
        + 8 * count(quantization.zeroPoint)


def size_warning(float_model: bytes, quantized_model: bytes, quant: str) -> str | None:
    """Why a quantized model is larger than the float model of the same source and input size.

    Args:
        float_model: the float .tflite bytes (``quant=none``) of the same model.
        quantized_model: the variant's .tflite bytes.
        quant: the variant's mode, named in the text (e.g. ``"int8"``).

    Returns:
        ``None`` when the quantized model is not larger; else one line, e.g. ``"int8 model is
        1.56x the float model (1.9 MB vs 1.22 MB): 412 int32 bias tensors (1.2 MB; float model:
        103, 401 KB); quantization parameters of 824 tensors, 412 per-channel (300 KB)"``
        (sizes as ``display.human_bytes``):
        the parts that grew, largest growth first.

    Raises:
        TFLiteError: either model is not a TFLite flatbuffer.
    """
    if len(quantized_model) <= len(float_model):
        return None
    f, q = footprint(float_model), footprint(quantized_model)
    types = "/".join(q.bias_types).lower() + " " if q.bias_types else ""
    parts = [
        (q.bias_bytes - f.bias_bytes,
         f"{q.biases} {types}bias tensors ({human_bytes(q.bias_bytes)}; float model: {f.biases}, {human_bytes(f.bias_bytes)})"),
        (q.quantization_bytes - f.quantization_bytes,
         f"quantization parameters of {q.quantized_tensors} tensors, {q.per_channel} per-channel "
         f"({human_bytes(q.quantization_bytes)})"),
        (q.constant_bytes - f.constant_bytes,
         f"{q.constants} other constants ({human_bytes(q.constant_bytes)}, {human_bytes(q.float_constant_bytes)} of all "
         f"constants float; float model: {f.constants}, {human_bytes(f.constant_bytes)})"),
        (q.graph_bytes - f.graph_bytes,
         f"graph records of {q.ops} ops and {q.tensors} tensors ({human_bytes(q.graph_bytes)}; float model: "
         f"{f.ops} ops, {f.tensors} tensors, {human_bytes(f.graph_bytes)})"),
    ]
    grown = [text for growth, text in sorted(parts, key=lambda p: -p[0]) if growth > 0]
    return (f"{quant} model is {len(quantized_model) / len(float_model):.2f}x the float model "
            f"({human_bytes(len(quantized_model))} vs {human_bytes(len(float_model))}): " + "; ".join(grown))
