"""A recurrent model for the mixed-precision tests: an LSTM encoder over Fashion-MNIST row spectra.

Each image (Debian's ``dataset-fashion-mnist``, read by the Fashion-MNIST example's loader) becomes
a sequence of 28 time steps, one per pixel row; a step's 15 features are the power spectrum of
that row (``|rfft(row)|^2 / 28``). Like an audio spectrogram, the inputs have a wide dynamic
range: 0 to about 26, median about 0.01 (the DC bin is large, the high frequencies small).

The model is a tf_keras ``LSTM(unroll=True)`` trained as a 10-class classifier; the saved model is
its encoder, ``(N, 28, 15) -> (N, 32)`` embeddings, for the fidelity task. ``unroll=True`` makes
TFLiteConverter emit the recurrence as per-step ops (FULLY_CONNECTED, ADD, LOGISTIC, TANH, MUL,
SPLIT for each of the 28 steps: about 400 ops), as litert-torch does with ``nn.LSTM``, instead of
one fused ``UNIDIRECTIONAL_SEQUENCE_LSTM``. A tf_keras source works with both backends
(``converter`` and ``litert``), which a PyTorch source does not.

Training and saving take 5 to 16 s on 2 shared cores (3,000 training rows, 5 epochs); TensorFlow must
already be importable (the test process has it loaded).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
PREPARE = Path(__file__).resolve().parents[1] / "examples" / "fashion_mnist" / "prepare.py"
STEPS, BINS = 28, 15  # rows of an image; rfft bins of a 28-pixel row


@dataclass(frozen=True)
class RecurrentSpec:
    """How the encoder is built and trained.

    Attributes:
        units: LSTM state size.
        embedding: output size of the encoder (a Dense after the last LSTM state).
        n_train, n_test: Fashion-MNIST rows drawn (fixed seed) from the official splits.
        epochs: training epochs (Adam, batch 64).
        seed: seed of the draw and of tf_keras.
    """

    units: int = 64
    embedding: int = 32
    n_train: int = 3000
    n_test: int = 300
    epochs: int = 5
    seed: int = 0


def row_power_spectra(images: np.ndarray) -> np.ndarray:
    """Images ``(N, 28, 28[, 1])`` float in [0, 1] -> ``(N, 28, 15)`` float32: per row, ``|rfft|^2 / 28``."""
    rows = images.reshape(len(images), STEPS, STEPS)
    return (np.abs(np.fft.rfft(rows, axis=-1)) ** 2 / STEPS).astype(np.float32)


def fashion_spectra(spec: RecurrentSpec) -> dict[str, np.ndarray]:
    """Fashion-MNIST subsets as row spectra: ``x_train``/``x_test`` (N, 28, 15) float32, ``y_*`` int64.

    Raises:
        SystemExit: the Debian package ``dataset-fashion-mnist`` is not installed (the example's message).
    """
    loader = importlib.util.spec_from_file_location("fashion_mnist_prepare", PREPARE)
    prepare = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(prepare)
    arrays = prepare.load_fashion_mnist(FASHION_DIR, spec.n_train, spec.n_test, spec.seed)
    return {"x_train": row_power_spectra(arrays["x_train"]), "y_train": arrays["y_train"],
            "x_test": row_power_spectra(arrays["x_test"]), "y_test": arrays["y_test"]}


def train_encoder(arrays: dict[str, np.ndarray], spec: RecurrentSpec):
    """The trained encoder (a tf_keras ``Model`` named ``rnn-encoder``) and the classifier's test accuracy.

    Args:
        arrays: as :func:`fashion_spectra`.
        spec: :class:`RecurrentSpec`.

    Returns:
        ``(encoder, accuracy)``: ``(N, 28, 15) -> (N, embedding)`` float32; accuracy in [0, 1].
    """
    import tf_keras as keras

    keras.utils.set_random_seed(spec.seed)
    inputs = keras.Input((STEPS, BINS), name="spectra")
    state = keras.layers.LSTM(spec.units, unroll=True, name="lstm")(inputs)
    embedding = keras.layers.Dense(spec.embedding, name="embedding")(state)
    classes = keras.layers.Dense(10, activation="softmax", name="classes")(embedding)
    classifier = keras.Model(inputs, classes, name="rnn-classifier")
    classifier.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    classifier.fit(arrays["x_train"], arrays["y_train"], epochs=spec.epochs, batch_size=64, verbose=0)
    _, accuracy = classifier.evaluate(arrays["x_test"], arrays["y_test"], verbose=0)
    return keras.Model(inputs, embedding, name="rnn-encoder"), float(accuracy)


def save_encoder(folder: Path, spec: RecurrentSpec = RecurrentSpec()) -> tuple[Path, Path, float]:
    """Train the encoder and write ``rnn-encoder.h5`` and ``spectra.npz`` (inputs only: a fidelity task).

    Returns:
        ``(model path, data path, classifier test accuracy)``.
    """
    arrays = fashion_spectra(spec)
    encoder, accuracy = train_encoder(arrays, spec)
    encoder.save(folder / "rnn-encoder.h5")
    np.savez(folder / "spectra.npz", x_train=arrays["x_train"], x_test=arrays["x_test"])
    return folder / "rnn-encoder.h5", folder / "spectra.npz", accuracy
