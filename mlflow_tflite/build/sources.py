"""Open a model source: a reference predict function and a fresh TFLiteConverter.

Supported here: tf_keras models and ``.h5`` files, Keras 3 models and ``.keras`` files (through
``model.export()`` to a SavedModel), and SavedModel directories (a chosen signature key).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mlflow_tflite.build.frozen_graph import from_frozen_graph
from mlflow_tflite.build.source import Source
from mlflow_tflite.build.torch_source import TorchSpec, from_torch, is_factory
from mlflow_tflite.errors import TFLiteError, first_line
from mlflow_tflite.options import Layout, SourceFormat, choice, names_list, option, shape, shapes_map
from mlflow_tflite.tags import SOURCE_MODEL_URI_TAG, SOURCE_RUN_ID_TAG


def _shape(shape) -> tuple[int, ...]:
    return tuple(-1 if d is None else int(d) for d in shape)


def _keras_predict(model) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
    """Inference (``training=False``) of a Keras model of either version: input list -> output list."""

    def predict(arrays):
        outputs = model(arrays if len(arrays) > 1 else arrays[0], training=False)
        return [np.asarray(o) for o in (outputs if isinstance(outputs, (list, tuple)) else [outputs])]

    return predict


def from_tf_keras(model, uri: str | None = None) -> Source:
    """Source for a tf_keras (Keras 2) model, converted with ``TFLiteConverter.from_keras_model``."""
    import tensorflow as tf

    return Source(
        name=model.name,
        kind="tf_keras",
        uri=uri or f"tf_keras:{model.name}",
        input_shapes=[_shape(t.shape) for t in model.inputs],
        output_shapes=[_shape(t.shape) for t in model.outputs],
        predict_fn=_keras_predict(model),
        converter_fn=lambda: tf.lite.TFLiteConverter.from_keras_model(model),
        input_names=list(model.input_names),
        output_names=list(model.output_names),
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

    predict = _keras_predict(model)
    _check_export(source, predict)
    source.name, source.kind, source.predict_fn = model.name, "keras3", predict
    source._keep_alive.append(export_dir)
    return source


def _check_export(exported: Source, keras_predict) -> None:
    """The exported SavedModel must compute what the Keras model computes (same weights).

    Raises:
        TFLiteError: outputs differ by more than 1e-4 (relative to their scale) on a probe input.
    """
    rng = np.random.default_rng(0)
    probe = [rng.random((2, *[1 if d == -1 else d for d in shape[1:]]), dtype=np.float32) for shape in exported.input_shapes]
    for ours, theirs in zip(keras_predict(probe), exported.predict_fn(probe)):
        scale = max(1.0, float(np.abs(ours).max()))
        if np.abs(np.asarray(ours) - np.asarray(theirs)).max() > 1e-4 * scale:
            raise TFLiteError(
                f"the SavedModel exported from Keras 3 model {exported.uri!r} does not reproduce its outputs; "
                "save the model with model.export() yourself and pass the SavedModel directory"
            )


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
        uri=uri or str(path.resolve()),
        input_shapes=[_shape(input_specs[n].shape) for n in input_names],
        output_shapes=[_shape(function.structured_outputs[n].shape) for n in output_names],
        input_names=input_names,
        output_names=output_names,
        predict_fn=predict,
        converter_fn=lambda: tf.lite.TFLiteConverter.from_saved_model(str(path), signature_keys=[signature_key]),
        _keep_alive=[loaded],
    )


MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/", "models:")


def from_mlflow_model(model_uri: str, torch_options: tuple = (None, Layout.NCHW)) -> Source:
    """Source for an MLflow model of the ``tensorflow``, ``keras`` or ``pytorch`` flavor.

    ``torch_options`` (``(input_shape, layout)``) open a ``pytorch`` model (``torch_source``).

    The model is downloaded once; SavedModels (``tensorflow`` flavor, TF2 module) convert from
    their directory, Keras models through :func:`from_keras_model`. ``lineage`` records the
    source model URI and the run that logged it (logged as tags on each variant run).

    Raises:
        TFLiteError: the URI does not resolve to a model, or the model is of another flavor.
    """
    import mlflow
    from mlflow.models import Model
    from mlflow.tracking.artifact_utils import _download_artifact_from_uri

    try:
        info = mlflow.models.get_model_info(model_uri)
        local = Path(_download_artifact_from_uri(model_uri))
    except Exception as error:
        raise TFLiteError(f"MLflow model {model_uri!r} could not be found ({first_line(error, 200)}); check the name, version or run id") from None
    flavors = Model.load(str(local)).flavors
    if "tensorflow" in flavors and "saved_model_dir" in flavors["tensorflow"]:
        source = from_saved_model(local / flavors["tensorflow"]["saved_model_dir"], uri=model_uri)
    elif "keras" in flavors:
        source = from_keras_model(mlflow.keras.load_model(str(local)), uri=model_uri)
    elif "tensorflow" in flavors:
        source = from_keras_model(mlflow.tensorflow.load_model(str(local)), uri=model_uri)
    elif "pytorch" in flavors:
        source = from_torch(TorchSpec("mlflow", str(local), *torch_options), local.name)
        source.uri = model_uri
    else:
        raise TFLiteError(
            f"MLflow model {model_uri!r} has flavors {sorted(f for f in flavors if f != 'python_function')}; "
            "mlflow-tflite converts models of the tensorflow, keras or pytorch flavor"
        )
    source.name = _name_from_uri(model_uri, source.name)
    source.lineage = {SOURCE_MODEL_URI_TAG: model_uri, SOURCE_RUN_ID_TAG: info.run_id or ""}
    return source


def _name_from_uri(model_uri: str, fallback: str) -> str:
    """``models:/digits/3`` or ``models:/digits@champion`` -> ``digits``; else the fallback."""
    if model_uri.startswith("models:/"):
        return model_uri[len("models:/"):].split("/")[0].split("@")[0] or fallback
    return fallback


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


SOURCE_FORMATS = tuple(f.value for f in SourceFormat)


@dataclass(frozen=True)
class SourceOptions:
    """How to open the ``model`` parameter when its format needs more than a path.

    Attributes:
        source_format: ``options.SourceFormat``, or ``None`` to detect it from the path.
        signature_key: the SavedModel signature to convert.
        input_arrays, output_arrays: frozen graph node names (tuples of str), or ``None``.
        input_shapes: frozen graph input shapes, ``{name: (1, 224, 224, 3)}``, or ``None``.
        input_shape: a PyTorch model's NCHW input shape incl. batch, or ``None`` (from the model).
        layout: a PyTorch model's input layout (``options.Layout``).
    """

    source_format: SourceFormat | None = option(
        None, "keras, h5, saved_model, frozen_graph, mlflow, pt2, factory, or auto (detected).", choice(SourceFormat, optional=True))
    signature_key: str = option("serving_default", "SavedModel signature.")
    input_arrays: tuple[str, ...] | None = option(None, "Frozen graph input node names, comma-separated.",
                                                  names_list())
    output_arrays: tuple[str, ...] | None = option(None, "Frozen graph output node names, comma-separated.",
                                                   names_list())
    input_shapes: dict[str, tuple[int, ...]] | None = option(
        None, "Frozen graph shapes: name:1,224,224,3;other:1,10", shapes_map())
    input_shape: tuple[int, ...] | None = option(
        None, "PyTorch model input shape, NCHW with batch 1, e.g. 1,3,224,224 (a .pt2 records its own).", shape())
    layout: Layout = option(Layout.NCHW, "PyTorch model input layout: nchw (as trained) or nhwc (channel-last I/O).",
                            choice(Layout))


def detect_format(model: str) -> str:
    """The source format of a ``model`` parameter, from its URI scheme, suffix or contents.

    Raises:
        TFLiteError: the path does not exist or its format is not recognised.
    """
    if model.startswith(MLFLOW_SCHEMES):
        return "mlflow"
    if is_factory(model):
        return "factory"
    path = Path(model)
    if not path.exists():
        raise TFLiteError(
            f"model {model!r} does not exist; pass a .keras/.h5/.pb/.pt2 file, a SavedModel directory, a "
            "package.module:factory or an MLflow model URI (or omit model for the digits demo)"
        )
    if path.is_dir():
        if not (path / "saved_model.pb").exists():
            raise TFLiteError(f"directory {model!r} is not a SavedModel (no saved_model.pb inside)")
        return "saved_model"
    formats = {".keras": "keras", ".h5": "h5", ".hdf5": "h5", ".pb": "frozen_graph", ".pt2": "pt2"}
    if path.suffix not in formats:
        raise TFLiteError(
            f"model file {model!r} has an unknown format {path.suffix!r}; use .keras, .h5, .pb (frozen graph), .pt2, "
            "a SavedModel directory, or set source_format"
        )
    return formats[path.suffix]


# The sweep's default pruning grid, and the formats TFMOT can prune: tf_keras files, and MLflow models
# (which may hold one). The demo is a tf_keras model.
PRUNING_GRID = (0.0, 0.5, 0.8)
_PRUNABLE_FORMATS = frozenset({"keras", "h5", "mlflow"})


def default_sparsities(model: str | None, source_format: str | None = None) -> tuple[float, ...]:
    """What a sweep's ``sparsity=auto`` means for ``model`` (``None``: the demo).

    Returns:
        :data:`PRUNING_GRID` (fractions) for a source TFMOT can prune, else ``(0.0,)``: SavedModels,
        frozen graphs and PyTorch models cannot be pruned, so their pruned variants would only fail.

    Raises:
        TFLiteError: as :func:`detect_format`, for a path that does not exist or has no known format.
    """
    if model is None:
        return PRUNING_GRID
    return PRUNING_GRID if (source_format or detect_format(model)) in _PRUNABLE_FORMATS else (0.0,)


def open_source(
    model: Any,
    source_format: str | None = None,
    signature_key: str = "serving_default",
    input_arrays: list[str] | None = None,
    output_arrays: list[str] | None = None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    input_shape: tuple[int, ...] | None = None,
    layout: Layout | str = Layout.NCHW,
) -> Source:
    """Open the ``model`` parameter: a Keras model object, a path or an MLflow model URI.

    Args:
        model: a tf_keras / Keras 3 model, a ``.keras`` / ``.h5`` file, a SavedModel (or TF Hub
            SavedModel) directory, a ``.pb`` frozen graph, or ``models:/...`` / ``runs:/...``.
        source_format: one of :data:`SOURCE_FORMATS` to override detection.
        signature_key: the SavedModel signature to convert.
        input_arrays, output_arrays, input_shapes: frozen graph node names and shapes.
        input_shape, layout: a PyTorch model's NCHW input shape and layout (``torch_source``).

    Returns:
        A :class:`Source`; ``name`` is the file/directory stem or registered model name.

    Raises:
        TFLiteError: a missing path, an unknown format, or a file that is not a model of it.
    """
    if not isinstance(model, (str, Path)):
        return from_keras_model(model)
    model = str(model)
    if source_format not in (None, *SOURCE_FORMATS):
        raise TFLiteError(f"source_format {source_format!r} is unknown; use one of {', '.join(SOURCE_FORMATS)}")
    source_format = source_format or detect_format(model)
    torch_options = (input_shape, Layout(layout))
    if source_format == "mlflow":
        return from_mlflow_model(model, torch_options)
    if source_format == "factory":
        if input_shape is None:
            raise TFLiteError(f"model {model!r} is a PyTorch factory; pass its NCHW input_shape, e.g. 1,3,224,224")
        return from_torch(TorchSpec("factory", model, *torch_options), model.rpartition(":")[2])
    path = Path(model)
    if not path.exists():
        raise TFLiteError(f"model {model!r} does not exist; pass the path of a {source_format} model")
    if source_format == "saved_model":
        return from_saved_model(path, signature_key)
    if source_format == "frozen_graph":
        return from_frozen_graph(path, input_arrays or [], output_arrays or [], input_shapes)
    if source_format == "pt2":
        source = from_torch(TorchSpec("pt2", str(path.resolve()), *torch_options), path.stem)
        return source
    try:
        keras_model = _load_keras_file(path)
    except Exception as error:
        raise TFLiteError(f"model file {model!r} could not be loaded as a Keras model ({first_line(error, 200)})") from None
    source = from_keras_model(keras_model, uri=str(path.resolve()))
    source.name = path.stem
    return source
