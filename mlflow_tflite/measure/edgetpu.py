"""Static Edge TPU readiness estimate of a .tflite model with integer kernels.

The Edge TPU compiler (``edgetpu_compiler``) is not available here, so this module does not
compile anything: it reads the flatbuffer (:mod:`mlflow_tflite.flavor.flatbuffer`) and checks every
operator of the main subgraph, in execution order, against the published Edge TPU supported-op
table and the model requirements stated next to it. The table is package data,
``edgetpu_ops.json``; its source is the Coral documentation page "TensorFlow models on the Edge
TPU", section "Supported operations" (https://coral.ai/docs/edgetpu/models-intro/), named in the
file and in every report.

Rules applied to each operator (all are checked; every failure is named in ``reason``):

* **op in the table**: the TFLite builtin name (``flatbuffer_utils.opcode_to_name``) is a key of
  the table; custom and Flex ops never are.
* **8-bit tensors**: every input and output tensor is INT8 or UINT8, with two exceptions, both
  for compile-time constants only: the INT32 bias (input 2) of CONV_2D, DEPTHWISE_CONV_2D and
  FULLY_CONNECTED, and the INT32/INT64 parameter inputs of shape-taking ops (the shape of
  RESHAPE, paddings of PAD, axes of MEAN, size of RESIZE_*, begin/size of SLICE,
  begin/end/strides of STRIDED_SLICE, axis of SPLIT). A non-constant INT32 tensor, any INT16 or
  any float tensor is not mapped. This is deliberately conservative: the compiler may tolerate
  more, never less, as far as the published requirements say.
* **static shapes**: no tensor has ``-1`` in its ``shape_signature`` (the compiler rejects
  dynamic sizes, a dynamic batch dimension included: convert with a fixed batch size of 1).
* **rank rule**: a non-constant tensor of more than 3 dimensions has a size greater than 1 only in
  its 3 innermost dimensions (so batch 1 for 4-D activations). Constant weights are exempt.
* **constant parameters**: the weights (input 1) and bias (input 2) of CONV_2D,
  DEPTHWISE_CONV_2D and FULLY_CONNECTED are constants.
* **per-op limitations** checked here: no fused activation on AVERAGE_POOL_2D, MAX_POOL_2D and
  CONCATENATION; MEAN reduces only the x/y (height/width) axes of a 4-D input; SOFTMAX input has
  at most one dimension larger than 1 and at most 16,000 elements. The table's other limitation
  notes are reported (``limitations``) but not checked.

The compiler maps ops to the Edge TPU up to the first one it cannot map; everything after it runs
on the CPU. Hence ``first_unmapped_index`` and ``edgetpu_mapped_fraction``.

**Float model inputs and outputs** (``int8``, ``int8_mixed``, ``qat_int8``: integer kernels between a
QUANTIZE of the float input and a DEQUANTIZE to the float output). What the compiler does with them
is documented by its own output, not by a sentence of the models-intro page that could be read here
(the stored copies of that page searched for this module showed only its opening sections):

* real ``edgetpu_compiler`` logs of such models report the edge ops as left on the CPU and the ops
  between them as mapped, e.g. compiler 2.0 in https://github.com/google-coral/edgetpu/issues/13
  ("QUANTIZE 1 Operation is otherwise supported, but not mapped due to some unspecified
  limitation"; SOFTMAX and FULLY_CONNECTED "Mapped to Edge TPU"), and a post-training-quantized
  MobileNet V2 in https://github.com/f0cal/google-coral/issues/20 ("Number of operations that will
  run on Edge TPU: 70", "Number of operations that will run on CPU: 2": the QUANTIZE and the
  "DEQUANTIZE 1 Operation is working on an unsupported data type");
* a user reading the published table (https://github.com/google-coral/edgetpu/issues/659, compiler
  16) notes that QUANTIZE is listed for runtime >= 13 and DEQUANTIZE is not listed, and asks whether
  the quantization of the input data and dequantization of the output data "can't be avoided not
  running on the Edge TPU".

Rule implemented: a **CPU edge op** is a QUANTIZE whose input is a float model input and whose output
is 8-bit, or a DEQUANTIZE whose input is 8-bit and whose output is a float model output read by no
other op. Edge ops are not checked and never become ``first_unmapped_index``; they are listed in
``cpu_edge_ops``. ``edgetpu_mapped_fraction`` is computed over the ops the compiler would consider
(all ops but the edge ops): an int8 model with float I/O whose other ops all pass scores 1.0, as its
compiler log would show every considered op mapped. Any other float op, e.g. a layer left in float by
mixed precision and the DEQUANTIZE / QUANTIZE around it in the middle of the graph, is checked as
before and fails the 8-bit rule, so the first of them is the first unmapped op.
"""

from __future__ import annotations

import functools
import json
from importlib import resources

from mlflow_tflite.flavor import flatbuffer

NOTE = (
    "Static estimate: the Edge TPU compiler is not available here, so each op was checked against the "
    "published Edge TPU supported-op table and its requirements (int8/uint8 tensors, static shapes, at "
    "most 3 non-1 dimensions, constant parameters); the QUANTIZE of a float model input and the DEQUANTIZE "
    "to a float model output run on the CPU at the edges and are not counted; the real compiler may map "
    "fewer ops (or, for ops added to the table after the version read here, more)."
)

_EIGHT_BIT = ("INT8", "UINT8")
_FLOAT = ("FLOAT32", "FLOAT16", "FLOAT64", "BFLOAT16")
_KERNEL_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
# Input positions of constant integer parameters (shapes, axes, paddings...) by op.
_PARAM_INPUTS = {
    "RESHAPE": (1,),
    "PAD": (1,),
    "MEAN": (1,),
    "RESIZE_BILINEAR": (1,),
    "RESIZE_NEAREST_NEIGHBOR": (1,),
    "SLICE": (1, 2),
    "STRIDED_SLICE": (1, 2, 3),
    "SPLIT": (0,),
}
_NO_FUSED_ACTIVATION = ("AVERAGE_POOL_2D", "MAX_POOL_2D", "CONCATENATION")
_SOFTMAX_MAX_ELEMENTS = 16000


@functools.lru_cache(maxsize=1)
def op_table() -> dict:
    """The Edge TPU supported-op table shipped with the package (``edgetpu_ops.json``).

    Returns:
        ``{"source": {...title, url...}, "general_requirements": {...},
        "ops": {TFLite builtin name: {"name": published name, "limitations": short note}}}``.
    """
    text = resources.files("mlflow_tflite.measure").joinpath("edgetpu_ops.json").read_text(encoding="utf-8")
    return json.loads(text)


def _is_constant(model, tensor) -> bool:
    """A tensor whose values are stored in the flatbuffer (a compile-time constant)."""
    buffers = model.buffers or []
    if not 0 < tensor.buffer < len(buffers):
        return False
    data = buffers[tensor.buffer].data
    return data is not None and len(data) > 0


def _tensor_label(tensor, index: int) -> str:
    name = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name or "")
    return f"tensor {index} '{name}'"


def _int_values(model, tensor) -> list[int] | None:
    """Values of a constant INT32/INT64 tensor, or None."""
    import numpy as np

    type_name = flatbuffer.type_name(tensor.type)
    if not _is_constant(model, tensor) or type_name not in ("INT32", "INT64"):
        return None
    data = np.asarray(model.buffers[tensor.buffer].data, dtype=np.uint8).tobytes()
    return [int(v) for v in np.frombuffer(data, dtype=np.int32 if type_name == "INT32" else np.int64)]


def _op_problems(model, subgraph, op, op_name: str, table: dict) -> list[str]:
    """Every reason the op would not map (empty list: it would)."""
    problems = []
    if op_name not in table["ops"]:
        problems.append(f"{op_name} is not in the Edge TPU supported-op table")
    inputs = [i for i in (op.inputs if op.inputs is not None else []) if i >= 0]
    outputs = list(op.outputs if op.outputs is not None else [])
    tolerated = set(_PARAM_INPUTS.get(op_name, ()))
    if op_name in _KERNEL_OPS:
        tolerated.add(2)
    for position, index in [(p, i) for p, i in enumerate(op.inputs if op.inputs is not None else []) if i >= 0] + [
        (None, i) for i in outputs
    ]:
        tensor = subgraph.tensors[index]
        type_name = flatbuffer.type_name(tensor.type) or f"type {tensor.type}"
        constant = _is_constant(model, tensor)
        label = _tensor_label(tensor, index)
        if type_name not in _EIGHT_BIT:
            if not (constant and position in tolerated and type_name in ("INT32", "INT64")):
                kind = "float" if type_name in _FLOAT else "not 8-bit"
                problems.append(f"{label} is {type_name} ({kind}; the Edge TPU needs int8/uint8 tensors)")
        signature = list(tensor.shapeSignature) if tensor.shapeSignature is not None else []
        if any(int(d) < 0 for d in signature):
            problems.append(
                f"{label} has a dynamic shape {[int(d) for d in signature]} (-1 is unknown at compile time; "
                "convert with static shapes, batch size 1)"
            )
        shape = [int(d) for d in (tensor.shape if tensor.shape is not None else [])]
        if not constant and len(shape) > 3 and any(d > 1 for d in shape[:-3]):
            problems.append(
                f"{label} has shape {shape}: more than 3 dimensions with a size greater than 1 outside the "
                "3 innermost ones (batch must be 1)"
            )
    if op_name in _KERNEL_OPS:
        for position, what in ((1, "weights"), (2, "bias")):
            if position < len(op.inputs) and op.inputs[position] >= 0:
                tensor = subgraph.tensors[op.inputs[position]]
                if not _is_constant(model, tensor):
                    problems.append(f"{what} {_tensor_label(tensor, op.inputs[position])} is not a compile-time constant")
    options = op.builtinOptions
    if op_name in _NO_FUSED_ACTIVATION and getattr(options, "fusedActivationFunction", 0):
        problems.append(f"{op_name} has a fused activation (the table allows none)")
    if op_name == "MEAN" and inputs:
        rank = len(subgraph.tensors[inputs[0]].shape if subgraph.tensors[inputs[0]].shape is not None else [])
        axes = _int_values(model, subgraph.tensors[op.inputs[1]]) if len(op.inputs) > 1 else None
        if axes is None:
            problems.append("MEAN axes are not a constant int32 tensor")
        elif rank != 4 or not {a % rank for a in axes} <= {1, 2}:
            problems.append(f"MEAN reduces axes {axes} of a rank-{rank} input (only x/y of a 4-D input map)")
    if op_name == "SOFTMAX" and inputs:
        shape = [int(d) for d in (subgraph.tensors[inputs[0]].shape if subgraph.tensors[inputs[0]].shape is not None else [])]
        size = 1
        for d in shape:
            size *= d
        if sum(d > 1 for d in shape) > 1 or size > _SOFTMAX_MAX_ELEMENTS:
            problems.append(f"SOFTMAX input {shape} is not 1-D with at most {_SOFTMAX_MAX_ELEMENTS} elements")
    return problems


def _cpu_edge_ops(subgraph, names: list[str]) -> dict[int, str]:
    """Ops that convert a float model input/output at the edge of the graph: {op index: reason}.

    A QUANTIZE from a float model input to an 8-bit tensor, or a DEQUANTIZE from an 8-bit tensor
    to a float model output that no other op reads (see the module docstring).
    """
    inputs = {int(i) for i in (subgraph.inputs if subgraph.inputs is not None else [])}
    outputs = {int(i) for i in (subgraph.outputs if subgraph.outputs is not None else [])}
    operators = subgraph.operators or []
    read = {}
    for op in operators:
        for i in op.inputs if op.inputs is not None else []:
            read[int(i)] = read.get(int(i), 0) + 1

    def type_of(index):
        return flatbuffer.type_name(subgraph.tensors[index].type)

    edges = {}
    for index, op in enumerate(operators):
        name = names[op.opcodeIndex]
        ins = [int(i) for i in (op.inputs if op.inputs is not None else []) if i >= 0]
        outs = [int(i) for i in (op.outputs if op.outputs is not None else [])]
        if len(ins) != 1 or len(outs) != 1:
            continue
        (src,), (dst,) = ins, outs
        if (name == "QUANTIZE" and src in inputs and type_of(src) in _FLOAT and type_of(dst) in _EIGHT_BIT):
            edges[index] = (f"quantizes the float model input {_tensor_label(subgraph.tensors[src], src)} on the CPU "
                            "(edge op: not compiled, does not stop the mapping)")
        elif (name == "DEQUANTIZE" and dst in outputs and not read.get(dst) and type_of(src) in _EIGHT_BIT
              and type_of(dst) in _FLOAT):
            edges[index] = (f"dequantizes to the float model output {_tensor_label(subgraph.tensors[dst], dst)} on "
                            "the CPU (edge op: not compiled, does not stop the mapping)")
    return edges


def readiness(tflite_model: bytes) -> dict:
    """Estimate how much of a model the Edge TPU compiler would map, without the compiler.

    Walks the main subgraph's operators in execution order and checks each against the
    packaged Edge TPU supported-op table and its requirements (see the module docstring for
    the exact rules). Meant for models with integer kernels: integer-only ones
    (``quant=int8_full``) and int8 ones with float inputs/outputs (``int8``, ``int8_mixed``,
    ``qat_int8``), whose edge QUANTIZE/DEQUANTIZE run on the CPU and are left out of the
    estimate; any other model is reported too (its float ops simply do not map).

    Args:
        tflite_model: .tflite flatbuffer bytes.

    Returns:
        A JSON-serialisable dict:

        * ``ops``: one ``{"index", "op", "mapped", "reason"}`` per operator, in execution order;
          ``reason`` is ``None`` when the op passes every check, else every failed check joined
          by ``"; "``; ops with unchecked limitation notes in the table also carry ``limitations``.
          A CPU edge op has ``"mapped": False``, ``"cpu_edge": True`` and a reason saying so.
        * ``cpu_edge_ops``: indices of the CPU edge ops (QUANTIZE of a float model input,
          DEQUANTIZE to a float model output), ``[]`` for an integer-I/O model.
        * ``first_unmapped_index``: index (in ``ops``) of the first op other than a CPU edge op
          that fails (the compiler maps up to it, the rest runs on the CPU), ``None`` if every
          such op passes.
        * ``edgetpu_mapped_fraction``: considered ops (all but the CPU edge ops) before
          ``first_unmapped_index`` / considered ops, in ``[0, 1]``; 1.0 when all pass, 0.0 for a
          model without considered ops.
        * ``num_ops``: number of operators; ``num_considered_ops``: ``num_ops`` minus the CPU
          edge ops; ``float_ops``: ops with any float input or output tensor
          (:func:`mlflow_tflite.flavor.flatbuffer.float_ops`, edge ops included).
        * ``note``: says this is a static estimate (no Edge TPU compiler here).
        * ``source``: the table's source (title, url, how it was read).

    Raises:
        TFLiteError: the bytes are not a TFLite flatbuffer.
    """
    model = flatbuffer.as_model(tflite_model)
    names = flatbuffer.op_names(model)
    table = op_table()
    subgraph = model.subgraphs[0]
    edges = _cpu_edge_ops(subgraph, names)
    ops, first, considered, mapped = [], None, 0, 0
    for index, op in enumerate(subgraph.operators or []):
        name = names[op.opcodeIndex]
        if index in edges:
            ops.append({"index": index, "op": name, "mapped": False, "cpu_edge": True, "reason": edges[index]})
            continue
        problems = _op_problems(model, subgraph, op, name, table)
        entry = {"index": index, "op": name, "mapped": not problems, "reason": "; ".join(problems) or None}
        limitations = table["ops"].get(name, {}).get("limitations")
        if limitations:
            entry["limitations"] = limitations
        ops.append(entry)
        considered += 1
        if problems and first is None:
            first = index
        if first is None:
            mapped += 1
    return {
        "ops": ops,
        "cpu_edge_ops": sorted(edges),
        "first_unmapped_index": first,
        "edgetpu_mapped_fraction": mapped / considered if considered else 0.0,
        "num_ops": len(ops),
        "num_considered_ops": considered,
        "float_ops": flatbuffer.float_ops(model),
        "note": NOTE,
        "source": table["source"],
    }
