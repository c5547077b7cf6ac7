"""A tf_keras image model rebuilt at another square input size (``input_size`` variants)."""

from __future__ import annotations


import numpy as np

from mlflow_tflite.build.finetune import is_tf_keras_model, keras_error_line, type_name
from mlflow_tflite.errors import TFLiteError


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
    if model is None or not is_tf_keras_model(model):
        raise _resize_error(
            input_size, f"resizing needs a tf_keras model (.h5 or built with tf_keras), got a {type_name(model)}"
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
        raise _resize_error(input_size, f"a layer rejects that size ({keras_error_line(error)})") from None
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
