"""What pruning and quantization-aware training share: TFMOT imported without flipping the
global Keras mode, tf_keras checks and clones, the checked training set, Keras error lines.

TFMOT works only with tf_keras (Keras 2), so ``tf_keras`` is imported explicitly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from mlflow_tflite.errors import TFLiteError, first_line


def import_tfmot():
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


def is_tf_keras_model(model) -> bool:
    import tf_keras

    return isinstance(model, tf_keras.Model)


def type_name(model) -> str:
    if model is None:
        return "None (no Keras model: a SavedModel or Keras 3 source has no tf_keras model)"
    cls = type(model)
    return cls.__name__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def clone_model(model):
    """A functional/Sequential copy of a tf_keras ``model`` with the same weights (not shared)."""
    import tf_keras

    try:
        clone = tf_keras.models.clone_model(model)
    except Exception as error:  # subclassed models cannot be cloned
        reason = keras_error_line(error)
        raise TFLiteError(
            f"model {model.name!r} ({type_name(model)}) cannot be cloned for pruning ({reason}); "
            "pruning needs a Sequential or functional tf_keras model; use sparsity=0"
        ) from None
    clone.set_weights(model.get_weights())
    return clone


def keras_error_line(error: Exception, limit: int = 200) -> str:
    """The informative first line of an error; Keras's "Exception encountered when calling
    layer X" preamble is folded into the line that says what went wrong."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = first_line(error)
    if reason.startswith("Exception encountered when calling layer") and len(lines) > 1:
        layer = reason.removeprefix("Exception encountered when calling ").rstrip(".")
        reason = f"{layer}: {lines[1]}"
    return reason.split(" for '{{node")[0][:limit]  # drop TensorFlow's graph-node dump


def outputs_probabilities(model, inputs: list[np.ndarray]) -> bool:
    """True when the model's outputs on ``inputs`` look like softmax probabilities (rows sum to 1)."""
    first = [x[:32] for x in inputs]
    scores = np.asarray(model(first if len(first) > 1 else first[0], training=False))
    return bool(np.all(scores >= 0.0) and np.all(scores <= 1.0) and np.allclose(scores.sum(axis=1), 1.0, atol=1e-3))


@dataclass(frozen=True)
class FineTuning:
    """How the messages of :func:`checked_training_set` name a fine-tuning and its way out."""

    verb: str  # "prune"
    what: str  # "pruning"
    setting: str  # "sparsity=0.5"
    instead: str  # "use sparsity=0"


def pruning_purpose(sparsity: float) -> FineTuning:
    return FineTuning("prune", "pruning", f"sparsity={sparsity:g}", "use sparsity=0")



def checked_training_set(model, x_train, y_train, purpose: FineTuning, epochs: int, batch_size: int):
    """``(inputs, labels)`` to fine-tune ``model`` on (pruning or QAT), after checking everything.

    Raises:
        TFLiteError: see :func:`prune_model` and :func:`qat_model`.
    """
    if model is None or not is_tf_keras_model(model):
        raise TFLiteError(
            f"cannot {purpose.verb} a {type_name(model)}: {purpose.what} needs a tf_keras model "
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
    inputs = training_inputs(model, x_train, purpose.what)
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


def training_inputs(model, x_train, what: str = "pruning") -> list[np.ndarray]:
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
