"""LiteRT Quantizer algorithms overlaid on a mode's named recipe (``Variant.algorithm``).

The mode's recipe (e.g. ``static_wi8_ai8``) stays the base: its I/O, activations and every op
the algorithm does not handle keep ``min_max_uniform_quantize``. The algorithm gets one rule per
weight op of the model that it supports, with the recipe's own op config; a rule the algorithm's
policy refuses (e.g. MSE int4 on DEPTHWISE_CONV_2D) is skipped and that op keeps min-max. Only
weight ops get rules: on a ``*`` rule the algorithm would drop every op it does not support to
float, and OCTAV refuses the asymmetric non-weight constants of static recipes.
"""

from __future__ import annotations

import logging

from mlflow_tflite.errors import TFLiteError
from mlflow_tflite.flavor import flatbuffer
from mlflow_tflite.quant_modes import Algorithm

log = logging.getLogger(__name__)

# The LiteRT Quantizer's names (qtyping.TFLOperationName) of the ops that carry weights.
WEIGHT_OPS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "CONV_2D_TRANSPOSE", "EMBEDDING_LOOKUP")
# Builtin op names (flatbuffer.op_inventory) that the quantizer spells differently.
_QUANTIZER_NAMES = {"TRANSPOSE_CONV": "CONV_2D_TRANSPOSE"}


def float_model_for(algorithm: Algorithm, float_model: bytes) -> bytes:
    """The float flatbuffer ``algorithm`` can quantize: batch fixed to 1 for ``hadamard``.

    The rotation's reshapes are built for the float model's shapes; with an open batch, resizing
    the input later fails (XNNPack) or aborts the process (``aeq.hadamard_rotation`` in
    ai_edge_litert 2.3), so the model is made with batch 1 and run one row at a time.
    """
    return flatbuffer.with_batch_one(float_model) if algorithm == Algorithm.HADAMARD else float_model


def supported_weight_ops(algorithm: Algorithm) -> tuple[str, ...]:
    """The weight ops ``algorithm`` handles (``algorithm_manager.get_supported_ops``), in :data:`WEIGHT_OPS` order."""
    from ai_edge_quantizer import algorithm_manager

    supported = {str(op.value) for op in algorithm_manager.get_supported_ops(algorithm.key)}
    return tuple(op for op in WEIGHT_OPS if op in supported)


def model_weight_ops(float_model: bytes) -> tuple[str, ...]:
    """The weight ops present in a float flatbuffer, as quantizer op names, in :data:`WEIGHT_OPS` order."""
    present = {_QUANTIZER_NAMES.get(name, name) for name in flatbuffer.op_inventory(float_model)}
    return tuple(op for op in WEIGHT_OPS if op in present)


def overlay(engine, algorithm: Algorithm, float_model: bytes) -> tuple[str, ...]:
    """Add ``algorithm``'s rules to a quantizer holding a mode's named recipe.

    Args:
        engine: an ``ai_edge_quantizer.quantizer.Quantizer`` built with the mode's recipe.
        algorithm: the variant's algorithm; ``min_max`` adds nothing.
        float_model: the float .tflite bytes the engine quantizes (to list its weight ops).

    Returns:
        The quantizer op names that got the algorithm, e.g. ``("FULLY_CONNECTED",)``; empty for min_max.

    Raises:
        TFLiteError: the algorithm handles none of the model's weight ops (or its policy refuses
            all of them in this mode); the message names the ops it handles and the algorithms
            that handle an op of this model.
    """
    if algorithm == Algorithm.MIN_MAX:
        return ()
    from ai_edge_quantizer import qtyping

    op_config = qtyping.OpQuantizationConfig.from_dict(engine.get_quantization_recipe()[0]["op_config"])
    present = model_weight_ops(float_model)
    applied = []
    for op in (op for op in supported_weight_ops(algorithm) if op in present):
        try:
            engine.update_quantization_recipe(".*", qtyping.TFLOperationName(op), op_config, algorithm_key=algorithm.key)
            applied.append(op)
        except ValueError as error:  # the algorithm's policy refuses this op in this mode: it keeps min-max
            log.info("algorithm %s skips %s: %s", algorithm, op, error)
    if not applied:
        raise TFLiteError(_nothing_to_apply(algorithm, present))
    return tuple(applied)


def _nothing_to_apply(algorithm: Algorithm, present: tuple[str, ...]) -> str:
    """One line: what ``algorithm`` handles, what the model has and which algorithms fit it."""
    handles = supported_weight_ops(algorithm)
    fitting = [a for a in Algorithm if set(supported_weight_ops(a)) & set(present)] or [Algorithm.MIN_MAX]
    if set(handles) & set(present):
        what = f"refuses every weight op of this model ({', '.join(present)}) in this mode"
    else:
        what = f"applies to {', '.join(handles)}, and the model has none (its weight ops: {', '.join(present) or 'none'})"
    return f"algorithm={algorithm} {what}; use algorithm={' or '.join(fitting)}"
