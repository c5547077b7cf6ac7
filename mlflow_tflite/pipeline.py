"""One variant end to end: source -> variant model -> convert -> evaluate -> log -> register.

:func:`prepare` does the work every variant shares (open the source, load and check the data,
compute the source model's reference outputs) once. :func:`variant_model` resizes and prunes
the source for a variant (cached per input size and sparsity), :func:`convert_and_evaluate`
produces the .tflite and its metrics, and :func:`log_outcome` records them as an MLflow run.
``run_variant`` chains them for the ``main`` entry point; ``sweep.py`` spreads them over
worker processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import mlflow
import numpy as np

from mlflow_tflite import backends, evaluate, registry, tags, tracking
from mlflow_tflite.data import Dataset, calibration_sample, load_dataset, resize_images, validate_dataset
from mlflow_tflite.demo import DEMO_MODEL_NAME
from mlflow_tflite.errors import TFLiteError
from mlflow_tflite.mixed import MixedPrecision
from mlflow_tflite.optimize import QatOptions
from mlflow_tflite.options import Task, parse_enum
from mlflow_tflite.selection import Tolerance
from mlflow_tflite.sources import Source, from_tf_keras, open_source
from mlflow_tflite.variants import Variant

DEMO_URI = "demo:digits-cnn"
DEMO_NAME = DEMO_MODEL_NAME


@dataclass
class VariantModel:
    """A source adapted to one (input size, sparsity): the model and its data at that size.

    ``x_train`` / ``x_test`` hold one array per model input (``None`` without data).
    """

    source: Source
    x_train: list[np.ndarray] | None
    x_test: list[np.ndarray] | None


@dataclass
class Prepared:
    """Shared inputs of every variant of one source.

    Attributes:
        source: the opened model.
        dataset: its data (``None`` when a model is given without data).
        reference: source outputs on ``dataset.x_test`` (one float32 array per output); every
            variant, resized or pruned, is compared against these.
        task: ``classification`` (accuracy metrics) or ``fidelity`` (output agreement only).
        variant_models: cache of :class:`VariantModel` by ``Variant.model_key`` (input size,
            sparsity, trained): each resized/pruned model is built (or loaded from another worker) once.
        float_models: cache of float .tflite bytes by ``(Variant.model_key, ops)``: the LiteRT
            Quantizer backend and the per-tensor error share one float conversion per key.
        class_outputs: positions of the source outputs that hold class scores (they get a
            top-1 ``agreement``), see ``evaluate.class_score_outputs``.
        source_params: the source options that differ from ``SourceOptions()``, as run params.
        tensor_errors: compare quantized variants tensor by tensor with the float model.
        tolerance: the bound ``int8_mixed`` searches to meet (``selection.Tolerance``).
        mixed_precision: how ``int8_mixed`` searches (``mixed.MixedPrecision``).
        qat: the fine-tuning of ``qat_int8`` (``optimize.QatOptions``).
    """

    source: Source
    dataset: Dataset | None
    reference: list[np.ndarray] | None
    task: str = "classification"
    class_outputs: tuple[int, ...] = ()
    source_params: dict[str, str] = field(default_factory=dict)
    tensor_errors: bool = True
    tolerance: Tolerance = Tolerance()
    mixed_precision: MixedPrecision = MixedPrecision()
    qat: QatOptions = QatOptions()
    variant_models: dict = field(default_factory=dict, repr=False)
    float_models: dict = field(default_factory=dict, repr=False)

    @property
    def native_input_size(self) -> int | None:
        """Side of the source's square image input ``(N, S, S, C)`` (8 for digits), or ``None``."""
        shape = self.source.input_shapes[0]
        return shape[1] if len(shape) == 4 and shape[1] == shape[2] and shape[1] > 0 else None


def prepare(model=None, data: str | None = None, task: str = "auto", preprocessing=None, tensor_errors: bool = True,
            tolerance: Tolerance = Tolerance(), mixed_precision: MixedPrecision = MixedPrecision(),
            qat: QatOptions = QatOptions(), dataset: Dataset | None = None, **source_options) -> Prepared:
    """Open the source and data and compute the reference outputs.

    Args:
        model: a Keras model object, path or MLflow model URI (see ``sources.open_source``);
            ``None`` with no ``data`` gives the digits demo CNN (``demo.py``).
        data: a .npz/.npy path, an image folder, ``"digits"``, or ``None``.
        task: ``classification``, ``fidelity`` (no accuracy metrics: regression, embeddings,
            detection heads), or ``auto``: classification when the data has labels and the
            first output holds class scores (softmax-like rows, or logits whose top-1 matches
            the labels, see ``evaluate.class_score_outputs``).
        preprocessing: ``data.Preprocessing`` applied to the data at load time.
        tensor_errors: compare every quantized variant tensor by tensor with the float model.
        tolerance, mixed_precision, qat: see :class:`Prepared`.
        dataset: the data already loaded (with ``preprocessing`` applied), e.g. shipped to a Ray
            worker through the object store; then ``data`` is not read again (it still tells the
            demo, ``None``, from a named data set).
        source_options: ``source_format``, ``signature_key``, ``input_arrays``,
            ``output_arrays``, ``input_shapes`` (see ``sources.open_source``).

    Raises:
        TFLiteError: a bad model path or format, data without a model, an unknown task, or
            data that does not fit the model (see ``data.validate_dataset``).
    """
    task = parse_enum(Task, task, "task")
    if model is None and data is None:
        from mlflow_tflite.demo import load_or_train_digits_cnn

        dataset = dataset if dataset is not None else load_dataset(None, preprocessing)
        source = from_tf_keras(load_or_train_digits_cnn(dataset), uri=DEMO_URI)
        source.name = DEMO_NAME
    elif model is None:
        raise TFLiteError(f"data {data!r} was given without a model; pass model too (or neither for the demo)")
    else:
        source = open_source(model, **source_options)
        dataset = dataset if dataset is not None else (load_dataset(data, preprocessing) if data else None)
    source_params = _changed_source_options(source_options)
    shared = {"source_params": source_params, "tensor_errors": tensor_errors, "tolerance": tolerance,
              "mixed_precision": mixed_precision, "qat": qat}
    if dataset is None:
        return Prepared(source, None, None, "fidelity", **shared)
    validate_dataset(dataset, source.input_shapes, None)
    reference = source.predict(dataset.test_inputs)
    class_outputs = evaluate.class_score_outputs(reference, dataset.y_test, task)
    if task == "auto":
        task = "classification" if dataset.labelled and 0 in class_outputs else "fidelity"
    if task == "classification":
        if 0 not in class_outputs:
            raise TFLiteError(
                f"task=classification needs a first output of class scores (N, classes) but {source.uri} gives "
                f"{tuple(reference[0].shape)}; use task=fidelity"
            )
        validate_dataset(dataset, source.input_shapes, int(reference[0].shape[1]))
    return Prepared(source, dataset, reference, task, class_outputs, **shared)


def _changed_source_options(source_options: dict) -> dict[str, str]:
    """Source options that differ from their defaults, as run params (``input_shapes`` as text)."""
    from dataclasses import fields

    from mlflow_tflite.sources import SourceOptions

    defaults = {f.name: f.default for f in fields(SourceOptions)}
    return {key: ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
            for key, value in source_options.items() if value is not None and value != defaults.get(key)}


def variant_model(prepared: Prepared, variant: Variant, seed: int = 0) -> VariantModel:
    """The source resized to ``variant.input_size`` and pruned to ``variant.sparsity``.

    Built once per (input size, sparsity) and cached on ``prepared``, so every quantization
    mode of a pruned model reuses the same pruning.

    Raises:
        TFLiteError: the source cannot be resized or pruned (not a tf_keras model, layers that
            depend on the input size, no labels to fine-tune on).
    """
    if variant.model_key not in prepared.variant_models:
        prepared.variant_models[variant.model_key] = _build_variant_model(prepared, variant, seed)
    return prepared.variant_models[variant.model_key]


def _resized(prepared: Prepared, variant: Variant) -> bool:
    return variant.input_size not in (None, prepared.native_input_size)


def _variant_data(prepared: Prepared, variant: Variant) -> tuple[list | None, list | None]:
    """(x_train, x_test) input lists at the variant's input size (bilinear resize), or ``(None, None)``."""
    dataset = prepared.dataset
    if dataset is None:
        return None, None
    if not _resized(prepared, variant):
        return dataset.train_inputs, dataset.test_inputs
    return ([resize_images(x, variant.input_size) for x in dataset.train_inputs],
            [resize_images(x, variant.input_size) for x in dataset.test_inputs])


def _adapted(prepared: Prepared, variant: Variant, keras_model) -> VariantModel:
    source = from_tf_keras(keras_model, uri=prepared.source.uri)
    source.name = prepared.source.name
    return VariantModel(source, *_variant_data(prepared, variant))


def _build_variant_model(prepared: Prepared, variant: Variant, seed: int) -> VariantModel:
    if variant.recipe.trained:
        return _trained_variant_model(prepared, variant, seed)
    if not _resized(prepared, variant) and variant.sparsity == 0:
        return VariantModel(prepared.source, *_variant_data(prepared, variant))
    from mlflow_tflite import optimize

    keras_model = prepared.source.keras_model
    what = f"input_size={variant.input_size}" if _resized(prepared, variant) else f"sparsity={variant.sparsity:g}"
    if keras_model is None:
        raise TFLiteError(
            f"{what} needs a tf_keras model but the source is a {prepared.source.kind} model "
            f"({prepared.source.uri}); give an .h5/tf_keras model or drop that option"
        )
    if _resized(prepared, variant):
        keras_model = optimize.resize_model(keras_model, variant.input_size)
    if variant.sparsity > 0:
        if prepared.dataset is None:
            raise TFLiteError(f"sparsity={variant.sparsity:g} needs training data to fine-tune; pass data")
        x_train, _ = _variant_data(prepared, variant)
        keras_model = optimize.prune_model(keras_model, x_train, prepared.dataset.y_train, variant.sparsity, seed=seed)
    return _adapted(prepared, variant, keras_model)


def untrained_variant(variant: Variant) -> Variant:
    """The float variant of the same input size and sparsity, without quantization-aware training:
    its model is the one a ``qat_int8`` variant fine-tunes (and its float model is the reference)."""
    from dataclasses import replace

    from mlflow_tflite.quant_modes import QuantMode

    return replace(variant, quant=QuantMode.NONE)


def _trained_variant_model(prepared: Prepared, variant: Variant, seed: int) -> VariantModel:
    """``qat_int8``: the resized/pruned model of the same size and sparsity (shared with the other
    modes), then quantization-aware training (``optimize.qat_model`` with ``prepared.qat``)."""
    from mlflow_tflite import optimize

    base = variant_model(prepared, untrained_variant(variant), seed)
    if base.source.keras_model is None:
        raise TFLiteError(
            f"quant={variant.quant} needs a tf_keras model but the source is a {prepared.source.kind} model "
            f"({prepared.source.uri}); give an .h5/tf_keras model or use quant=int8 (post-training quantization)"
        )
    if prepared.dataset is None:
        raise TFLiteError(f"quant={variant.quant} needs labelled training data to fine-tune; pass data with "
                          "x_train and y_train or use quant=int8 (post-training quantization)")
    keras_model = optimize.qat_model(base.source.keras_model, base.x_train, prepared.dataset.y_train, prepared.qat,
                                     variant.sparsity, seed=seed)
    return _adapted(prepared, variant, keras_model)


def load_variant_model(prepared: Prepared, variant: Variant, path) -> VariantModel:
    """A resized/pruned (or quantization-aware trained) model saved by another worker (``.h5``),
    with its data at that size."""
    if variant.recipe.trained:
        from mlflow_tflite.optimize import load_qat_model

        return _adapted(prepared, variant, load_qat_model(path))
    import tf_keras

    return _adapted(prepared, variant, tf_keras.models.load_model(path, compile=False))


@dataclass(frozen=True)
class Outcome:
    """A converted and evaluated variant, ready to log (picklable: it crosses processes).

    Attributes:
        tflite_model: flatbuffer bytes.
        metrics: run metrics (see DESIGN.md contracts).
        calibration: the representative dataset used (one float32 ``(n, ...)`` array per input) or ``None``.
        input_example: two test examples at the variant's input size (a dict by input name for several inputs).
        op_inventory: op name -> count in the converted model (Flex ops appear as ``FlexXxx``).
        not_evaluated: why the model could not be run here (Flex ops), else ``None``; then only
            the size metrics exist and the variant is neither registered nor selected.
        recipe_json: the LiteRT Quantizer recipe that made it (JSON text), or ``None``.
        tensor_errors: per-tensor error rows against the float model (``quantize.tensor_errors``),
            or ``None`` with ``tensor_errors_note`` saying why.
        edgetpu: static Edge TPU readiness report (``edgetpu.readiness``) of variants with int8 kernels, else ``None``.
        search: the mixed-precision search (``mixed.SearchResult``) of ``int8_mixed``, else ``None``.
        mode_params: run params of the mode's own options (``qat_epochs``, ``qat_learning_rate``).
    """

    tflite_model: bytes
    metrics: dict[str, float]
    calibration: list[np.ndarray] | None
    input_example: np.ndarray | dict
    op_inventory: dict[str, int]
    not_evaluated: str | None = None
    recipe_json: str | None = None
    tensor_errors: list[dict] | None = None
    tensor_errors_note: str | None = None
    edgetpu: dict | None = None
    search: object | None = None
    mode_params: dict = field(default_factory=dict)

    @property
    def final_step(self) -> int:
        """Step of the run's final metric values: 0, or after the trials of a mixed-precision search."""
        return len(self.search.trials) + 1 if self.search is not None else 0

    def latency_models(self, name: str) -> dict[str, tuple[bytes, object]]:
        """The models to time for variant ``name``: its own, and each other trial's as ``name#trial<n>``."""
        models = {name: (self.tflite_model, self.input_example)}
        for trial in self.search.trials if self.search is not None else []:
            if trial.number != self.search.chosen.number:
                models[f"{name}#trial{trial.number}"] = (trial.tflite_model, self.input_example)
        return models

    def trial_latencies(self, name: str, latencies: dict[str, dict[str, float]]) -> dict[int, float]:
        """Trial number -> ``latency_ms_p50`` from :func:`time_latency` results of :meth:`latency_models`."""
        if self.search is None:
            return {}
        return {t.number: latencies[name if t.number == self.search.chosen.number else f"{name}#trial{t.number}"]["latency_ms_p50"]
                for t in self.search.trials}

    @property
    def tolerance_met(self) -> bool:
        """False only for an ``int8_mixed`` search that did not meet the tolerance (never selected or promoted)."""
        return self.search is None or self.search.tolerance_met


def _probe_input(source: Source) -> np.ndarray:
    """A zero example for latency timing when there is no data."""
    return np.zeros([1 if d == -1 else d for d in source.input_shapes[0]], np.float32)


def _example(source: Source, x_test: list[np.ndarray]):
    """Two test examples: an array for one input, a dict by input name for several."""
    if len(x_test) == 1:
        return x_test[0][:2]
    return {name: x[:2] for name, x in zip(source.input_names, x_test)}


@dataclass(frozen=True)
class Split:
    """Examples a model is judged on: inputs at the variant's size, the source's outputs, labels (or ``None``)."""

    x: list[np.ndarray]
    reference: list[np.ndarray]
    labels: np.ndarray | None


def test_split(prepared: Prepared, adapted: VariantModel) -> Split:
    """The test split, where every variant's reported metrics come from."""
    return Split(adapted.x_test, prepared.reference, prepared.dataset.y_test)


def _measure(prepared: Prepared, adapted: VariantModel, tflite_model: bytes, split: Split | None,
             interpreter=None) -> dict[str, float]:
    """Size, float ops and (given a split) accuracy/fidelity of a flatbuffer against the source's outputs."""
    from mlflow_tflite import runtime, tflite_file

    metrics = {**evaluate.size_metrics(tflite_model), "float_ops": tflite_file.float_ops(tflite_model)}
    if split is not None:
        metrics.update(evaluate.evaluate(
            tflite_model, interpreter or runtime.make_interpreter(tflite_model), split.reference, split.x,
            split.labels, input_names=adapted.source.input_names, output_names=adapted.source.output_names,
            class_outputs=prepared.class_outputs, task=prepared.task,
        ))
    return metrics


def _mixed_search(prepared: Prepared, variant: Variant, adapted: VariantModel, calibration):
    """``int8_mixed``: the search (``backends.mixed_search``), each trial judged on the test split.

    The test split, as every variant's reported metrics: Neural Compressor and NNCF judge their
    accuracy-aware searches on the user's validation set the same way. Train rows are no
    substitute: the model has fitted them (the demo's int8 cosine similarity is 0.9999992 on
    train rows and 0.999989 on test rows), so they hide the loss the search must see.
    """
    if prepared.dataset is None:
        raise TFLiteError("quant=int8_mixed measures each trial against the source; pass data")
    split = test_split(prepared, adapted)
    return backends.mixed_search(prepared, variant, adapted.source, calibration, split.x,
                                 lambda model: _measure(prepared, adapted, model, split))


def _integer_kernels(variant: Variant) -> bool:
    """The variant's kernels are int8 (Edge TPU readiness applies): int8, int8_full, int8_mixed, qat_int8."""
    from mlflow_tflite.quant_modes import Kernels

    return variant.recipe.kernels == Kernels.INT8 or variant.recipe.mixed


def _edgetpu_readiness(tflite_model: bytes) -> dict:
    """``edgetpu.readiness`` of the model as compiled with batch 1.

    An open batch dimension is a conversion setting, not an op the compiler cannot map: the
    estimate is made on ``tflite_file.with_batch_one(model)`` (what ``int8_full`` ships) and the
    report says so (``estimated_with_batch_one``).
    """
    from mlflow_tflite import edgetpu, tflite_file

    static = tflite_file.with_batch_one(tflite_model)
    return {**edgetpu.readiness(static), "estimated_with_batch_one": static is not tflite_model}


def convert_and_evaluate(prepared: Prepared, variant: Variant) -> Outcome:
    """Convert the variant's model and measure it against the original source (no latency yet).

    Accuracy and fidelity compare the variant (on test images at its input size) with the
    original source model's reference outputs, so resizing and pruning losses both show.
    Latency is timed afterwards, in a quiet phase (:func:`time_latency`). ``int8_mixed``
    searches its float layers first (:func:`_mixed_search`); the chosen trial is the model.

    Raises:
        TFLiteError: resizing, pruning or conversion failed, or a calibrated mode has no data.
    """
    from mlflow_tflite import runtime, tflite_file

    adapted = variant_model(prepared, variant)
    calibration = None
    if variant.calibrated and adapted.x_train is not None:
        calibration = calibration_sample(adapted.x_train, variant.calibration_samples)
    search = None
    if variant.recipe.mixed:
        produced, search = _mixed_search(prepared, variant, adapted, calibration)
    else:
        produced = backends.produce(prepared, variant, adapted.source, calibration)
    tflite_model, inventory = produced.tflite_model, tflite_file.op_inventory(produced.tflite_model)
    example = _example(adapted.source, adapted.x_test) if adapted.x_test else _probe_input(adapted.source)
    edgetpu_report = _edgetpu_readiness(tflite_model) if _integer_kernels(variant) else None
    try:
        interpreter = runtime.make_interpreter(tflite_model)
    except TFLiteError as error:
        if not tflite_file.flex_ops(tflite_model):
            raise
        metrics = {**evaluate.size_metrics(tflite_model), **produced.seconds,
                   "float_ops": tflite_file.float_ops(tflite_model)}
        return Outcome(tflite_model, metrics, calibration, example, inventory, error.message, produced.recipe_json,
                       edgetpu=edgetpu_report)
    split = test_split(prepared, adapted) if prepared.dataset is not None else None
    metrics = {**_measure(prepared, adapted, tflite_model, split, interpreter), **produced.seconds}
    if edgetpu_report:
        metrics["edgetpu_mapped_fraction"] = edgetpu_report["edgetpu_mapped_fraction"]
    metrics["sparsity_achieved"] = tflite_file.tflite_sparsity(tflite_model)
    rows, note = (backends.tensor_errors(prepared, variant, adapted.source, tflite_model, adapted.x_test)
                  if prepared.tensor_errors else (None, "skipped (no_tensor_errors)"))
    if rows:
        metrics["min_tensor_snr_db"] = rows[0]["snr_db"]
    from mlflow_tflite.optimize import qat_params

    return Outcome(tflite_model, metrics, calibration, example, inventory, None, produced.recipe_json, rows, note,
                   edgetpu_report, search, qat_params(prepared.qat) if variant.recipe.trained else {})


def example_arrays(example) -> tuple[list[np.ndarray], list[str] | None]:
    """An input example (an array, or a dict by source input name) -> (arrays, names or None)."""
    if isinstance(example, dict):
        return [np.asarray(v) for v in example.values()], list(example)
    return [np.asarray(example)], None


def time_latency(models: dict[str, tuple[bytes, object]], num_threads: int = 1) -> dict[str, dict[str, float]]:
    """Latency metrics of several .tflite models, timed side by side (``latency.measure_latencies``).

    Call it in a quiet phase: after every conversion, with no other work on the machine's cores.

    Args:
        models: name -> (flatbuffer bytes, input example: an array, or a dict of arrays by the
            source's input names; the first row is used).
        num_threads: LiteRT interpreter threads.

    Returns:
        name -> ``latency_ms_*`` metrics in milliseconds.

    Raises:
        TFLiteError: a model does not load or run.
    """
    from mlflow_tflite import runtime

    loaded = {}
    for name, (tflite_model, example) in models.items():
        interpreter = runtime.make_interpreter(tflite_model, num_threads)
        arrays, names = example_arrays(example)
        loaded[name] = (interpreter, evaluate.inputs_in_model_order(interpreter, arrays, names))
    from mlflow_tflite.latency import measure_latencies

    return measure_latencies(loaded)


def log_outcome(outcome: Outcome, variant: Variant, dataset: Dataset | None, num_threads: int):
    """Log metrics, data set inputs and the ``tflite`` model into the active run.

    Returns:
        ``(model_info, eval_digest)``: the logged model and the evaluation data digest (or ``None``).
    """
    tracking.log_params_once(outcome.mode_params)
    if outcome.search is not None:
        tracking.log_search(outcome.search)
    mlflow.log_metrics(outcome.metrics, step=outcome.final_step)
    mlflow.log_dict(outcome.op_inventory, "op_inventory.json")
    if outcome.edgetpu:
        mlflow.log_dict(outcome.edgetpu, "edgetpu_readiness.json")
    if outcome.not_evaluated:
        mlflow.set_tag(tags.NOT_EVALUATED_TAG, outcome.not_evaluated[:5000])
    eval_digest = tracking.log_dataset_inputs(dataset, outcome.calibration) if dataset else None
    tracking.log_tensor_errors(outcome.tensor_errors, outcome.tensor_errors_note)
    model_info = tracking.log_variant_model(outcome.tflite_model, variant, outcome.input_example, num_threads,
                                            outcome.recipe_json)
    mlflow.set_tag(tags.MODEL_URI_TAG, model_info.model_uri)
    return model_info, eval_digest


def log_trial_latencies(run_id: str, outcome: Outcome, name: str, latencies: dict[str, dict[str, float]]) -> None:
    """``latency_ms_p50`` at each mixed-precision trial's step of the variant's run (nothing for other modes)."""
    from mlflow_tflite.sweep_runs import log_metrics_to

    for number, p50 in outcome.trial_latencies(name, latencies).items():
        log_metrics_to(run_id, {"latency_ms_p50": p50}, step=number)


@dataclass(frozen=True)
class VariantResult:
    """What one variant produced: its run id, metrics and (if registered) its registration."""

    run_id: str
    variant: Variant
    metrics: dict[str, float]
    model_uri: str
    registration: registry.Registration | None
    message: str | None = None


def run_variant(
    prepared: Prepared,
    variant: Variant,
    registered_model_name: str | None = None,
    num_threads: int = 1,
    register: bool = True,
    tolerance: Tolerance = Tolerance(),
) -> VariantResult:
    """Convert, evaluate and log one variant as an MLflow run; register it if asked.

    Args:
        prepared: shared inputs from :func:`prepare`.
        variant: the variant (``input_size`` the native size, another size, or ``None``).
        registered_model_name: registry name; default the source's name (``digits-cnn``).
        num_threads: LiteRT interpreter threads for latency and the pyfunc.
        register: register the model version and apply the ``champion`` alias guard.
        tolerance: a variant outside it is registered as ``challenger`` only.

    Returns:
        :class:`VariantResult`.

    Raises:
        TFLiteError: the variant failed; the run is then FAILED with the message and nothing
            is registered.
    """
    with tracking.variant_run(variant) as run:
        tracking.log_source(prepared.source.uri, variant, num_threads, prepared.task, prepared.source.lineage,
                            prepared.dataset.preprocessing if prepared.dataset else None, prepared.source_params)
        outcome = convert_and_evaluate(prepared, variant)
        if not outcome.not_evaluated:
            latencies = time_latency(outcome.latency_models(variant.name), num_threads)
            outcome.metrics.update(latencies[variant.name])
        model_info, eval_digest = log_outcome(outcome, variant, prepared.dataset, num_threads)
        if not outcome.not_evaluated:
            log_trial_latencies(mlflow.active_run().info.run_id, outcome, variant.name, latencies)
        registration = None
        if register and not outcome.not_evaluated and outcome.tolerance_met:
            name = registered_model_name or prepared.source.name
            registration = registry.register_and_promote(
                model_info.model_uri, name, outcome.metrics, eval_digest, variant.name, tolerance
            )
    message = outcome.search.message if outcome.search is not None else None
    return VariantResult(run.info.run_id, variant, outcome.metrics, model_info.model_uri, registration, message)
