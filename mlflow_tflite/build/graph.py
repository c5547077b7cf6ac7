"""The build graph of one source: source -> resized -> pruned -> QAT-trained -> float flatbuffer.

Each step is a function of values (a model and data in, a model or flatbuffer bytes out).
:class:`Builds` memoizes them by the part of the variant each depends on (:class:`ModelKey`:
input size, sparsity, quantization-aware training; plus the op set for the float flatbuffer),
so every mode of a pruned model reuses one pruning and one float conversion. A model built in
another process arrives as ``.h5`` bytes (:meth:`Builds.add_model`), a float flatbuffer as
bytes (:meth:`Builds.add_float`); :meth:`Builds.model_bytes` is what gets shipped.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from mlflow_tflite.build import convert, prune, qat, resize
from mlflow_tflite.build.data import Dataset, resize_images
from mlflow_tflite.build.source import Source
from mlflow_tflite.quiet import quiet_h5_save
from mlflow_tflite.build.sources import from_tf_keras
from mlflow_tflite.errors import TFLiteError
from mlflow_tflite.options import OpsSet
from mlflow_tflite.quant_modes import QuantMode
from mlflow_tflite.variants import Variant


@dataclass(frozen=True, order=True)
class ModelKey:
    """What a variant's (not yet converted) model depends on.

    Attributes:
        input_size: square input side in pixels, ``None`` for the native size.
        sparsity: pruning target in [0, 1).
        qat: fine-tuned with quantization-aware training (``qat_int8``).
    """

    input_size: int | None
    sparsity: float
    qat: bool = False

    @classmethod
    def of(cls, variant: Variant, native_input_size: int | None) -> ModelKey:
        """The key of ``variant``'s model; its native input size is written ``None``."""
        size = None if variant.input_size in (None, native_input_size) else variant.input_size
        return cls(size, variant.sparsity, variant.recipe.trained)

    @property
    def base(self) -> ModelKey:
        """The key this step starts from: QAT starts from the pruned model, pruning from the resized one."""
        if self.qat:
            return replace(self, qat=False)
        return replace(self, sparsity=0.0) if self.sparsity > 0 else ModelKey(None, 0.0)

    @property
    def is_source(self) -> bool:
        """True for the source itself (native size, no pruning, no QAT): nothing to build."""
        return self == ModelKey(None, 0.0)

    def __str__(self) -> str:
        size = f"input_size={self.input_size}" if self.input_size else "native size"
        return f"{size}, sparsity={self.sparsity:g}" + (", quantization-aware trained" if self.qat else "")


@dataclass(frozen=True)
class BuildInputs:
    """What building needs: the source, its data, the QAT options and the seed of every fine-tune."""

    source: Source
    dataset: Dataset | None
    native_input_size: int | None
    qat: qat.QatOptions = qat.QatOptions()
    seed: int = 0


@dataclass(frozen=True)
class FloatModel:
    """A float (``none``) flatbuffer and the seconds its conversion took (0.0 where it was reused)."""

    tflite_model: bytes
    seconds: float


class Builds:
    """Memo of the build graph's values for one source (one per process: a job or a worker)."""

    def __init__(self, inputs: BuildInputs):
        self.inputs = inputs
        self._models: dict[ModelKey, Source] = {ModelKey(None, 0.0): inputs.source}
        self._floats: dict[tuple[ModelKey, OpsSet], FloatModel] = {}
        self._resized: dict[int, tuple[list[np.ndarray], list[np.ndarray]]] = {}

    def data(self, key: ModelKey) -> tuple[list[np.ndarray] | None, list[np.ndarray] | None]:
        """``(x_train, x_test)`` input lists at the key's input size (bilinear, resized once per size),
        or ``(None, None)`` without data."""
        dataset = self.inputs.dataset
        if dataset is None:
            return None, None
        if key.input_size is None:
            return dataset.train_inputs, dataset.test_inputs
        if key.input_size not in self._resized:
            self._resized[key.input_size] = ([resize_images(x, key.input_size) for x in dataset.train_inputs],
                                             [resize_images(x, key.input_size) for x in dataset.test_inputs])
        return self._resized[key.input_size]

    def model(self, key: ModelKey) -> Source:
        """The model of ``key``, built (from its base, recursively) on first use.

        Raises:
            TFLiteError: the source cannot be resized, pruned or fine-tuned (not a tf_keras
                model, layers that depend on the input size, no labels to fine-tune on).
        """
        if key not in self._models:
            self._models[key] = self._adapted(self._build(key))
        return self._models[key]

    def _build(self, key: ModelKey):
        base = self.model(key.base).keras_model
        if base is None:
            raise TFLiteError(
                f"{_step_setting(key)} needs a tf_keras model but the source is a {self.inputs.source.kind} model "
                f"({self.inputs.source.uri}); give an .h5/tf_keras model or {_step_way_out(key)}")
        if key.qat:
            return self._trained(key, base)
        if key.sparsity > 0:
            if self.inputs.dataset is None:
                raise TFLiteError(f"sparsity={key.sparsity:g} needs training data to fine-tune; pass data")
            x_train, _ = self.data(key)
            return prune.prune_model(base, x_train, self.inputs.dataset.y_train, key.sparsity, seed=self.inputs.seed)
        return resize.resize_model(base, key.input_size)

    def _trained(self, key: ModelKey, base):
        if self.inputs.dataset is None:
            raise TFLiteError("quant=qat_int8 needs labelled training data to fine-tune; pass data with "
                              "x_train and y_train or use quant=int8 (post-training quantization)")
        x_train, _ = self.data(key)
        return qat.qat_model(base, x_train, self.inputs.dataset.y_train, self.inputs.qat, key.sparsity,
                             seed=self.inputs.seed)

    def _adapted(self, keras_model) -> Source:
        source = from_tf_keras(keras_model, uri=self.inputs.source.uri)
        source.name = self.inputs.source.name
        return source

    def built(self) -> set[ModelKey]:
        """The keys whose models are built (or were added) so far, the source's included."""
        return set(self._models)

    def model_bytes(self, key: ModelKey) -> bytes:
        """The model of ``key`` as ``.h5`` bytes, to ship to another process (:meth:`add_model`)."""
        with tempfile.TemporaryDirectory(prefix="mlflow-tflite-model-") as folder:
            path = Path(folder, "model.h5")
            with quiet_h5_save():
                self.model(key).keras_model.save(path)
            return path.read_bytes()

    def add_model(self, key: ModelKey, h5: bytes) -> None:
        """Use a model of ``key`` built elsewhere (``.h5`` bytes from :meth:`model_bytes`); kept if present."""
        if key in self._models:
            return
        with tempfile.TemporaryDirectory(prefix="mlflow-tflite-model-") as folder:
            path = Path(folder, "model.h5")
            path.write_bytes(h5)
            self._models[key] = self._adapted(qat.load_qat_model(path) if key.qat else _load_h5(path))

    def float_model(self, key: ModelKey, ops: OpsSet) -> FloatModel:
        """The float flatbuffer of ``key`` with op set ``ops``, converted on first use.

        Raises:
            TFLiteError: the model could not be built or converted.
        """
        made_elsewhere = self.inputs.source.float_model  # a PyTorch source's litert-torch model
        if (key, ops) not in self._floats and made_elsewhere is not None and key.is_source:
            if ops != OpsSet.BUILTINS:
                raise TFLiteError(f"ops={ops} does not apply to PyTorch model {self.inputs.source.uri!r} (litert-torch "
                                  "converts to builtin ops); use ops=builtins")
            self._floats[key, ops] = FloatModel(*made_elsewhere)
        if (key, ops) not in self._floats:
            variant = Variant(QuantMode.NONE, key.sparsity, key.input_size or self.inputs.native_input_size, ops=ops)
            conversion = convert.convert(self.model(key), variant)
            self._floats[key, ops] = FloatModel(conversion.tflite_model, conversion.convert_seconds)
        return self._floats[key, ops]

    def add_float(self, key: ModelKey, ops: OpsSet, float_model: FloatModel) -> None:
        """Use a float flatbuffer of ``(key, ops)`` converted elsewhere (replacing this memo's: the
        sender decides which variant its conversion seconds are charged to)."""
        self._floats[key, ops] = float_model


def _step_setting(key: ModelKey) -> str:
    if key.qat:
        return "quant=qat_int8"
    return f"sparsity={key.sparsity:g}" if key.sparsity > 0 else f"input_size={key.input_size}"


def _step_way_out(key: ModelKey) -> str:
    return "use quant=int8 (post-training quantization)" if key.qat else "drop that option"


def _load_h5(path: Path):
    import tf_keras

    return tf_keras.models.load_model(path, compile=False)
