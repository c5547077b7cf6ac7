"""TF1 frozen graphs (``.pb``) as a :class:`sources.Source`: reference outputs from the graph itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mlflow_tflite.errors import TFLiteError
from mlflow_tflite.build.source import Source


def _graph_candidates(graph_def) -> tuple[list[str], list[str]]:
    """(placeholder names, names of ops nothing consumes): likely input and output arrays."""
    consumed = {name.lstrip("^").split(":")[0] for node in graph_def.node for name in node.input}
    inputs = [node.name for node in graph_def.node if node.op == "Placeholder"]
    outputs = [node.name for node in graph_def.node
               if node.name not in consumed and node.op not in ("Const", "NoOp", "Placeholder", "Assert")]
    return inputs, outputs


def _placeholder_shape(graph_def, name: str) -> tuple[int, ...]:
    node = next(n for n in graph_def.node if n.name == name)
    dims = node.attr["shape"].shape.dim if "shape" in node.attr else []
    return tuple(int(d.size) if d.size >= 0 else -1 for d in dims)


def from_frozen_graph(
    path: str | Path,
    input_arrays: list[str],
    output_arrays: list[str],
    input_shapes: dict[str, tuple[int, ...]] | None = None,
) -> Source:
    """Source for a TF1 frozen graph (a ``.pb`` GraphDef with weights folded into constants).

    Reference outputs come from running the graph itself (``tf.compat.v1.wrap_function`` around
    ``import_graph_def``); conversion uses ``tf.compat.v1.lite.TFLiteConverter.from_frozen_graph``.

    Args:
        path: the ``.pb`` file.
        input_arrays, output_arrays: node names of the inputs and outputs.
        input_shapes: shape per input name (batch first); default the placeholders' shapes,
            with an unknown batch dimension taken as dynamic.

    Raises:
        TFLiteError: the file is not a GraphDef, or an array name is not in the graph (the
            message lists the candidate placeholders / unconsumed ops), or a shape is unknown.
    """
    import tensorflow as tf

    path = Path(path)
    graph_def = tf.compat.v1.GraphDef()
    try:
        graph_def.ParseFromString(path.read_bytes())
    except Exception:
        raise TFLiteError(f"model file {str(path)!r} is not a TensorFlow GraphDef (.pb frozen graph)") from None
    candidate_inputs, candidate_outputs = _graph_candidates(graph_def)
    names = {node.name for node in graph_def.node}
    if not input_arrays or not output_arrays:
        raise TFLiteError(
            f"frozen graph {path.name!r} needs input_arrays and output_arrays; candidates: inputs "
            f"{candidate_inputs}, outputs {candidate_outputs[:20]}"
        )
    for kind, given, candidates in (("input", input_arrays, candidate_inputs), ("output", output_arrays, candidate_outputs)):
        missing = [name for name in given if name not in names]
        if missing:
            raise TFLiteError(
                f"{kind}_arrays {missing} are not nodes of frozen graph {path.name!r}; candidates: {candidates[:20]}"
            )
    shapes = {name: tuple((input_shapes or {}).get(name) or _placeholder_shape(graph_def, name)) for name in input_arrays}
    for name, shape in shapes.items():
        if not shape or any(d == -1 for d in shape[1:]):
            raise TFLiteError(
                f"input {name!r} of frozen graph {path.name!r} has unknown shape {shape}; pass input_shapes, "
                f"e.g. {name}:1,224,224,3"
            )
    dtypes = {n.name: tf.as_dtype(n.attr["dtype"].type) for n in graph_def.node if n.name in input_arrays}

    def imported(*tensors):
        return tf.compat.v1.import_graph_def(
            graph_def, input_map={f"{n}:0": t for n, t in zip(input_arrays, tensors)},
            return_elements=[f"{n}:0" for n in output_arrays],
        )

    specs = [tf.TensorSpec([None, *shapes[n][1:]], dtypes[n]) for n in input_arrays]
    function = tf.compat.v1.wrap_function(imported, specs)

    def predict(arrays):
        return [np.asarray(o) for o in function(*[tf.constant(a, dtype=dtypes[n]) for n, a in zip(input_arrays, arrays)])]

    probe = [np.zeros((1, *shapes[n][1:]), dtypes[n].as_numpy_dtype) for n in input_arrays]
    output_shapes = [(-1, *o.shape[1:]) for o in predict(probe)]
    converter_shapes = {n: [1 if d == -1 else d for d in shapes[n]] for n in input_arrays}
    return Source(
        name=path.stem,
        kind="frozen_graph",
        uri=str(path.resolve()),
        input_shapes=[(-1, *shapes[n][1:]) for n in input_arrays],
        output_shapes=output_shapes,
        input_names=list(input_arrays),
        output_names=list(output_arrays),
        predict_fn=predict,
        converter_fn=lambda: tf.compat.v1.lite.TFLiteConverter.from_frozen_graph(
            str(path), input_arrays, output_arrays, converter_shapes
        ),
        _keep_alive=[function],
    )
