"""The opened model every build step works on (:class:`Source`): its shapes, names, reference
predict function and a converter factory. The openers are in ``sources`` and ``frozen_graph``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np


@dataclass
class Source:
    """A model to convert.

    Attributes:
        name: default registered model name, e.g. ``"digits-cnn"``.
        kind: ``"tf_keras"``, ``"keras3"``, ``"saved_model"``, ``"frozen_graph"`` or ``"pytorch"``.
        uri: what the run records as its ``source`` param (a path, or ``demo:digits-cnn``).
        input_shapes: one shape per input, batch first (``-1`` for dynamic dims).
        output_shapes: one shape per output, batch first.
        input_names, output_names: names of the inputs/outputs in the order above; the
            converted model's tensors are matched to them by name when the names agree.
        predict_fn: list of float32 input arrays -> list of float32 output arrays.
        converter_fn: () -> a new ``tf.lite.TFLiteConverter`` for this model.
        keras_model: the tf_keras model when ``kind == "tf_keras"`` (pruning needs it).
        lineage: tag name -> value set on every variant run, for a source opened from an MLflow
            model URI (``tags.SOURCE_MODEL_URI_TAG``, ``tags.SOURCE_RUN_ID_TAG``); empty otherwise.
        float_model: ``(float flatbuffer bytes, conversion seconds)`` made elsewhere (a PyTorch
            source's litert-torch model, ``torch_source``), or ``None`` to convert with ``converter_fn``.
        predict_batch_size: rows per ``predict_fn`` call, or ``None`` for all rows in one call.
        layout: a PyTorch source's input layout (``nchw`` or ``nhwc``), ``""`` for TensorFlow sources.
    """

    name: str
    kind: str
    uri: str
    input_shapes: list[tuple[int, ...]]
    output_shapes: list[tuple[int, ...]]
    predict_fn: Callable[[list[np.ndarray]], list[np.ndarray]]
    converter_fn: Callable[[], Any]
    input_names: list[str] = field(default_factory=list)
    output_names: list[str] = field(default_factory=list)
    keras_model: Any = None
    lineage: dict[str, str] = field(default_factory=dict)
    float_model: tuple[bytes, float] | None = None
    predict_batch_size: int | None = 256
    layout: str = ""
    _keep_alive: list = field(default_factory=list, repr=False)

    def predict(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """Reference outputs of the source model, float32, in batches of ``predict_batch_size`` rows."""
        rows = len(arrays[0])
        batch_size = self.predict_batch_size or rows
        parts = [self.predict_fn([a[i : i + batch_size] for a in arrays]) for i in range(0, rows, batch_size)]
        return [np.concatenate([p[k] for p in parts]).astype(np.float32) for k in range(len(parts[0]))]

    def converter(self):
        """A new ``tf.lite.TFLiteConverter`` (converters are configured per variant)."""
        return self.converter_fn()
