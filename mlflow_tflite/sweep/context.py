"""What every variant of one source shares, opened once: the model, its data and reference outputs.

:func:`prepare` opens the source and the data, checks that they fit and computes the source's
outputs on the test split; the result, a :class:`Context`, is a value: stages read it and never
write to it (the models built from it are in ``build.graph.Builds``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import numpy as np

from mlflow_tflite.build.data import Dataset, Preprocessing, load_dataset
from mlflow_tflite.build.data_checks import validate_dataset
from mlflow_tflite.build.demo import DEMO_MODEL_NAME, load_or_train_digits_cnn
from mlflow_tflite.build.graph import BuildInputs
from mlflow_tflite.build.mixed import MixedPrecision
from mlflow_tflite.build.qat import QatOptions
from mlflow_tflite.build.source import Source
from mlflow_tflite.build.sources import SourceOptions, from_tf_keras, open_source
from mlflow_tflite.build.torch_source import image_layout
from mlflow_tflite.errors import TFLiteError
from mlflow_tflite.measure.evaluate import class_score_outputs
from mlflow_tflite.options import Task, parse_enum
from mlflow_tflite.track.selection import Tolerance

DEMO_URI = "demo:digits-cnn"


@dataclass(frozen=True)
class Settings:
    """How variants are built and judged (the same for every variant of a job).

    Attributes:
        tensor_errors: compare quantized variants tensor by tensor with the float model.
        tolerance: the bound ``int8_mixed`` searches to meet (``selection.Tolerance``).
        mixed_precision: how ``int8_mixed`` searches (``mixed.MixedPrecision``).
        qat: the fine-tuning of ``qat_int8`` (``qat.QatOptions``).
    """

    tensor_errors: bool = True
    tolerance: Tolerance = Tolerance()
    mixed_precision: MixedPrecision = MixedPrecision()
    qat: QatOptions = QatOptions()


@dataclass(frozen=True)
class Context:
    """Shared inputs of every variant of one source (read-only).

    Attributes:
        source: the opened model.
        dataset: its data (``None`` when a model is given without data).
        reference: source outputs on ``dataset.x_test`` (one float32 array per output); every
            variant, resized or pruned, is compared against these.
        task: ``classification`` (accuracy metrics) or ``fidelity`` (output agreement only).
        class_outputs: positions of the source outputs that hold class scores (they get a
            top-1 ``agreement``), see ``evaluate.class_score_outputs``.
        source_params: the source options that differ from ``SourceOptions()``, as run params.
        settings: :class:`Settings`.
    """

    source: Source
    dataset: Dataset | None
    reference: list[np.ndarray] | None
    task: str = "classification"
    class_outputs: tuple[int, ...] = ()
    source_params: dict[str, str] = field(default_factory=dict)
    settings: Settings = Settings()

    @property
    def native_input_size(self) -> int | None:
        """Side of the source's square image input ``(N, S, S, C)`` (8 for digits), or ``None``."""
        shape = self.source.input_shapes[0]
        return shape[1] if len(shape) == 4 and shape[1] == shape[2] and shape[1] > 0 else None

    def build_inputs(self, seed: int = 0) -> BuildInputs:
        """What the build graph needs of this context (``build.graph.Builds``)."""
        return BuildInputs(self.source, self.dataset, self.native_input_size, self.settings.qat, seed)


def prepare(model=None, data: str | None = None, task: str = "auto", preprocessing: Preprocessing | None = None,
            tensor_errors: bool = True, tolerance: Tolerance = Tolerance(),
            mixed_precision: MixedPrecision = MixedPrecision(), qat: QatOptions = QatOptions(),
            dataset: Dataset | None = None, **source_options) -> Context:
    """Open the source and data and compute the reference outputs.

    Args:
        model: a Keras model object, path or MLflow model URI (see ``sources.open_source``);
            ``None`` with no ``data`` gives the digits demo CNN (``demo.py``).
        data: a .npz/.npy path, an image folder, ``"digits"``, or ``None``.
        task: ``classification``, ``fidelity`` (no accuracy metrics: regression, embeddings,
            detection heads), or ``auto``: classification when the data has labels and the
            first output holds class scores (see ``evaluate.class_score_outputs``).
        preprocessing: ``data.Preprocessing`` applied to the data at load time.
        tensor_errors, tolerance, mixed_precision, qat: see :class:`Settings`.
        dataset: the data already loaded (with ``preprocessing`` applied), e.g. shipped to a
            worker; then ``data`` is not read again (it still tells the demo, ``None``, apart).
        source_options: ``source_format``, ``signature_key``, ``input_arrays``,
            ``output_arrays``, ``input_shapes`` (see ``sources.open_source``).

    Returns:
        :class:`Context`.

    Raises:
        TFLiteError: a bad model path or format, data without a model, an unknown task, or
            data that does not fit the model (``data_checks.validate_dataset``), including labels
            outside the class-score output, in either split.
    """
    task = parse_enum(Task, task, "task")
    settings = Settings(tensor_errors, tolerance, mixed_precision, qat)
    source, dataset = _open(model, data, preprocessing, dataset, source_options)
    source_params = _changed_source_options(source_options)
    if source.layout:
        source_params["layout"] = source.layout
    if dataset is None:
        return Context(source, None, None, "fidelity", source_params=source_params, settings=settings)
    validate_dataset(dataset, source.input_shapes, None)
    reference = source.predict(dataset.test_inputs)
    class_outputs = class_score_outputs(reference, dataset.y_test, task)
    requested = task
    if task == "auto":
        task = "classification" if dataset.labelled and 0 in class_outputs else "fidelity"
    if task == "classification" and 0 not in class_outputs:
        raise TFLiteError(
            f"task=classification needs a first output of class scores (N, classes) but {source.uri} gives "
            f"{tuple(reference[0].shape)}; use task=fidelity"
        )
    _check_label_range(dataset, source, reference[0], class_outputs, requested)
    return Context(source, dataset, reference, task, class_outputs, source_params, settings)


def _check_label_range(dataset: Dataset, source: Source, first_output: np.ndarray, class_outputs: tuple[int, ...],
                       requested_task: str) -> None:
    """Labels (both splits) index the classes of the first output when it holds class scores, and
    also when the task was left to ``auto`` and it could (``(N, C)``, C > 1): labels outside it
    would otherwise silently turn the task into fidelity."""
    if dataset.y_train is None and dataset.y_test is None:
        return
    guessed = 0 not in class_outputs and requested_task == "auto"
    if first_output.ndim == 2 and first_output.shape[1] > 1 and (0 in class_outputs or guessed):
        hint = "; or pass task=fidelity if output 0 is not class scores" if guessed else ""
        validate_dataset(dataset, source.input_shapes, int(first_output.shape[1]), hint)


def _open(model, data, preprocessing, dataset, source_options) -> tuple[Source, Dataset | None]:
    """The source and its data (the demo CNN and digits when neither is given)."""
    if model is None and data is None:
        dataset = dataset if dataset is not None else load_dataset(None, preprocessing)
        source = from_tf_keras(load_or_train_digits_cnn(dataset), uri=DEMO_URI)
        source.name = DEMO_MODEL_NAME
        return source, dataset
    if model is None:
        raise TFLiteError(f"data {data!r} was given without a model; pass model too (or neither for the demo)")
    source = open_source(model, **source_options)
    if dataset is None and data:
        dataset = load_dataset(data, preprocessing)
    if dataset is not None and source.layout:  # a PyTorch source takes the NHWC images in its layout
        dataset = replace(dataset, x_train=image_layout(dataset.x_train, source.layout),
                          x_test=image_layout(dataset.x_test, source.layout))
    return source, dataset


def _changed_source_options(source_options: dict) -> dict[str, str]:
    """Source options that differ from their defaults, as run params (``input_shapes`` as text)."""
    defaults = {f.name: f.default for f in fields(SourceOptions)}
    return {key: ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
            for key, value in source_options.items() if value is not None and value != defaults.get(key)}
