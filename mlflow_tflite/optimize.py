"""Model optimizations applied before conversion: magnitude pruning, quantization-aware
training (:func:`qat_model`) and input resizing.

Pruning follows TensorFlow Model Optimization's pruning guide
(https://www.tensorflow.org/model_optimization/guide/pruning/pruning_with_keras):
``prune_low_magnitude`` with a ``PolynomialDecay`` schedule, fine-tuning with the
``UpdatePruningStep`` callback, then ``strip_pruning``. TFMOT works only with tf_keras
(Keras 2), so ``tf_keras`` is imported explicitly; the global Keras mode (``tf.keras`` and
``TF_USE_LEGACY_KERAS``) is left as the user set it (see :func:`_import_tfmot`).

The achieved sparsity is measured on the converted .tflite flatbuffer
(:func:`mlflow_tflite.tflite_file.tflite_sparsity`); image data is resized by
:func:`mlflow_tflite.data.resize_images`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from mlflow_tflite.errors import TFLiteError, first_line
from mlflow_tflite.options import check_range, number, option

# Fraction of the fine-tuning steps over which sparsity ramps up to the target; the rest of
# the steps fine-tune with the final mask fixed (the guide's recipe of pruning, then recovering).
_RAMP_FRACTION = 0.7
# Number of mask updates along the ramp (PolynomialDecay's ``frequency`` is derived from it).
_MASK_UPDATES = 10


@dataclass(frozen=True)
class QatOptions:
    """Fine-tuning of quantization-aware training (``quant=qat_int8``).

    Attributes:
        qat_epochs: epochs of fine-tuning with fake quantization (>= 1).
        qat_learning_rate: Adam learning rate of that fine-tuning (> 0).

    Raises:
        TFLiteError: a value out of range.
    """

    qat_epochs: int = option(2, "qat_int8: fine-tuning epochs.", number(int, 1, optional=True))
    qat_learning_rate: float = option(1e-4, "qat_int8: Adam learning rate of the fine-tuning.",
                                      number(float, 0, low_open=True, optional=True))

    def __post_init__(self):
        check_range(self.qat_epochs, "qat_epochs", 1)
        check_range(self.qat_learning_rate, "qat_learning_rate", 0, low_open=True)


# --------------------------------------------------------------------------------------------
# Pruning
# --------------------------------------------------------------------------------------------


def _import_tfmot():
    """Import ``tensorflow_model_optimization`` without flipping the global Keras mode.

    TFMOT's ``keras/compat.py`` sets ``os.environ["TF_USE_LEGACY_KERAS"] = "1"`` when it is
    imported and then touches ``tf.keras``; if ``tf.keras`` had not been resolved yet, that
    would route ``tf.keras`` to tf_keras for the rest of the process, and the variable would
    leak into child processes. So ``tf.keras`` is resolved first under the user's own setting,
    and the variable is restored afterwards. TFMOT itself then uses tf_keras (it picks tf_keras
    whenever ``tf.keras`` is Keras 3).
    """
    import tensorflow as tf

    previous = os.environ.get("TF_USE_LEGACY_KERAS")
    try:
        getattr(tf.keras, "Model", None)  # resolve the lazy tf.keras loader now
        import tensorflow_model_optimization as tfmot
    finally:
        if previous is None:
            os.environ.pop("TF_USE_LEGACY_KERAS", None)
        else:
            os.environ["TF_USE_LEGACY_KERAS"] = previous
    return tfmot


def _is_tf_keras_model(model) -> bool:
    import tf_keras

    return isinstance(model, tf_keras.Model)


def _type_name(model) -> str:
    if model is None:
        return "None (no Keras model: a SavedModel or Keras 3 source has no tf_keras model)"
    cls = type(model)
    return cls.__name__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _clone(model):
    """A functional/Sequential copy of a tf_keras ``model`` with the same weights (not shared)."""
    import tf_keras

    try:
        clone = tf_keras.models.clone_model(model)
    except Exception as error:  # subclassed models cannot be cloned
        reason = _first_line(error)
        raise TFLiteError(
            f"model {model.name!r} ({_type_name(model)}) cannot be cloned for pruning ({reason}); "
            "pruning needs a Sequential or functional tf_keras model; use sparsity=0"
        ) from None
    clone.set_weights(model.get_weights())
    return clone


def _first_line(error: Exception, limit: int = 200) -> str:
    """The informative first line of an error; Keras's "Exception encountered when calling
    layer X" preamble is folded into the line that says what went wrong."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = first_line(error)
    if reason.startswith("Exception encountered when calling layer") and len(lines) > 1:
        layer = reason.removeprefix("Exception encountered when calling ").rstrip(".")
        reason = f"{layer}: {lines[1]}"
    return reason.split(" for '{{node")[0][:limit]  # drop TensorFlow's graph-node dump


def _outputs_probabilities(model, inputs: list[np.ndarray]) -> bool:
    """True when the model's outputs on ``inputs`` look like softmax probabilities (rows sum to 1)."""
    first = [x[:32] for x in inputs]
    scores = np.asarray(model(first if len(first) > 1 else first[0], training=False))
    return bool(np.all(scores >= 0.0) and np.all(scores <= 1.0) and np.allclose(scores.sum(axis=1), 1.0, atol=1e-3))


def pruning_schedule_steps(num_examples: int, epochs: int, batch_size: int) -> tuple[int, int]:
    """End step and mask-update frequency of the pruning schedule.

    TFMOT's wrappers count training steps from 1 and update the masks at steps ``s`` with
    ``s % frequency == 0`` and ``s <= end_step``; ``PolynomialDecay`` reaches its final
    sparsity at ``end_step``. The end step is ~70% of the fine-tuning steps and a multiple of
    the frequency, so the target sparsity is really applied and the remaining ~30% of the steps
    recover accuracy with the final mask.

    Args:
        num_examples: rows of the training split.
        epochs: fine-tuning epochs (>= 1).
        batch_size: examples per step (>= 1).

    Returns:
        ``(end_step, frequency)``, both >= 1, with ``end_step <= epochs * ceil(num_examples / batch_size)``.
    """
    total_steps = math.ceil(num_examples / batch_size) * epochs
    end_step = max(1, round(total_steps * _RAMP_FRACTION))
    frequency = max(1, end_step // _MASK_UPDATES)
    return frequency * (end_step // frequency), frequency


def prune_model(model, x_train, y_train, sparsity: float, epochs: int = 2, batch_size: int = 32, seed: int = 0):
    """Magnitude-prune a tf_keras classifier to ``sparsity`` and fine-tune it on the train split.

    The recipe is TFMOT's pruning guide: ``tfmot.sparsity.keras.prune_low_magnitude`` on the
    whole model (the kernels of Conv/Dense layers are pruned, biases are not) with a
    ``PolynomialDecay`` schedule from 0 to ``sparsity`` (see :func:`pruning_schedule_steps`),
    fine-tuned with Adam (learning rate 1e-3) and sparse categorical cross-entropy
    (``from_logits`` is chosen by checking whether the outputs are probabilities), the
    ``UpdatePruningStep`` callback, then ``tfmot.sparsity.keras.strip_pruning``. The source
    model is cloned first and is not modified.

    Args:
        model: a Sequential or functional ``tf_keras.Model`` with one ``(N, C)`` class-score
            output (softmax probabilities or logits).
        x_train: float32 ``(N, ...)`` training inputs matching the model input, or a list of
            such arrays (same ``N``), one per input of a multi-input model, in model order.
        y_train: int ``(N,)`` class labels in ``[0, C)``.
        sparsity: target fraction of zero weights per pruned kernel, in ``[0, 1)``; 0 returns
            ``model`` itself unchanged.
        epochs: fine-tuning passes over the training split (>= 1).
        batch_size: examples per step (>= 1).
        seed: seeds Python, NumPy and TensorFlow (``tf_keras.utils.set_random_seed``), so the
            same inputs give the same pruned weights.

    Returns:
        A new, uncompiled ``tf_keras.Model`` with the same architecture and name whose kernels
        have ~``sparsity`` exact zeros (``model`` itself when ``sparsity == 0``).

    Raises:
        TFLiteError: the model is not a tf_keras model (e.g. Keras 3, a SavedModel or ``None``),
            cannot be cloned or pruned (subclassed model, unsupported layer), has no single
            class-score output; ``y_train`` is ``None`` or does not match ``x_train``;
            ``sparsity``, ``epochs`` or ``batch_size`` is out of range.
    """
    if not 0.0 <= sparsity < 1.0:
        raise TFLiteError(f"sparsity {sparsity} is outside [0, 1); use e.g. 0, 0.5 or 0.8")
    if sparsity == 0:
        return model
    inputs, y_train = _checked_training_set(model, x_train, y_train, _pruning(sparsity), epochs, batch_size)

    import tf_keras

    tfmot = _import_tfmot()
    tf_keras.utils.set_random_seed(seed)
    clone = _clone(model)
    end_step, frequency = pruning_schedule_steps(len(y_train), epochs, batch_size)
    schedule = tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=0.0, final_sparsity=float(sparsity), begin_step=0, end_step=end_step, frequency=frequency
    )
    try:
        pruned = tfmot.sparsity.keras.prune_low_magnitude(clone, pruning_schedule=schedule)
    except ValueError as error:
        raise TFLiteError(
            f"model {model.name!r} cannot be pruned: {_first_line(error)}; use sparsity=0"
        ) from None
    from_logits = not _outputs_probabilities(model, inputs)
    pruned.compile(
        optimizer=tf_keras.optimizers.Adam(1e-3),
        loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits),
        metrics=["accuracy"],
    )
    pruned.fit(
        inputs if len(inputs) > 1 else inputs[0],
        y_train,
        epochs=epochs,
        batch_size=batch_size,
        shuffle=True,
        verbose=0,
        callbacks=[tfmot.sparsity.keras.UpdatePruningStep()],
    )
    return tfmot.sparsity.keras.strip_pruning(pruned)


@dataclass(frozen=True)
class _FineTuning:
    """How the messages of :func:`_checked_training_set` name a fine-tuning and its way out."""

    verb: str  # "prune"
    what: str  # "pruning"
    setting: str  # "sparsity=0.5"
    instead: str  # "use sparsity=0"


def _pruning(sparsity: float) -> _FineTuning:
    return _FineTuning("prune", "pruning", f"sparsity={sparsity:g}", "use sparsity=0")


_QAT = _FineTuning("fine-tune with fake quantization", "quantization-aware training", "quant=qat_int8",
                   "use quant=int8 (post-training quantization)")


def _checked_training_set(model, x_train, y_train, purpose: _FineTuning, epochs: int, batch_size: int):
    """``(inputs, labels)`` to fine-tune ``model`` on (pruning or QAT), after checking everything.

    Raises:
        TFLiteError: see :func:`prune_model` and :func:`qat_model`.
    """
    if model is None or not _is_tf_keras_model(model):
        raise TFLiteError(
            f"cannot {purpose.verb} a {_type_name(model)}: {purpose.what} needs a tf_keras model "
            f"(.h5 or built with tf_keras); {purpose.instead}"
        )
    if y_train is None:
        raise TFLiteError(
            f"{purpose.setting} needs labels: {purpose.what} fine-tunes on y_train but the data has none; "
            f"add y_train or {purpose.instead}"
        )
    if epochs < 1 or batch_size < 1:
        raise TFLiteError(
            f"{purpose.what} needs epochs >= 1 and batch_size >= 1, got epochs={epochs}, batch_size={batch_size}"
        )
    inputs = _training_inputs(model, x_train, purpose.what)
    y_train = np.asarray(y_train)
    if len(inputs[0]) == 0 or len(inputs[0]) != len(y_train):
        raise TFLiteError(
            f"{purpose.what} needs as many labels as examples, got {len(inputs[0])} examples and {len(y_train)} "
            "labels"
        )
    outputs = model.outputs or []
    if len(outputs) != 1 or len(outputs[0].shape) != 2 or not (outputs[0].shape[-1] or 0) > 1:
        shapes = [tuple(o.shape) for o in outputs]
        raise TFLiteError(
            f"{purpose.what} fine-tunes a classifier but model {model.name!r} has outputs {shapes}, not one "
            f"(N, classes) output; {purpose.instead}"
        )
    return inputs, y_train


def _training_inputs(model, x_train, what: str = "pruning") -> list[np.ndarray]:
    """``x_train`` as one float32 array per model input, checked against the model's inputs.

    Raises:
        TFLiteError: a different number of arrays than model inputs, or arrays whose numbers of
            rows differ.
    """
    arrays = list(x_train) if isinstance(x_train, (list, tuple)) else [x_train]
    names = [tensor.name.split(":")[0] for tensor in model.inputs]
    if len(arrays) != len(names):
        raise TFLiteError(
            f"{what} of model {model.name!r} needs one training array per input {names} but got {len(arrays)}; "
            "give x_train_0 ... in the data, one per input"
        )
    arrays = [np.asarray(x, dtype=np.float32) for x in arrays]
    rows = sorted({len(x) for x in arrays})
    if len(rows) != 1:
        raise TFLiteError(f"{what} needs the same number of examples for every input {names}, got {rows}")
    return arrays


# --------------------------------------------------------------------------------------------
# Quantization-aware training
# --------------------------------------------------------------------------------------------


def qat_params(options: QatOptions) -> dict[str, float]:
    """Run params of a ``qat_int8`` variant: ``{"qat_epochs": int, "qat_learning_rate": float}``."""
    return {"qat_epochs": options.qat_epochs, "qat_learning_rate": options.qat_learning_rate}


def qat_model(model, x_train, y_train, options: QatOptions = QatOptions(), sparsity: float = 0.0, seed: int = 0,
              batch_size: int = 32):
    """Quantization-aware training of a tf_keras classifier: fake quantization, then a short fine-tune.

    The recipes are TFMOT's quantization-aware training guide
    (https://www.tensorflow.org/model_optimization/guide/quantization/training_example) and,
    for a pruned model, its pruning-preserving QAT guide
    (https://www.tensorflow.org/model_optimization/guide/combine/pqat_example):

    - every layer TFMOT's default 8-bit scheme supports is annotated (all of them for a plain
      CNN, which is then exactly ``quantize_model``; layers it does not support, such as
      LayerNormalization, stay float through training, see :func:`_annotate_supported_layers`),
      then ``quantize_apply``;
    - ``sparsity > 0`` (``model`` already pruned and stripped by :func:`prune_model`):
      ``quantize_apply`` with ``tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme()``,
      which keeps the zero weights at zero during the fine-tune, so the sparsity survives into the .tflite.

    Then ``options.qat_epochs`` epochs of Adam (``options.qat_learning_rate``) with sparse
    categorical cross-entropy, ``from_logits`` chosen as :func:`prune_model` does. TFMOT clones
    the model; ``model`` itself is not modified. Convert the result with the ``qat_int8`` recipe
    (optimizations, representative dataset, ``TFLITE_BUILTINS_INT8``): the converter takes the
    learnt ranges from the fake-quantization nodes.

    Args:
        model: a Sequential or functional ``tf_keras.Model`` with one ``(N, C)`` class-score
            output (softmax probabilities or logits), pruned when ``sparsity > 0``.
        x_train: float32 ``(N, ...)`` training inputs matching the model input, or a list of
            such arrays (same ``N``), one per input, in model order.
        y_train: int ``(N,)`` class labels in ``[0, C)``.
        options: :class:`QatOptions` (epochs >= 1, learning rate > 0).
        sparsity: the pruning target ``model`` was pruned to, in ``[0, 1)``; > 0 selects PQAT.
        seed: seeds Python, NumPy and TensorFlow (``tf_keras.utils.set_random_seed``), so the
            same inputs give the same weights and ranges.
        batch_size: examples per step (>= 1).

    Returns:
        A new, uncompiled ``tf_keras.Model`` whose layers are TFMOT quantize wrappers (save it as
        .h5 and load it under ``tfmot.quantization.keras.quantize_scope()``).

    Raises:
        TFLiteError (one line): the model is not a tf_keras model (a SavedModel, Keras 3 model,
            frozen graph or ``None``); ``y_train`` is ``None`` or does not match ``x_train``; no
            single class-score output; ``sparsity`` out of range; TFMOT cannot quantize a layer
            (its first line is kept) -- the message says to use ``quant=int8`` instead.
    """
    if not 0.0 <= sparsity < 1.0:
        raise TFLiteError(f"sparsity {sparsity} is outside [0, 1); use e.g. 0, 0.5 or 0.8")
    inputs, y_train = _checked_training_set(model, x_train, y_train, _QAT, options.qat_epochs, batch_size)

    import tf_keras

    tfmot = _import_tfmot()
    tf_keras.utils.set_random_seed(seed)
    quantization = tfmot.quantization.keras
    try:
        annotated = _annotate_supported_layers(model, tfmot)
        scheme = tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme() if sparsity > 0 else None
        trained = quantization.quantize_apply(annotated, scheme) if scheme else quantization.quantize_apply(annotated)
    except (ValueError, RuntimeError, TypeError) as error:
        raise TFLiteError(
            f"model {model.name!r} cannot be quantization-aware trained: {_first_line(error, 300).split('. ')[0]}; "
            f"{_QAT.instead}"
        ) from None
    from_logits = not _outputs_probabilities(model, inputs)
    trained.compile(
        optimizer=tf_keras.optimizers.Adam(options.qat_learning_rate),
        loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits),
        metrics=["accuracy"],
    )
    trained.fit(
        inputs if len(inputs) > 1 else inputs[0],
        y_train,
        epochs=options.qat_epochs,
        batch_size=batch_size,
        shuffle=True,
        verbose=0,
    )
    return trained


def _annotate_supported_layers(model, tfmot):
    """``model`` with every layer TFMOT's default 8-bit scheme supports annotated for QAT.

    TFMOT's guide for models it only partly supports: annotate the layers it can quantize
    (``quantize_annotate_layer`` through ``clone_model``) and leave the rest (LayerNormalization,
    MultiHeadAttention, ...) unannotated; they train in float and the converter quantizes them
    after training from the representative dataset. The original layer objects are wrapped, so
    the weights are kept.

    Raises:
        ValueError: no layer is supported (nothing to train with fake quantization).
    """
    import tf_keras
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_registry,
    )

    registry = default_8bit_quantize_registry.Default8BitQuantizeRegistry()
    annotate = tfmot.quantization.keras.quantize_annotate_layer
    supported = [layer for layer in model.layers if registry.supports(layer)]
    if not any(layer.weights for layer in supported):
        raise ValueError(f"none of the layers with weights of model {model.name!r} is supported by TFMOT's 8-bit "
                         "quantization-aware training")
    return tf_keras.models.clone_model(
        model, clone_function=lambda layer: annotate(layer) if registry.supports(layer) else layer)


def load_qat_model(path):
    """A :func:`qat_model` result saved as .h5, loaded under TFMOT's ``quantize_scope`` (uncompiled)."""
    import tf_keras

    tfmot = _import_tfmot()
    with tfmot.quantization.keras.quantize_scope():
        return tf_keras.models.load_model(path, compile=False)


# --------------------------------------------------------------------------------------------
# Input size
# --------------------------------------------------------------------------------------------


def _resize_error(input_size, why: str) -> TFLiteError:
    return TFLiteError(f"cannot build the model at input_size={input_size}: {why}; drop input_size")


def resize_model(model, input_size: int):
    """The same tf_keras image model at another square input size, sharing no state with ``model``.

    The model is rebuilt from its config (``get_config`` / ``from_config``) with the input
    shape ``(None, input_size, input_size, C)`` (channels-last, C unchanged) and given the
    source's weights with ``set_weights``. That works when no weight shape depends on the
    spatial size, e.g. convolutions followed by global pooling; a ``Flatten`` + ``Dense`` head
    does not.

    Args:
        model: a Sequential or functional ``tf_keras.Model`` with one 4-D ``(N, H, W, C)`` input.
        input_size: new height and width in pixels (> 0).

    Returns:
        A new ``tf_keras.Model`` with input shape ``(None, input_size, input_size, C)``, the
        same layers, name and weights, uncompiled; ``model`` itself when its input is already
        ``input_size`` x ``input_size``.

    Raises:
        TFLiteError: ``input_size`` is not a positive integer; the model is not a tf_keras
            model, is subclassed, has no single 4-D image input; or the model cannot be built
            at that size (a weight shape would change, or a layer rejects the size).
    """
    if isinstance(input_size, bool) or not isinstance(input_size, (int, np.integer)) or input_size <= 0:
        raise TFLiteError(f"input_size {input_size!r} must be a positive number of pixels, e.g. 96")
    input_size = int(input_size)
    if model is None or not _is_tf_keras_model(model):
        raise _resize_error(
            input_size, f"resizing needs a tf_keras model (.h5 or built with tf_keras), got a {_type_name(model)}"
        )
    inputs = model.inputs or []
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        shapes = [tuple(t.shape) for t in inputs]
        raise _resize_error(
            input_size, f"model {model.name!r} has inputs {shapes}, not one 4-D (N, H, W, C) image input"
        )
    _, height, width, channels = tuple(inputs[0].shape)
    if height == input_size and width == input_size:
        return model

    import tf_keras

    try:
        config = model.get_config()
    except NotImplementedError:
        raise _resize_error(
            input_size, f"model {model.name!r} is subclassed and has no config to rebuild it from"
        ) from None
    new_shape = [None, input_size, input_size, channels]
    replaced = _set_input_shapes(config, new_shape)
    if not replaced:
        raise _resize_error(input_size, f"the config of model {model.name!r} names no input shape to change")
    custom_objects = {}
    for layer in _all_layers(model):
        custom_objects[type(layer).__name__] = type(layer)
        custom_objects[tf_keras.utils.get_registered_name(type(layer))] = type(layer)
    try:
        with tf_keras.utils.custom_object_scope(custom_objects):
            resized = type(model).from_config(config)
    except Exception as error:
        raise _resize_error(input_size, f"a layer rejects that size ({_first_line(error)})") from None
    for old, new in zip(model.weights, resized.weights):
        if tuple(old.shape) != tuple(new.shape):
            raise _resize_error(
                input_size,
                f"weight {old.name!r} would change shape from {tuple(old.shape)} to {tuple(new.shape)} "
                "(a layer such as Flatten + Dense fixes the input size)",
            )
    if len(model.weights) != len(resized.weights):
        raise _resize_error(input_size, "the rebuilt model has a different number of weights")
    resized.set_weights(model.get_weights())
    return resized


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


def _set_input_shapes(config: dict, new_shape: list) -> int:
    """Replace ``batch_input_shape`` of 4-D inputs in a Sequential or functional config, in place."""
    replaced = 0
    for layer in config.get("layers", []):
        layer.pop("build_config", None)  # built for the old input shape; rebuild at the new one
        layer_config = layer.get("config", {})
        shape = layer_config.get("batch_input_shape")
        if shape is not None and len(shape) == 4:
            layer_config["batch_input_shape"] = list(new_shape)
            replaced += 1
    if "build_input_shape" in config and config["build_input_shape"] is not None:
        if len(config["build_input_shape"]) == 4:
            config["build_input_shape"] = list(new_shape)
    return replaced

