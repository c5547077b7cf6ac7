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
