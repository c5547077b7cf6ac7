"""Quantization-aware training (``quant=qat_int8``) of a tf_keras classifier with TFMOT."""

from __future__ import annotations

from dataclasses import dataclass

from mlflow_tflite.errors import TFLiteError
from mlflow_tflite.checks import check_number
from mlflow_tflite.options import number, option
from mlflow_tflite.build.finetune import (
    FineTuning, checked_training_set, import_tfmot, keras_error_line, outputs_probabilities,
)


@dataclass(frozen=True)
class QatOptions:
    """Fine-tuning of quantization-aware training (``quant=qat_int8``).

    Attributes:
        qat_epochs: epochs of fine-tuning with fake quantization (>= 1).
        qat_learning_rate: Adam learning rate of that fine-tuning (> 0).

    Raises:
        TFLiteError: a value out of range or not finite, or epochs not a whole number.
    """

    qat_epochs: int = option(2, "qat_int8: fine-tuning epochs.", number(int, 1, optional=True, example=2))
    qat_learning_rate: float = option(1e-4, "qat_int8: Adam learning rate of the fine-tuning.",
                                      number(float, 0, low_open=True, optional=True, example=0.0001))

    def __post_init__(self):
        object.__setattr__(self, "qat_epochs", check_number(self.qat_epochs, "qat_epochs", int, 1, example=2))
        object.__setattr__(self, "qat_learning_rate", check_number(
            self.qat_learning_rate, "qat_learning_rate", float, 0, low_open=True, example=0.0001))


QAT_PURPOSE = FineTuning("fine-tune with fake quantization", "quantization-aware training", "quant=qat_int8",
                   "use quant=int8 (post-training quantization)")



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
    inputs, y_train = checked_training_set(model, x_train, y_train, QAT_PURPOSE, options.qat_epochs, batch_size)

    import tf_keras

    tfmot = import_tfmot()
    tf_keras.utils.set_random_seed(seed)
    quantization = tfmot.quantization.keras
    try:
        annotated = _annotate_supported_layers(model, tfmot)
        scheme = tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme() if sparsity > 0 else None
        trained = quantization.quantize_apply(annotated, scheme) if scheme else quantization.quantize_apply(annotated)
    except (ValueError, RuntimeError, TypeError) as error:
        raise TFLiteError(
            f"model {model.name!r} cannot be quantization-aware trained: {keras_error_line(error, 300).split('. ')[0]}; "
            f"{QAT_PURPOSE.instead}"
        ) from None
    from_logits = not outputs_probabilities(model, inputs)
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

    tfmot = import_tfmot()
    with tfmot.quantization.keras.quantize_scope():
        return tf_keras.models.load_model(path, compile=False)
