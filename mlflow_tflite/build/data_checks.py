"""Checks of data against itself and the model, before any run is opened: label arrays, shapes,
NaN and inf, label range, and whether images resized to an input size fit in memory.

``data.py`` reads the data; these functions take its arrays (or a ``data.Dataset``) and raise
one-line ``TFLiteError`` messages that name the split, the file and what to do.
"""

from __future__ import annotations

import math
import os

import numpy as np

from mlflow_tflite.errors import TFLiteError

FLOAT32_BYTES = 4


def class_labels(y, split: str, source: str) -> np.ndarray | None:
    """``y`` as int64 class indices ``(N,)``, after checking they are whole numbers.

    Args:
        y: an array-like of labels, or ``None`` (no labels).
        split: ``y_train`` or ``y_test``, for the message.
        source: where the data came from, for the message.

    Returns:
        int64 ``(N,)``, or ``None``.

    Raises:
        TFLiteError: labels that are not one number per example (e.g. one-hot), not numbers,
            NaN or inf, or not whole (``0.5``).
    """
    if y is None:
        return None
    y = np.asarray(y)
    if y.ndim != 1:
        raise TFLiteError(f"{split} of {source!r} has shape {y.shape}; labels are one class index per example, "
                          f"shape (N,) (for one-hot labels save y.argmax(axis=1))")
    if y.dtype.kind not in "biuf":
        raise TFLiteError(f"{split} of {source!r} holds {y.dtype} values; labels are class indices 0, 1, 2, ... "
                          "(map class names to their index)")
    if y.dtype.kind == "f":
        bad = ~np.isfinite(y) | (np.isfinite(y) & (y != np.round(y)))
        if bad.any():
            raise TFLiteError(
                f"{split} of {source!r} has labels that are not whole numbers (e.g. {y[bad][0]:g} at index "
                f"{int(np.argmax(bad))}); labels are class indices 0, 1, 2, ... (for regression targets leave "
                "y_train and y_test out: fidelity only)")
    return y.astype(np.int64)


def validate_dataset(dataset, input_shapes: list[tuple[int, ...]], num_classes: int | None,
                     label_hint: str = "") -> None:
    """Check data against the model before any conversion.

    Args:
        dataset: the ``data.Dataset``.
        input_shapes: one model input shape per input, batch first (``-1`` for dynamic dims).
        num_classes: size of the model's class-score output the labels index, or ``None`` if
            there is none (the labels' range is then not checked).
        label_hint: appended to a label-range message (e.g. when the task was guessed).

    Raises:
        TFLiteError: a wrong number of inputs, NaN or inf values, a shape (or channel count)
            that does not match the model input, empty splits, inputs or labels of another
            length than their split, labels that are not whole numbers, or labels outside
            ``[0, num_classes)``.
    """
    for split, inputs, y in (("x_train", dataset.train_inputs, dataset.y_train),
                             ("x_test", dataset.test_inputs, dataset.y_test)):
        if len(inputs) != len(input_shapes):
            raise TFLiteError(
                f"{split} of {dataset.source!r} has {len(inputs)} input array(s) but the model takes "
                f"{len(input_shapes)}; give {split}_0 ... {split}_{len(input_shapes) - 1}"
            )
        for x, shape in zip(inputs, input_shapes):
            _validate_array(dataset.source, split, x, tuple(shape[1:]))
        _check_lengths(dataset.source, split, inputs, y)
    if num_classes is None:
        return
    for split, y in (("y_train", dataset.y_train), ("y_test", dataset.y_test)):
        if y is not None and len(y) and (y.min() < 0 or y.max() >= num_classes):
            raise TFLiteError(
                f"{split} of {dataset.source!r} has labels in [{y.min()}, {y.max()}] but the model has "
                f"{num_classes} classes; labels must be integers in [0, {num_classes - 1}]{label_hint}"
            )


def _check_lengths(source: str, split: str, inputs: list[np.ndarray], y) -> None:
    """Every input array and the labels of a split have one row per example."""
    count = len(inputs[0])
    for position, x in enumerate(inputs[1:], start=1):
        if len(x) != count:
            raise TFLiteError(f"{split}_{position} of {source!r} has {len(x)} examples but {split}_0 has {count}; "
                              "give every input the same examples")
    if y is None:
        return
    labels = "y" + split[1:]
    class_labels(y, labels, source)  # whole numbers (a Dataset built in Python skipped data.py's loaders)
    if len(y) != count:
        raise TFLiteError(f"{labels} of {source!r} has {len(y)} labels but {split} has {count} examples; give one "
                          "label per example")


def _validate_array(source: str, split: str, x: np.ndarray, expected: tuple) -> None:
    if len(x) == 0:
        raise TFLiteError(f"{split} of {source!r} is empty; provide at least one example")
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise TFLiteError(f"{split} of {source!r} has {bad} NaN or inf values; clean or impute them")
    if _matches(x.shape[1:], expected):
        return
    if len(expected) == 3 and x.ndim == 4 and x.shape[1:3] == expected[:2] and expected[2] != -1:
        raise TFLiteError(
            f"{split} of {source!r} has {x.shape[-1]} channel(s) but the model expects {expected[2]}; "
            f"set channels={expected[2]} (image folders) or convert the data"
        )
    raise TFLiteError(
        f"{split} of {source!r} has example shape {x.shape[1:]} but the model expects "
        f"{expected}; reshape or resize the data"
    )


def _matches(shape: tuple[int, ...], expected: tuple) -> bool:
    return len(shape) == len(expected) and all(e in (None, -1) or e == s for s, e in zip(shape, expected))


MEMORY_BUDGET_VARIABLE = "MLFLOW_TFLITE_MEMORY_BYTES"


def available_memory_bytes() -> int | None:
    """Memory the input-size check plans with, in bytes: ``MLFLOW_TFLITE_MEMORY_BYTES`` when set
    (e.g. a share of a machine others use too), else ``MemAvailable`` of ``/proc/meminfo``
    (Linux), else the free physical pages (``os.sysconf``), else ``None`` (unknown: no check).

    Raises:
        TFLiteError: ``MLFLOW_TFLITE_MEMORY_BYTES`` is not a whole number of bytes >= 1.
    """
    budget = os.environ.get(MEMORY_BUDGET_VARIABLE)
    if budget is not None:
        if not budget.strip().isdigit() or int(budget) < 1:
            raise TFLiteError(f"{MEMORY_BUDGET_VARIABLE}={budget!r} is not a number of bytes; set e.g. 8000000000, "
                              "or unset it to use the available memory")
        return int(budget)
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_resize_fits(images: int, channels: int, input_size: int, available: int | None = None) -> None:
    """Refuse an input size whose resized images cannot fit in memory, before TensorFlow tries.

    The estimate is deliberately simple: the resized images, ``images x input_size**2 x
    channels`` float32 values, must fit in half the available memory (while they are made the
    resized chunks and their concatenation are held together, and the model's activations at that
    size need room too). A size that passes may still be too large for the model's activations.

    Args:
        images: examples to resize (train and test together).
        channels: channels per pixel (the last axis of ``(N, H, W, C)``).
        input_size: the side in pixels (>= 1).
        available: bytes available (default :func:`available_memory_bytes`; unknown -> no check).

    Raises:
        TFLiteError: ``"input_size=100000 needs about 72 TB for 1797 resized images (...) but
            21 GB of memory is available; pass input_size <= 1234, or native"``.
    """
    available = available_memory_bytes() if available is None else available
    need = images * input_size * input_size * channels * FLOAT32_BYTES
    if available is None or images == 0 or need <= available / 2:
        return
    largest = math.isqrt(int(available / 2 / (images * channels * FLOAT32_BYTES)))
    advice = f"pass input_size <= {largest}, or native" if largest >= 1 else "pass native"
    raise TFLiteError(
        f"input_size={input_size} needs about {_bytes(need)} for {images} resized images ({input_size} x "
        f"{input_size} x {channels} float32 each) but {_bytes(available)} of memory is available; {advice}")


def check_sizes_fit(dataset, input_sizes) -> None:
    """:func:`check_resize_fits` for every image input of ``dataset`` (a ``data.Dataset`` or
    ``None``) and every size in ``input_sizes`` (``None``, the native size, is skipped).

    Raises:
        TFLiteError: see :func:`check_resize_fits`.
    """
    if dataset is None:
        return
    for x_train, x_test in zip(dataset.train_inputs, dataset.test_inputs):
        if x_train.ndim == 4:
            for size in sorted({size for size in input_sizes if size}):
                check_resize_fits(len(x_train) + len(x_test), x_train.shape[3], size)


def _bytes(count: float) -> str:
    """``72 TB``, ``1.5 GB``, ``300 MB`` (powers of 1000)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= size:
            value = count / size
            return f"{value:.0f} {unit}" if value >= 10 else f"{value:.1f} {unit}"
    return f"{int(count)} bytes"
