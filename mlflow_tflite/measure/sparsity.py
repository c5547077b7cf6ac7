"""Weight sparsity read from a .tflite flatbuffer (the run's ``sparsity_achieved``)."""

from __future__ import annotations

import numpy as np

from mlflow_tflite.flavor.flatbuffer import as_model, op_names
from mlflow_tflite.flavor.flatbuffer import type_name as tensor_type_name

_KERNEL_OPS = (
    "CONV_2D",
    "DEPTHWISE_CONV_2D",
    "FULLY_CONNECTED",
    "TRANSPOSE_CONV",
    "CONV_3D",
    "CONV_3D_TRANSPOSE",
    "BATCH_MATMUL",
    "EMBEDDING_LOOKUP",
    "LSTM",
    "UNIDIRECTIONAL_SEQUENCE_LSTM",
    "BIDIRECTIONAL_SEQUENCE_LSTM",
    "RNN",
    "UNIDIRECTIONAL_SEQUENCE_RNN",
    "BIDIRECTIONAL_SEQUENCE_RNN",
    "SVDF",
)
# Ops that turn a stored constant into the weight the kernel reads: float16 -> float32 (or int8
# -> float32) DEQUANTIZE, and DENSIFY of sparse-format weights.
_PASS_THROUGH_OPS = ("DEQUANTIZE", "DENSIFY")
# Stored weight types: TensorType name -> numpy dtype (bfloat16 is read as raw uint16 bits).
_WEIGHT_DTYPES = {
    "FLOAT32": np.float32,
    "FLOAT16": np.float16,
    "FLOAT64": np.float64,
    "BFLOAT16": np.uint16,
    "INT8": np.int8,
    "UINT8": np.uint8,
    "INT16": np.int16,
    "INT4": np.uint8,
}


def _weight_values(data: np.ndarray, type_name: str) -> np.ndarray:
    """The stored values of a constant tensor, in the stored type (int4 unpacked to int8)."""
    raw = np.frombuffer(np.asarray(data, dtype=np.uint8).tobytes(), dtype=_WEIGHT_DTYPES[type_name])
    if type_name == "INT4":  # two values per byte, low nibble first, two's complement
        nibbles = np.stack([raw & 0x0F, raw >> 4], axis=1).reshape(-1).astype(np.int8)
        return np.where(nibbles > 7, nibbles - 16, nibbles).astype(np.int8)
    return raw


def _zero_mask(tensor, values: np.ndarray, type_name: str, dense: bool) -> np.ndarray:
    """Boolean mask of the values that stand for 0.0 (the zero point for quantized integers)."""
    if type_name == "BFLOAT16":
        return (values & 0x7FFF) == 0  # +0.0 and -0.0
    if values.dtype.kind == "f":
        return values == 0
    zero_points = np.asarray(getattr(tensor.quantization, "zeroPoint", None) if tensor.quantization else None)
    if zero_points.ndim == 0 or zero_points.size == 0:
        return values == 0
    if zero_points.size == 1 or np.all(zero_points == zero_points.flat[0]):
        return values == zero_points.flat[0]
    # Per-channel zero points along the quantized dimension (only meaningful for dense tensors).
    axis = tensor.quantization.quantizedDimension
    shape = list(tensor.shape)
    if not dense or axis >= len(shape) or shape[axis] != zero_points.size:
        return values == 0
    broadcast = [1] * len(shape)
    broadcast[axis] = zero_points.size
    return values.reshape(shape) == zero_points.reshape(broadcast)


def tflite_tensor_sparsity(tflite_model: bytes) -> dict[str, tuple[int, int]]:
    """Zero and total counts of every weight tensor of a .tflite model.

    Weight tensors are the constant inputs of rank >= 2 of conv, depthwise conv, transpose
    conv, fully-connected, batch-matmul, embedding and RNN/LSTM ops, followed back through
    DEQUANTIZE and DENSIFY ops to the stored constant: so float16 models count their float16
    constants (not the float32 values DEQUANTIZE produces at run time), and dynamic-range and
    int8 models count their int8 constants. Biases (rank 1), activations, shape/index tensors
    and quantization parameters are not weights. A quantized value counts as zero when it
    equals its zero point (per channel; weights are symmetric, zero point 0); float values
    when they are +0.0 or -0.0. Sparse-format tensors count their implicit zeros. Each stored
    buffer is counted once even if several ops or subgraphs share it.

    Args:
        tflite_model: .tflite flatbuffer bytes.

    Returns:
        ``{tensor name: (zero values, total values)}``, in subgraph and op order; a name that
        occurs twice gets a ``#k`` suffix. Empty when the model has no weight tensors.

    Raises:
        TFLiteError: the bytes are not a .tflite flatbuffer.
    """
    model = as_model(tflite_model)
    codes = op_names(model)

    counts: dict[str, tuple[int, int]] = {}
    seen: set = set()
    for s, subgraph in enumerate(model.subgraphs or []):
        tensors = subgraph.tensors or []
        operators = subgraph.operators or []
        producers = {out: op for op in operators for out in (op.outputs or [])}

        def stored(index: int) -> int:
            while index in producers and codes[producers[index].opcodeIndex] in _PASS_THROUGH_OPS:
                index = producers[index].inputs[0]
            return index

        for op in operators:
            if codes[op.opcodeIndex] not in _KERNEL_OPS:
                continue
            for index in op.inputs or []:
                if index < 0:
                    continue
                index = stored(index)
                tensor = tensors[index]
                buffer = model.buffers[tensor.buffer] if 0 < tensor.buffer < len(model.buffers or []) else None
                type_name = tensor_type_name(tensor.type)
                shape = list(tensor.shape) if tensor.shape is not None else []
                if (
                    index in producers
                    or buffer is None
                    or buffer.data is None
                    or len(buffer.data) == 0
                    or type_name not in _WEIGHT_DTYPES
                    or len(shape) < 2
                ):
                    continue
                key = ("buffer", tensor.buffer)
                if key in seen:
                    continue
                seen.add(key)
                values = _weight_values(buffer.data, type_name)
                dense = tensor.sparsity is None
                total = int(np.prod(shape))
                values = values[:total]
                zeros = int(np.count_nonzero(_zero_mask(tensor, values, type_name, dense)))
                if not dense:  # only the non-zero blocks are stored
                    zeros += total - len(values)
                name = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name or f"{s}:{index}")
                unique, k = name, 1
                while unique in counts:
                    k += 1
                    unique = f"{name}#{k}"
                counts[unique] = (zeros, total)
    return counts


def tflite_sparsity(tflite_model: bytes) -> float:
    """Fraction of exactly-zero weight values in a .tflite model (the run's ``sparsity_achieved``).

    Weighted over all weight tensors (conv / fully-connected kernels and the like, see
    :func:`tflite_tensor_sparsity`), read from the flatbuffer's constants in their stored type:
    float32 for ``none``, int8 for ``dynamic`` / ``int8`` / ``int8_full`` / ``int16x8``, float16
    for ``float16``. Quantization can add a few zeros (weights smaller than half a quantization
    step round to 0), so an unpruned int8 model is slightly above 0.

    Args:
        tflite_model: .tflite flatbuffer bytes.

    Returns:
        A fraction in ``[0, 1]``; 0.0 for a model without weight tensors.

    Raises:
        TFLiteError: the bytes are not a .tflite flatbuffer.
    """
    counts = tflite_tensor_sparsity(tflite_model).values()
    total = sum(t for _, t in counts)
    return float(sum(z for z, _ in counts) / total) if total else 0.0
