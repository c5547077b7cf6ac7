"""Magnitude pruning (``sparsity`` > 0) of a tf_keras model.

TensorFlow Model Optimization's pruning guide
(https://www.tensorflow.org/model_optimization/guide/pruning/pruning_with_keras):
``prune_low_magnitude`` with a ``PolynomialDecay`` schedule, fine-tuning with the
``UpdatePruningStep`` callback, then ``strip_pruning``. The achieved sparsity is measured on the
converted flatbuffer (``measure.inspect``).
"""

from __future__ import annotations

import math

from mlflow_tflite.errors import TFLiteError
from mlflow_tflite.build.finetune import (
    FineTuning, checked_training_set, clone_model, import_tfmot, keras_error_line, outputs_probabilities,
)

# Fraction of the fine-tuning steps over which sparsity ramps up to the target; the rest of
# the steps fine-tune with the final mask fixed (the guide's recipe of pruning, then recovering).
_RAMP_FRACTION = 0.7
# Number of mask updates along the ramp (PolynomialDecay's ``frequency`` is derived from it).
_MASK_UPDATES = 10


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
    inputs, y_train = checked_training_set(model, x_train, y_train, pruning_purpose(sparsity), epochs, batch_size)

    import tf_keras

    tfmot = import_tfmot()
    tf_keras.utils.set_random_seed(seed)
    clone = clone_model(model)
    end_step, frequency = pruning_schedule_steps(len(y_train), epochs, batch_size)
    schedule = tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=0.0, final_sparsity=float(sparsity), begin_step=0, end_step=end_step, frequency=frequency
    )
    try:
        pruned = tfmot.sparsity.keras.prune_low_magnitude(clone, pruning_schedule=schedule)
    except ValueError as error:
        raise TFLiteError(
            f"model {model.name!r} cannot be pruned: {keras_error_line(error)}; use sparsity=0"
        ) from None
    from_logits = not outputs_probabilities(model, inputs)
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


def pruning_purpose(sparsity: float) -> FineTuning:
    return FineTuning("prune", "pruning", f"sparsity={sparsity:g}", "use sparsity=0")
