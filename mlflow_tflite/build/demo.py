"""The built-in demo model: a small CNN trained on scikit-learn's digits with a fixed seed."""

from __future__ import annotations

import hashlib
import inspect
import os

from tqdm.auto import tqdm

from mlflow_tflite.build.data import Dataset
from mlflow_tflite.cache import cache_dir
from mlflow_tflite.quiet import quiet_h5_save

DEMO_MODEL_NAME = "digits-cnn"


def build_digits_cnn(input_shape: tuple[int, int, int] = (8, 8, 1), num_classes: int = 10):
    """A tf_keras CNN for small grey images; global average pooling keeps it size-agnostic.

    Returns:
        An uncompiled ``tf_keras.Model`` mapping ``(N, H, W, C)`` float32 in [0, 1] to
        ``(N, num_classes)`` softmax probabilities.
    """
    import tf_keras as keras

    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input(shape=input_shape, name="image"),
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(2),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.GlobalAveragePooling2D(),
            layers.Dense(num_classes, activation="softmax", name="probabilities"),
        ],
        name=DEMO_MODEL_NAME,
    )


def train_digits_cnn(dataset: Dataset, epochs: int = 40, seed: int = 0):
    """Train :func:`build_digits_cnn` on the train split (Adam, cross-entropy, batch 32).

    Args:
        dataset: the digits data set (``load_digits_dataset``).
        epochs: passes over the 1,347 training images; 40 take ~15 s on 2 CPU cores.
        seed: seeds Python, NumPy and TensorFlow (``tf_keras.utils.set_random_seed``).

    Returns:
        The trained ``tf_keras.Model``.
    """
    import tf_keras as keras

    keras.utils.set_random_seed(seed)
    model = build_digits_cnn(dataset.x_train.shape[1:], int(dataset.y_train.max()) + 1)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    with tqdm(total=epochs, desc="training the demo CNN (once, then cached)", unit="epoch", leave=False) as bar:
        model.fit(dataset.x_train, dataset.y_train, epochs=epochs, batch_size=32, shuffle=True, verbose=0,
                  callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: bar.update(1))])
    return model


def _cache_key(dataset: Dataset, epochs: int, seed: int) -> str:
    """Hash of everything that determines the trained weights: data, recipe, seed, library versions."""
    import tf_keras

    digest = hashlib.sha256()
    for part in (dataset.x_train.tobytes(), dataset.y_train.tobytes(), inspect.getsource(build_digits_cnn),
                 inspect.getsource(train_digits_cnn), str((epochs, seed, tf_keras.__version__))):
        digest.update(part if isinstance(part, bytes) else part.encode())
    return digest.hexdigest()[:16]


def load_or_train_digits_cnn(dataset: Dataset, epochs: int = 40, seed: int = 0):
    """The demo CNN: loaded from the cache when this exact recipe was trained before, else trained.

    The cache file (``digits-cnn-<hash>.h5``) is keyed by the training data, the model and
    training code, the seed and the tf_keras version, so a cached model is the one
    :func:`train_digits_cnn` would produce. A run, a sweep and each sweep worker then share one
    model, and repeated runs skip the ~20 s of training. Delete the folder to retrain.

    Returns:
        The trained ``tf_keras.Model``.
    """
    import tf_keras

    path = cache_dir() / f"{DEMO_MODEL_NAME}-{_cache_key(dataset, epochs, seed)}.h5"
    if path.exists():
        try:
            return tf_keras.models.load_model(path, compile=False)
        except (OSError, ValueError):  # a partly written or corrupt file: train again
            pass
    model = train_digits_cnn(dataset, epochs, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp.h5")
    with quiet_h5_save():
        model.save(partial)
    partial.replace(path)  # atomic: concurrent runs never read half a file
    return model
