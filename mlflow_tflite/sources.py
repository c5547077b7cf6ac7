"""Open a model source: a reference predict function and a fresh TFLiteConverter.

Supported here: tf_keras models and ``.h5`` files, Keras 3 models and ``.keras`` files (through
``model.export()`` to a SavedModel), and SavedModel directories (a chosen signature key).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mlflow_tflite.errors import TFLiteError


@dataclass
class Source:
    """A model to convert.

    Attributes:
        name: default registered model name, e.g. ``"digits-cnn"``.
        kind: ``"tf_keras"``, ``"keras3"`` or ``"saved_model"``.
        uri: what the run records as its ``source`` param (a path, or ``demo:digits-cnn``).
        input_shapes: one shape per input, batch first (``-1`` for dynamic dims).
        output_shapes: one shape per output, batch first.
        predict_fn: list of float32 input arrays -> list of float32 output arrays.
        converter_fn: () -> a new ``tf.lite.TFLiteConverter`` for this model.
        keras_model: the tf_keras model when ``kind == "tf_keras"`` (pruning needs it).
    """

    name: str
    kind: str
    uri: str
    input_shapes: list[tuple[int, ...]]
    output_shapes: list[tuple[int, ...]]
    predict_fn: Callable[[list[np.ndarray]], list[np.ndarray]]
    converter_fn: Callable[[], Any]
    keras_model: Any = None
    _keep_alive: list = field(default_factory=list, repr=False)

    def predict(self, arrays: list[np.ndarray], batch_size: int = 256) -> list[np.ndarray]:
        """Reference outputs of the source model, float32, computed in batches of ``batch_size``."""
        rows = len(arrays[0])
        parts = [self.predict_fn([a[i : i + batch_size] for a in arrays]) for i in range(0, rows, batch_size)]
        return [np.concatenate([p[k] for p in parts]).astype(np.float32) for k in range(len(parts[0]))]

    def converter(self):
        """A new ``tf.lite.TFLiteConverter`` (converters are configured per variant)."""
        return self.converter_fn()

    @property
    def num_classes(self) -> int | None:
        """Size of the class-score output (a single 2-D output with > 1 column), else ``None``."""
        if len(self.output_shapes) == 1 and len(self.output_shapes[0]) == 2 and self.output_shapes[0][1] > 1:
            return int(self.output_shapes[0][1])
        return None


def _shape(shape) -> tuple[int, ...]:
    return tuple(-1 if d is None else int(d) for d in shape)


def from_tf_keras(model, uri: str | None = None) -> Source:
    """Source for a tf_keras (Keras 2) model, converted with ``TFLiteConverter.from_keras_model``."""
    import tensorflow as tf

    def predict(arrays):
        outputs = model(arrays if len(arrays) > 1 else arrays[0], training=False)
        return [np.asarray(o) for o in (outputs if isinstance(outputs, (list, tuple)) else [outputs])]

    return Source(
        name=model.name,
        kind="tf_keras",
        uri=uri or f"tf_keras:{model.name}",
        input_shapes=[_shape(t.shape) for t in model.inputs],
        output_shapes=[_shape(t.shape) for t in model.outputs],
        predict_fn=predict,
        converter_fn=lambda: tf.lite.TFLiteConverter.from_keras_model(model),
        keras_model=model,
    )


def from_keras3(model, uri: str | None = None) -> Source:
    """Source for a Keras 3 model: exported with ``model.export()`` to a SavedModel, then converted.

    The converted model is compared against the Keras model itself (not the export), so a
    lossy export would show up in the fidelity metrics.
    """
    export_dir = tempfile.TemporaryDirectory(prefix="mlflow-tflite-keras3-")
    saved_model = Path(export_dir.name) / "saved_model"
    model.export(str(saved_model), format="tf_saved_model", verbose=False)
    source = from_saved_model(saved_model, uri=uri or f"keras3:{model.name}")

    def predict(arrays):
        outputs = model(arrays if len(arrays) > 1 else arrays[0], training=False)
        return [np.asarray(o) for o in (outputs if isinstance(outputs, (list, tuple)) else [outputs])]

    source.name, source.kind, source.predict_fn = model.name, "keras3", predict
    source._keep_alive.append(export_dir)
    return source


def from_saved_model(path: str | Path, signature_key: str = "serving_default", uri: str | None = None) -> Source:
    """Source for a SavedModel directory and one of its signatures.

    Raises:
        TFLiteError: the signature key is not in the SavedModel (the message lists those it has).
    """
    import tensorflow as tf

    path = Path(path)
    loaded = tf.saved_model.load(str(path))
    if signature_key not in loaded.signatures:
        raise TFLiteError(
            f"SavedModel {str(path)!r} has no signature {signature_key!r}; it has {sorted(loaded.signatures)}"
        )
    function = loaded.signatures[signature_key]
    input_specs = function.structured_input_signature[1]
    input_names = sorted(input_specs)
    output_names = sorted(function.structured_outputs)

    def predict(arrays):
        outputs = function(**{n: tf.constant(a, dtype=input_specs[n].dtype) for n, a in zip(input_names, arrays)})
        return [outputs[n].numpy() for n in output_names]

    return Source(
        name=path.resolve().name,
        kind="saved_model",
        uri=str(path.resolve()),
        input_shapes=[_shape(input_specs[n].shape) for n in input_names],
        output_shapes=[_shape(function.structured_outputs[n].shape) for n in output_names],
        predict_fn=predict,
        converter_fn=lambda: tf.lite.TFLiteConverter.from_saved_model(str(path), signature_keys=[signature_key]),
        _keep_alive=[loaded],
    )


def _is_tf_keras(model) -> bool:
    return type(model).__module__.startswith("tf_keras")


def from_keras_model(model, uri: str | None = None) -> Source:
    """Source for an in-memory Keras model of either Keras version."""
    return from_tf_keras(model, uri) if _is_tf_keras(model) else from_keras3(model, uri)


def _load_keras_file(path: Path):
    """``.h5`` -> tf_keras (Keras 2 format); ``.keras`` -> Keras 3, or tf_keras if Keras 3 refuses."""
    import tf_keras

    if path.suffix == ".h5":
        return tf_keras.models.load_model(path, compile=False)
    import keras

    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as keras3_error:  # a .keras file written by tf_keras
        try:
            return tf_keras.models.load_model(path, compile=False)
        except Exception:
            raise keras3_error from None


def open_source(model: Any) -> Source:
    """Open the ``model`` parameter: a Keras model object or a path.

    Args:
        model: a tf_keras / Keras 3 model, a ``.keras`` or ``.h5`` file, or a SavedModel directory.

    Returns:
        A :class:`Source`; ``name`` is the file or directory stem.

    Raises:
        TFLiteError: the path does not exist or is not a model of a supported format.
    """
    if not isinstance(model, (str, Path)):
        return from_keras_model(model)
    path = Path(model)
    if not path.exists():
        raise TFLiteError(
            f"model {str(path)!r} does not exist; pass a .keras/.h5 file or a SavedModel directory "
            "(or omit model for the digits demo)"
        )
    if path.is_dir():
        if not (path / "saved_model.pb").exists():
            raise TFLiteError(f"directory {str(path)!r} is not a SavedModel (no saved_model.pb inside)")
        return from_saved_model(path)
    if path.suffix not in (".keras", ".h5"):
        raise TFLiteError(
            f"model file {str(path)!r} has an unknown format {path.suffix!r}; use .keras, .h5 or a SavedModel directory"
        )
    try:
        keras_model = _load_keras_file(path)
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TFLiteError(f"model file {str(path)!r} could not be loaded as a Keras model ({reason[:200]})") from None
    source = from_keras_model(keras_model, uri=str(path.resolve()))
    source.name = path.stem
    return source
