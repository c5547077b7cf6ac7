"""What one parse of a variant's flatbuffer tells: op inventory, float ops, weight sparsity,
Flex ops and (for integer kernels) Edge TPU readiness."""

from __future__ import annotations

from dataclasses import dataclass

from mlflow_tflite.flavor import flatbuffer
from mlflow_tflite.measure import edgetpu
from mlflow_tflite.measure.sparsity import tflite_sparsity


@dataclass(frozen=True)
class Inspection:
    """A flatbuffer read once.

    Attributes:
        op_inventory: op name -> uses (``flatbuffer.op_inventory``).
        float_ops: ops of the main subgraph with a float tensor (``flatbuffer.float_ops``).
        sparsity: fraction of zero weight values in [0, 1] (``sparsity.tflite_sparsity``).
        flex_ops: Flex op names, sorted (empty for a builtin-only model).
        edgetpu: ``edgetpu.readiness`` as compiled with batch 1 plus ``estimated_with_batch_one``,
            or ``None`` when not asked for.
    """

    op_inventory: dict[str, int]
    float_ops: int
    sparsity: float
    flex_ops: list[str]
    edgetpu: dict | None


def inspect(tflite_model: bytes, edgetpu_readiness: bool) -> Inspection:
    """Read ``tflite_model`` once and measure what the flatbuffer alone tells.

    Edge TPU readiness is estimated with the open batch dimension fixed to 1
    (``flatbuffer.fix_batch_one``): an open batch is a conversion setting, not an op the compiler
    cannot map, and ``int8_full`` ships that way; the report says whether it was fixed.

    Args:
        tflite_model: flatbuffer bytes.
        edgetpu_readiness: also estimate the Edge TPU mapping (variants with int8 kernels).

    Raises:
        TFLiteError: the bytes are not a TFLite flatbuffer.
    """
    model = flatbuffer.read_flatbuffer(tflite_model)
    inventory = flatbuffer.op_inventory(model)
    report = None
    float_ops = flatbuffer.float_ops(model)
    sparsity = tflite_sparsity(model)
    if edgetpu_readiness:
        fixed = flatbuffer.fix_batch_one(model)  # shapes only, after the readers above
        report = {**edgetpu.readiness(model), "estimated_with_batch_one": fixed}
    return Inspection(inventory, float_ops, sparsity, [n for n in inventory if n.startswith("Flex")], report)
