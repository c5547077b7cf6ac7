"""Data: the built-in digits data set, .npz files, validation and calibration sampling."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlflow_tflite.errors import TFLiteError

DIGITS_SOURCE = "sklearn.datasets.load_digits"


@dataclass
class Dataset:
    """Arrays for calibration (train split) and evaluation (test split).

    Attributes:
        name: short name used for MLflow dataset inputs, e.g. ``"digits"``.
        source: where the data came from (a path, or ``sklearn.datasets.load_digits``).
        x_train: float32 ``(N_train, *input_shape)``; the representative dataset is drawn from it.
        x_test: float32 ``(N_test, *input_shape)``; held out for evaluation.
        y_train, y_test: int64 class labels ``(N,)``, or ``None`` for fidelity-only data.
    """

    name: str
    source: str
    x_train: np.ndarray
    x_test: np.ndarray
    y_train: np.ndarray | None = None
    y_test: np.ndarray | None = None

    @property
    def labelled(self) -> bool:
        """True when the test split has labels (accuracy metrics can be computed)."""
        return self.y_test is not None


def load_digits_dataset(test_fraction: float = 0.25, seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), stratified split.

    Pixel values 0..16 are scaled to [0, 1]; images are ``(N, 8, 8, 1)`` float32.

    Args:
        test_fraction: fraction of images held out for evaluation (0.25 -> 450 test images).
        seed: seed of the stratified split (``sklearn.model_selection.train_test_split``).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., np.newaxis]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, stratify=y, random_state=seed
    )
    return Dataset("digits", DIGITS_SOURCE, x_train, x_test, y_train, y_test)


def load_npz(path: str | Path, test_fraction: float = 0.25, seed: int = 0) -> Dataset:
    """A .npz file with ``x_train``, ``y_train``, ``x_test``, ``y_test``, or ``x`` and ``y`` to split.

    ``y`` arrays are optional (fidelity-only data). Features are cast to float32, labels to int64.

    Raises:
        TFLiteError: the file is missing or lacks the required keys.
    """
    path = Path(path)
    if not path.is_file():
        raise TFLiteError(f"data file {str(path)!r} does not exist; pass a .npz file or omit data for the digits demo")
    with np.load(path, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    if {"x_train", "x_test"} <= arrays.keys():
        parts = [arrays["x_train"], arrays["x_test"], arrays.get("y_train"), arrays.get("y_test")]
    elif "x" in arrays:
        parts = _split(arrays["x"], arrays.get("y"), test_fraction, seed)
    else:
        raise TFLiteError(
            f"data file {str(path)!r} has keys {sorted(arrays)}; it needs x_train, x_test "
            "(and y_train, y_test for labels) or x (and y) to split"
        )
    x_train, x_test, y_train, y_test = parts
    as_labels = lambda y: None if y is None else np.asarray(y).astype(np.int64)  # noqa: E731
    return Dataset(
        path.stem,
        str(path.resolve()),
        np.asarray(x_train, dtype=np.float32),
        np.asarray(x_test, dtype=np.float32),
        as_labels(y_train),
        as_labels(y_test),
    )


def _split(x, y, test_fraction: float, seed: int):
    from sklearn.model_selection import train_test_split

    if y is None:
        x_train, x_test = train_test_split(x, test_size=test_fraction, random_state=seed)
        return x_train, x_test, None, None
    return train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)


def load_dataset(data: str | None) -> Dataset:
    """The data set named by the ``data`` parameter: empty or ``digits`` -> scikit-learn digits, else a .npz file."""
    if not data or data == "digits":
        return load_digits_dataset()
    if Path(data).suffix != ".npz":
        raise TFLiteError(f"data {data!r} is not a .npz file; pass a .npz with x_train/x_test arrays")
    return load_npz(data)


def validate_dataset(dataset: Dataset, input_shape: tuple[int, ...], num_classes: int | None) -> None:
    """Check data against the model before any conversion.

    Args:
        dataset: the data.
        input_shape: model input shape with batch first (``-1``/``None`` for dynamic dims).
        num_classes: size of the model's class-score output, or ``None`` if it is not one.

    Raises:
        TFLiteError: NaN or inf values, a shape that does not match the model input, empty
            splits, or labels outside ``[0, num_classes)``.
    """
    for split, x in (("x_train", dataset.x_train), ("x_test", dataset.x_test)):
        if len(x) == 0:
            raise TFLiteError(f"{split} of {dataset.source!r} is empty; provide at least one example")
        if not np.isfinite(x).all():
            bad = int((~np.isfinite(x)).sum())
            raise TFLiteError(f"{split} of {dataset.source!r} has {bad} NaN or inf values; clean or impute them")
        expected = tuple(input_shape[1:])
        if x.shape[1:] != expected and not _matches(x.shape[1:], expected):
            raise TFLiteError(
                f"{split} of {dataset.source!r} has example shape {x.shape[1:]} but the model expects "
                f"{expected}; reshape or resize the data"
            )
    if num_classes is None:
        return
    for split, y in (("y_train", dataset.y_train), ("y_test", dataset.y_test)):
        if y is not None and len(y) and (y.min() < 0 or y.max() >= num_classes):
            raise TFLiteError(
                f"{split} of {dataset.source!r} has labels in [{y.min()}, {y.max()}] but the model has "
                f"{num_classes} classes; labels must be integers in [0, {num_classes - 1}]"
            )


def _matches(shape: tuple[int, ...], expected: tuple) -> bool:
    return len(shape) == len(expected) and all(e in (None, -1) or e == s for s, e in zip(shape, expected))


def calibration_sample(x_train: np.ndarray, samples: int, seed: int = 0) -> np.ndarray:
    """The representative dataset: ``samples`` rows of the train split drawn without replacement.

    Args:
        x_train: ``(N, ...)`` float32.
        samples: how many rows (capped at N; must be > 0).
        seed: seed of the draw (``numpy.random.default_rng``).

    Returns:
        ``(min(samples, N), ...)`` float32.

    Raises:
        TFLiteError: ``samples`` <= 0.
    """
    if samples <= 0:
        raise TFLiteError(f"calibration_samples={samples} must be > 0; 100-500 is typical (default 200)")
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(x_train), size=min(samples, len(x_train)), replace=False)
    return x_train[np.sort(rows)]
