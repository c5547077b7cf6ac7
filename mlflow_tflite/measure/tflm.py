"""TensorFlow Lite Micro readiness: run a .tflite model the way a microcontroller would.

The model is loaded into TFLite Micro's Python interpreter (``tflite_micro.runtime``, the
``tflite-micro`` package: the TFLM C++ runtime with its reference kernels and its
``RecordingMicroAllocator``), invoked on a few evaluation samples and compared with LiteRT on the
same inputs. What a device needs to know:

* **does it run** (``tflm_ok``): TFLM has no hybrid (dynamic-range) kernels and its DEQUANTIZE
  takes no float16, so ``dynamic`` and ``float16`` fail while their ops are *prepared*; the op TFLM
  names in its log (``Node CONV_2D (number 1) failed to prepare``) is reported as ``first_failed_op``.
* **its tensor arena** (``tflm_arena_bytes``): the ``Arena allocation total`` printed by the
  recording allocator (head: the planned activations; tail: persistent tensors, kernel data).
  TFLM prints it from C++ to file descriptor 2, so the descriptor is captured around the calls.
  The figure is then checked: an interpreter with exactly that arena is built and invoked, and
  one with ``ARENA_ALIGNMENT`` bytes less must fail (the allocator aligns the arena start and
  every allocation to 16 bytes, so the true minimum can lie a few bytes under the report, as
  8 bytes do for the demo's int8 model, never a whole alignment unit under it).
* **its outputs** (``tflm_max_abs_diff``): the largest absolute difference of TFLM's outputs from
  LiteRT's reference kernels (TFLM's kernels are ports of them), both dequantized with the output
  tensor's scale and zero point from the flatbuffer (model output units); the report also has the
  difference from LiteRT as the runs' accuracy metrics use it, with XNNPACK (its int8 kernels
  round differently: 4 output steps on the demo's softmax).

Cost: TFLM's reference kernels are slow (no SIMD), so only the first :data:`TFLM_SAMPLES` rows of
the evaluation data are run. The arena does not depend on the data and the outputs of the
reference kernels differ from LiteRT's only by rounding, so a few rows find a disagreement as
well as hundreds (the demo CNN takes well under a second for all of it).
"""

from __future__ import annotations

import logging
import re

import numpy as np

from mlflow_tflite.errors import TFLiteError
from mlflow_tflite.flavor import flatbuffer
from mlflow_tflite.flavor.runtime import dequantize, invoke, make_interpreter, match_order, quantize
from mlflow_tflite.flavor.tensors import TensorInfo
from mlflow_tflite.quiet import captured_stderr

logger = logging.getLogger(__name__)

# Rows of the evaluation data run through TFLM (see the module docstring).
TFLM_SAMPLES = 16
# TFLM's arena and allocation alignment (MicroArenaBufferAlignment() in micro_arena_constants.h).
ARENA_ALIGNMENT = 16
# First arena tried; doubled while TFLM reports it too small, up to MAX_PROBE_ARENA.
FIRST_PROBE_ARENA = 1 << 20
MAX_PROBE_ARENA = 1 << 30
_TOTAL = re.compile(r"Arena allocation total (\d+) bytes")
_HEAD = re.compile(r"Arena allocation head (\d+) bytes")
_TAIL = re.compile(r"Arena allocation tail (\d+) bytes")
_NODE_FAILED = re.compile(r"Node (\S+) \(number (\d+)\) failed to (prepare|invoke)")
_NO_KERNEL = re.compile(r"Didn't find op for builtin opcode '(\w+)'|Failed to get registration from op code (\w+)")
_ARENA_TOO_SMALL = re.compile(r"Failed to (resize buffer|allocate)")


def _run_tflm(tflite_model: bytes, arena_size: int, batches: list[list[np.ndarray]], output_count: int,
              allocations: bool = False):
    """Build a TFLM interpreter with ``arena_size`` bytes and invoke it on each batch.

    Returns:
        ``(outputs, log, error)``: per batch run, the raw output arrays (model output order);
        TFLM's captured log lines; the exception TFLM raised, ``None`` when everything ran.
    """
    from tflite_micro import runtime as tflm_runtime

    log: list[str] = []
    outputs: list[list[np.ndarray]] = []
    with captured_stderr(log):
        try:
            interpreter = tflm_runtime.Interpreter.from_bytes(bytes(tflite_model), arena_size=int(arena_size))
            for batch in batches:
                for position, array in enumerate(batch):
                    interpreter.set_input(array, position)
                interpreter.invoke()
                outputs.append([np.array(interpreter.get_output(i)) for i in range(output_count)])
            if allocations:
                interpreter.print_allocations()
        except (RuntimeError, ValueError, TypeError) as error:  # what the pybind wrapper raises
            return outputs, log, error
    return outputs, log, None


def _batches(inputs: list[TensorInfo], arrays: list[np.ndarray] | None, samples: int) -> list[list[np.ndarray]]:
    """Up to ``samples`` rows per input in the tensors' dtypes, cut into batches TFLM can take.

    TFLM runs a model at its stored shape (a dynamic batch is stored as 1): one row per invoke,
    or ``B`` rows (the last batch zero-padded) for a model with a fixed batch ``B``. Without data,
    one batch of zeros.
    """
    if not inputs:
        return [[]]
    step = max(1, inputs[0].shape[0]) if inputs[0].shape else 1
    if arrays is None:
        arrays = [np.zeros([step, *[max(1, d) for d in t.shape[1:]]], np.float32) for t in inputs]
    rows = min(samples, int(arrays[0].shape[0]))
    batches = []
    for start in range(0, rows, step):
        chunk = [quantize(a[start:min(start + step, rows)], t) for a, t in zip(arrays, inputs)]
        batches.append([np.concatenate([c, np.zeros((step - c.shape[0], *c.shape[1:]), c.dtype)])
                        if c.shape[0] < step else c for c in chunk])
    return batches


def _probe(tflite_model: bytes, batches: list[list[np.ndarray]], output_count: int):
    """Run TFLM with an arena large enough (doubled from :data:`FIRST_PROBE_ARENA` while TFLM
    says it is too small) and its allocation report. Returns :func:`_run_tflm`'s triple."""
    arena = max(FIRST_PROBE_ARENA, 4 * len(tflite_model))
    while True:
        outputs, log, error = _run_tflm(tflite_model, arena, batches, output_count, allocations=True)
        if error is None or arena >= MAX_PROBE_ARENA or not any(_ARENA_TOO_SMALL.search(line) for line in log):
            return outputs, log, error
        arena *= 2


def _arena_check(tflite_model: bytes, total: int, batch: list[np.ndarray], output_count: int) -> dict:
    """Whether an arena of exactly ``total`` bytes runs the model and one alignment unit less does not."""
    works = _run_tflm(tflite_model, total, [batch], output_count)[2] is None
    smaller = total - ARENA_ALIGNMENT
    fails_below = _run_tflm(tflite_model, smaller, [batch], output_count)[2] is not None
    return {"works_at_reported_bytes": works, "fails_at_bytes": smaller if fails_below else None,
            "smaller_arena_tried_bytes": smaller}


def _first_failed_op(log: list[str], op_names: list[str]) -> dict | None:
    """The op TFLM names in its log as failing (``index``: position in execution order, or ``None``)."""
    for line in log:
        node = _NODE_FAILED.search(line)
        if node:
            return {"op": node.group(1), "index": int(node.group(2)), "phase": node.group(3)}
        missing = _NO_KERNEL.search(line)
        if missing:
            name = missing.group(1) or missing.group(2)
            index = next((i for i, op in enumerate(op_names) if op == name), None)
            return {"op": name, "index": index, "phase": "no kernel registered"}
    return None


def _allocation_report(log: list[str]) -> dict:
    """Total, head and tail arena bytes from the recording allocator's report lines."""
    found = {}
    for key, pattern in (("arena_bytes", _TOTAL), ("arena_head_bytes", _HEAD), ("arena_tail_bytes", _TAIL)):
        match = next((m for m in map(pattern.search, log) if m), None)
        found[key] = int(match.group(1)) if match else None
    return found


def _max_abs_diff(tflm: list[list[np.ndarray]], litert: list[list[np.ndarray]], outputs: list[TensorInfo]) -> list[float]:
    """Per output, the largest |TFLM - LiteRT| over all rows, both dequantized (model output units)."""
    return [float(max(np.max(np.abs(dequantize(a[i], tensor) - dequantize(b[i], tensor)), initial=0.0)
                      for a, b in zip(tflm, litert)))
            for i, tensor in enumerate(outputs)]


def _litert_outputs(tflite_model: bytes, inputs: list[TensorInfo], outputs: list[TensorInfo],
                    batches: list[list[np.ndarray]], reference_kernels: bool) -> list[list[np.ndarray]]:
    """LiteRT's raw outputs on the same batches, from a fresh interpreter (the caller's stays untouched).

    ``reference_kernels``: LiteRT's reference kernels (op resolver ``BUILTIN_REF``, no XNNPACK), the
    ones TFLM's kernels are ported from; else LiteRT as the runs' accuracy metrics use it (XNNPACK
    and the optimized kernels), whose int8 arithmetic rounds differently: on the demo one step per
    op and four at its softmax output; on MTCNN's ONet up to 5 steps at an output, where the
    reference kernels differ from TFLM by at most one step (its FULLY_CONNECTED ops).
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    if not reference_kernels:
        interpreter = make_interpreter(tflite_model)
    else:
        interpreter = Interpreter(model_content=bytes(tflite_model),
                                  experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
        interpreter.allocate_tensors()
    return [invoke(interpreter, inputs, outputs, batch) for batch in batches]


def _output_steps(tflite_model: bytes, outputs: list[TensorInfo]) -> list[float | None]:
    """Per output, its quantization step: its scale, or for a float output made by a DEQUANTIZE
    the scale of the integer tensor it reads (int8 models with float I/O); ``None`` for float."""
    model = flatbuffer.read_flatbuffer(tflite_model)
    subgraph, names = model.subgraphs[0], flatbuffer.op_names(model)
    producers = {int(o): op for op in subgraph.operators or [] for o in (op.outputs if op.outputs is not None else [])}
    steps = []
    for tensor in outputs:
        op = producers.get(tensor.index)
        source = None
        if not tensor.quantized and op is not None and names[op.opcodeIndex] == "DEQUANTIZE":
            source = subgraph.tensors[op.inputs[0]].quantization
        scale = tensor.scale if tensor.quantized else (
            float(source.scale[0]) if source is not None and source.scale is not None and len(source.scale) else None)
        steps.append(scale)
    return steps


def _comparison(tflite_model: bytes, inputs: list[TensorInfo], outputs: list[TensorInfo],
                batches: list[list[np.ndarray]], tflm: list[list[np.ndarray]]) -> dict:
    """TFLM's outputs against LiteRT's reference kernels (``max_abs_diff``) and against LiteRT as the
    runs use it (``max_abs_diff_vs_xnnpack``), overall and per output with ``step`` (the output's
    quantization step, :func:`_output_steps`) and the differences in steps."""
    reference = _max_abs_diff(tflm, _litert_outputs(tflite_model, inputs, outputs, batches, True), outputs)
    xnnpack = _max_abs_diff(tflm, _litert_outputs(tflite_model, inputs, outputs, batches, False), outputs)
    rows = []
    for tensor, step, ref, xnn in zip(outputs, _output_steps(tflite_model, outputs), reference, xnnpack):
        in_steps = {"diff_in_steps": ref / step, "diff_in_steps_vs_xnnpack": xnn / step} if step else {}
        rows.append({"name": tensor.name, "step": step, "max_abs_diff": ref, "max_abs_diff_vs_xnnpack": xnn,
                     **in_steps})
    return {
        "compared_with": "LiteRT reference kernels (op resolver BUILTIN_REF), on the same quantized inputs",
        "max_abs_diff": max(reference, default=0.0), "max_abs_diff_vs_xnnpack": max(xnnpack, default=0.0),
        "outputs": rows,
    }


def available() -> bool:
    """Whether ``tflite-micro`` is installed (its wheels are for Linux x86_64 only)."""
    import importlib.util

    return importlib.util.find_spec("tflite_micro") is not None


NOT_INSTALLED = ("tflite-micro is not installed (its wheels are for Linux x86_64 only), so the model was not run "
                 "in TensorFlow Lite Micro; pip install tflite-micro on Linux x86_64")


def readiness(tflite_model: bytes, arrays: list[np.ndarray] | None = None, input_names: list[str] | None = None,
              samples: int = TFLM_SAMPLES) -> dict:
    """Run a model in TFLite Micro: does it run, the arena it needs, how far it is from LiteRT.

    Args:
        tflite_model: .tflite flatbuffer bytes LiteRT can load (no Flex ops).
        arrays: evaluation inputs, one float32 (or already quantized) ``(N, ...)`` array per source
            input at the model's input size, in the source's order (``input_names``), or ``None``
            for one batch of zeros (arena only).
        input_names: the source's input names, to match the model's inputs (``runtime.match_order``).
        samples: rows run (the first ``samples`` of ``arrays``), >= 1.

    Returns:
        A JSON-serialisable dict: ``ok`` (bool; ``None`` with ``skipped`` saying why when
        ``tflite-micro`` is not installed), ``samples`` (rows run), ``seconds`` (wall time of
        the whole check), ``tflm_version``; when it ran: ``arena_bytes`` / ``arena_head_bytes`` /
        ``arena_tail_bytes`` (bytes, from the allocator's report), ``arena_check``
        (:func:`_arena_check`), ``max_abs_diff`` (float, model output units, worst output; instead
        ``comparison_error`` when LiteRT could not run the same batches),
        ``outputs`` (per output: name, quantization ``step``, max abs diff, and ``diff_in_steps``
        = diff / step when there is a step); when it did not: ``error``, ``first_failed_op``
        (``{"op", "index", "phase", "outputs"}`` or ``None``) and ``log`` (TFLM's lines, at most 20).

    Raises:
        TFLiteError: the bytes are not a TFLite flatbuffer LiteRT can load.
    """
    import time
    from importlib.metadata import version

    if not available():
        return {"ok": None, "skipped": NOT_INSTALLED}
    start = time.perf_counter()
    inputs, outputs = flatbuffer.static_io_tensors(tflite_model)
    ordered = None if arrays is None else [arrays[i] for i in match_order(inputs, input_names or [])]
    batches = _batches(inputs, ordered, samples)
    report = {"tflm_version": version("tflite-micro"), "samples": sum(int(b[0].shape[0]) for b in batches if b)}
    tflm, log, error = _probe(tflite_model, batches, len(outputs))
    if error is not None:
        ops = flatbuffer.op_tensors(tflite_model)
        failed = _first_failed_op(log, [op[0] for op in ops])
        if failed is not None and failed["index"] is not None and failed["index"] < len(ops):
            failed["outputs"] = ops[failed["index"]][2]
        report.update(ok=False, error=str(error), first_failed_op=failed, log=log[:20])
        logger.info("TFLite Micro cannot run the model: %s", failed or error)
    else:
        report.update(ok=True, **_allocation_report(log))
        try:
            report.update(_comparison(tflite_model, inputs, outputs, batches, tflm))
        except TFLiteError as error:  # LiteRT could not run these batches: the TFLM facts still stand
            report["comparison_error"] = error.message
        if report["arena_bytes"] is not None:
            report["arena_check"] = _arena_check(tflite_model, report["arena_bytes"], batches[0], len(outputs))
    report["seconds"] = time.perf_counter() - start
    return report


def metrics(report: dict) -> dict[str, float]:
    """Run metrics of a :func:`readiness` report: ``tflm_ok`` (1.0 or 0.0) and, when it ran,
    ``tflm_arena_bytes`` (bytes) and ``tflm_max_abs_diff`` (model output units); none when skipped."""
    if report["ok"] is None:
        return {}
    values = {"tflm_ok": 1.0 if report["ok"] else 0.0}
    if report["ok"] and report.get("arena_bytes") is not None:
        values["tflm_arena_bytes"] = float(report["arena_bytes"])
    if report["ok"] and report.get("max_abs_diff") is not None:
        values["tflm_max_abs_diff"] = float(report["max_abs_diff"])
    return values
