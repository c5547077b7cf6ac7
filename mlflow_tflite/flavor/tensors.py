"""What the flavor knows of a model's tensors without running it: :class:`TensorInfo` and the
error for bytes that are not a loadable model. numpy only (shared by ``runtime`` and ``flatbuffer``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mlflow_tflite.errors import TFLiteError, first_line


@dataclass(frozen=True)
class TensorInfo:
    """One input or output tensor of a .tflite model.

    Attributes:
        name: signature name (e.g. ``"input_1"``) or, without a signature, the tensor name.
        index: tensor index in the interpreter.
        shape: shape with ``-1`` for dynamic dimensions (from ``shape_signature``).
        dtype: numpy dtype of the tensor (``float32``, ``int8``, ``uint8``, ``int16`` ...).
        scale: quantization scale (0.0 for a float tensor).
        zero_point: quantization zero point (0 for a float tensor).
    """

    name: str
    index: int
    shape: tuple[int, ...]
    dtype: np.dtype
    scale: float
    zero_point: int

    @property
    def quantized(self) -> bool:
        """True when the tensor holds integer values that stand for real numbers."""
        return self.scale != 0.0 and np.issubdtype(self.dtype, np.integer)

    def to_dict(self) -> dict:
        """Plain description for the MLmodel file: name, shape, dtype, scale, zero point."""
        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": np.dtype(self.dtype).name,
            "scale": self.scale,
            "zero_point": self.zero_point,
        }


def invalid_model_error(tflite_model: bytes, error: Exception) -> TFLiteError:
    """The error for bytes that do not load as a model, naming the first line of ``error``.

    Args:
        tflite_model: the bytes that failed to load (only their length is reported).
        error: what the interpreter or flatbuffer parser raised.

    Returns:
        A :class:`TFLiteError` (to raise): the bytes are not a valid TFLite flatbuffer, or (an op
        that "failed to prepare") a valid model the LiteRT kernels cannot run in this form.
    """
    reason = first_line(error)
    if "failed to prepare" in reason:
        return TFLiteError(
            f"the {len(tflite_model)}-byte model loads but LiteRT cannot prepare one of its ops ({reason}); "
            "its quantized ranges do not fit that kernel: choose another quant mode (or quantizer algorithm) for this model"
        )
    return TFLiteError(
        f"the {len(tflite_model)}-byte model is not a valid TFLite flatbuffer ({reason}); "
        "pass the bytes or path of a .tflite file written by TFLiteConverter"
    )
