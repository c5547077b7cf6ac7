"""LiteRT Quantizer recipe rules for mixed precision: one rule per precision, whatever the op count.

The quantizer matches every op against every rule of its recipe (``recipe_manager.get_quantization_configs``),
and Python's ``re`` caches 512 compiled patterns, so one rule per op made a trial's cost grow with the
number of ops kept out of int8 (341 s at 512 float ops against 12 s for one combined rule on a 7,700-op
model). Here each precision gets one rule: an alternation of the exact op scopes it covers.
"""

from __future__ import annotations

import re

from mlflow_tflite.build.mixed import Plan, Precision
from mlflow_tflite.flavor import flatbuffer

# ai_edge_quantizer.utils.tfl_flatbuffer_utils.get_op_scope cuts an op scope to this many characters.
_MAX_SCOPE = 10000


def op_scopes(float_model: bytes) -> dict[str, str]:
    """First output tensor name -> the op's scope as the LiteRT Quantizer names it: its output names
    joined by ``;`` with a trailing ``;``, cut at 10,000 characters (main subgraph, ops with outputs).

    Raises:
        TFLiteError: the bytes are not a TFLite flatbuffer.
    """
    return {outputs[0]: (";".join(outputs) + ";")[:_MAX_SCOPE]
            for _, _, outputs in flatbuffer.op_tensors(float_model) if outputs}


def scope_pattern(scopes: list[str]) -> str:
    """The regex matching exactly the given op scopes: ``^(?:s1|s2|...)$``, each escaped (names hold
    ``;``, ``/``, ``.``, ``:`` and brackets), so an op whose scope merely starts with one is not matched."""
    return "^(?:" + "|".join(re.escape(scope) for scope in scopes) + ")$"


def op_fallback(op: str) -> Precision:
    """The cheapest precision above static int8 the LiteRT Quantizer has for a builtin op: dynamic
    range, else weight-only int8, else float (ops without weights, e.g. ``ADD``, ``SOFTMAX``)."""
    from ai_edge_quantizer import algorithm_manager, qtyping, recipe

    try:
        name = qtyping.TFLOperationName(op)
    except ValueError:
        return Precision.FLOAT
    for precision, named in ((Precision.DYNAMIC_INT8, recipe.dynamic_wi8_afp32),
                             (Precision.WEIGHT_ONLY_INT8, recipe.weight_only_wi8_afp32)):
        (rule,) = named()
        try:
            algorithm_manager.check_op_quantization_config(
                rule["algorithm_key"], name, qtyping.OpQuantizationConfig.from_dict(rule["op_config"]))
            return precision
        except ValueError:
            continue
    return Precision.FLOAT


# Bytes per output channel of a channelwise int8 weight: a float32 scale and an int64 zero point.
_CHANNEL_PARAM_BYTES = 12
# Ops whose weight is quantized along its last dimension (the others along the first).
_LAST_AXIS_OPS = ("DEPTHWISE_CONV_2D", "BATCH_MATMUL")


def op_fallbacks(float_model: bytes) -> dict[str, Precision]:
    """First output tensor name -> the op's cheapest precision above static int8 on the LiteRT Quantizer.

    :func:`op_fallback` for the op type, but float when the op has no constant weight (nothing for
    dynamic range to quantize) or when its int8 weight with channelwise parameters would not be
    smaller than the float weight (a Dense on a ``(3136, 1)`` constant: 3,136 channels of one value
    each, 37.6 KB of parameters against 12.5 KB of float).

    Raises:
        TFLiteError: the bytes are not a TFLite flatbuffer.
    """
    model = flatbuffer.as_model(float_model)
    subgraph, names, by_type = model.subgraphs[0], flatbuffer.op_names(model), {}
    fallbacks = {}
    for op in subgraph.operators or []:
        if op.outputs is None or not len(op.outputs):
            continue
        name = names[op.opcodeIndex]
        if name not in by_type:
            by_type[name] = op_fallback(name)
        shapes = [tuple(subgraph.tensors[i].shape) for i in op.inputs if i >= 0 and _constant(model, subgraph, i)]
        weight = max(shapes, key=lambda shape: int(_elements(shape)), default=None)
        smaller = weight is not None and len(weight) > 0 and (
            _elements(weight) + _CHANNEL_PARAM_BYTES * weight[-1 if name in _LAST_AXIS_OPS else 0] < 4 * _elements(weight))
        first = subgraph.tensors[op.outputs[0]].name.decode()
        fallbacks[first] = by_type[name] if smaller else Precision.FLOAT
    return fallbacks


def _constant(model, subgraph, index: int) -> bool:
    buffer = model.buffers[subgraph.tensors[index].buffer]
    return buffer.data is not None and len(buffer.data) > 0


def _elements(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= int(dim)
    return count


def add_plan_rules(engine, float_model: bytes, plan: Plan) -> None:
    """Add one rule per precision of ``plan`` to a quantizer, after the recipe's own (the latest match wins).

    ``float``: ``no_quantize``; ``dynamic_int8``: int8 channelwise weights, integer compute, float
    activations (``dynamic_wi8_afp32``'s op config); ``weight_only_int8``: int8 weights dequantized
    to float. An op with no kernel for its precision keeps the recipe's (the search gives such ops float).

    Args:
        engine: an ``ai_edge_quantizer.quantizer.Quantizer`` built with the mode's recipe.
        float_model: the float .tflite bytes the engine quantizes (to name the ops' scopes).
        plan: ``(output tensor, precision)`` of the ops not in static int8 (``mixed.Plan``).
    """
    if not plan:
        return
    scopes = op_scopes(float_model)
    for precision in (Precision.FLOAT, Precision.DYNAMIC_INT8, Precision.WEIGHT_ONLY_INT8):
        covered = [scopes[tensor] for tensor, chosen in plan if chosen == precision]
        if not covered:
            continue
        pattern = scope_pattern(covered)
        if precision == Precision.FLOAT:
            engine.update_quantization_recipe(pattern, "*", algorithm_key="no_quantize")
        elif precision == Precision.DYNAMIC_INT8:
            engine.add_dynamic_config(pattern, "*", 8)
        else:
            engine.add_weight_only_config(pattern, "*", 8)
