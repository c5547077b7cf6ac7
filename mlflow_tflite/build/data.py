"""Data: the built-in digits data set, .npz files, image resizing, validation and calibration sampling."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlflow_tflite.errors import TFLiteError
from mlflow_tflite.quiet import start_tensorflow
from mlflow_tflite.build.data_checks import check_resize_fits, class_labels
from mlflow_tflite.checks import check_number, check_optional_number
from mlflow_tflite.options import floats_list, number, option

DIGITS_SOURCE = "sklearn.datasets.load_digits"


@dataclass
class Dataset:
    """Arrays for calibration (train split) and evaluation (test split).

    Attributes:
        name: short name used for MLflow dataset inputs, e.g. ``"digits"``.
        source: where the data came from (a path, or ``sklearn.datasets.load_digits``).
        x_train: float32 ``(N_train, *input_shape)``; the representative dataset is drawn from it.
            For a model with several inputs, a list with one such array per input (model order).
        x_test: float32 ``(N_test, *input_shape)`` (or a list); held out for evaluation.
        y_train, y_test: int64 class labels ``(N,)``, or ``None`` for fidelity-only data.
        preprocessing: the preprocessing applied at load time (logged as run params).
    """

    name: str
    source: str
    x_train: np.ndarray
    x_test: np.ndarray
    y_train: np.ndarray | None = None
    y_test: np.ndarray | None = None
    preprocessing: "Preprocessing | None" = None

    @property
    def train_inputs(self) -> list[np.ndarray]:
        """The train split as one array per model input."""
        return as_inputs(self.x_train)

    @property
    def test_inputs(self) -> list[np.ndarray]:
        """The test split as one array per model input."""
        return as_inputs(self.x_test)

    @property
    def labelled(self) -> bool:
        """True when the test split has labels (accuracy metrics can be computed)."""
        return self.y_test is not None


def as_inputs(x) -> list[np.ndarray]:
    """An array (one input) or a list of arrays (several inputs) -> a list of arrays."""
    return list(x) if isinstance(x, (list, tuple)) else [x]


@dataclass(frozen=True)
class Preprocessing:
    """Explicit preprocessing, applied once at load time so calibration, evaluation and the
    logged input example all see the same values.

    Attributes:
        resize: side in pixels of the square image each example is resized to (bilinear), or None.
        scale: factor applied to the raw values (``1/255`` for 8-bit images).
        mean, std: per-channel normalisation ``(x * scale - mean) / std``, or None.
        channels: 1 (grey) or 3 (RGB) for image folders; None keeps the files' own.

    Raises:
        TFLiteError: a value that is not finite, ``resize`` not a whole number >= 1, ``channels``
            not 1 or 3, or a zero ``std``.
    """

    resize: int | None = option(None, "Resize images to this square side, or native.",
                                number(int, 1, optional=True, example=96, hint=", or native"))
    scale: float = option(1.0, "Multiply raw values (1/255 = 0.00392...).", number(float, example=0.00392))
    mean: tuple[float, ...] | None = option(None, "Per-channel mean to subtract after scaling, comma-separated.",
                                            floats_list())
    std: tuple[float, ...] | None = option(None, "Per-channel std to divide by, comma-separated.", floats_list())
    channels: int | None = option(None, "Image folder channels: 1, 3 or auto.", number(int, 1, 3, optional=True, example=3))

    def __post_init__(self):
        object.__setattr__(self, "resize", check_optional_number(self.resize, "resize", int, low=1, example=96,
                                                                 hint=", or None"))
        object.__setattr__(self, "scale", check_number(self.scale, "scale", float, example=0.00392))
        object.__setattr__(self, "channels", check_optional_number(self.channels, "channels", int, low=1, high=3,
                                                                   example=3))
        if self.channels not in (None, 1, 3):
            raise TFLiteError(f"channels={self.channels} must be 1 (grey) or 3 (RGB); pass e.g. 3")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values is not None:
                object.__setattr__(self, name, tuple(check_number(v, name, float, example=0.5) for v in values))
        if self.std is not None and any(v == 0 for v in self.std):
            raise TFLiteError(f"std={self.std} has a zero; every channel's std must be non-zero, e.g. 0.229,0.224,0.225")

    def apply(self, x: np.ndarray) -> np.ndarray:
        """``(N, ...)`` raw values -> float32 ``(x * scale - mean) / std`` (resized first if asked)."""
        x = np.asarray(x, dtype=np.float32)
        if self.resize is not None and x.ndim == 4 and x.shape[1:3] != (self.resize, self.resize):
            x = resize_images(x, self.resize)
        x = x * np.float32(self.scale)
        if self.mean is not None:
            x = x - np.asarray(self.mean, np.float32)
        if self.std is not None:
            x = x / np.asarray(self.std, np.float32)
        return x

    def as_params(self) -> dict[str, object]:
        """Run params ``preprocess_resize``, ``preprocess_scale``, ... (``None`` values left out)."""
        values = {"resize": self.resize, "scale": self.scale, "mean": self.mean, "std": self.std,
                  "channels": self.channels}
        return {f"preprocess_{k}": (",".join(f"{x:g}" for x in v) if isinstance(v, tuple) else v)
                for k, v in values.items() if v is not None}


def resize_images(x: np.ndarray, input_size: int) -> np.ndarray:
    """Resize ``(N, H, W, C)`` images to ``(N, input_size, input_size, C)`` (bilinear, no antialias).

    Uses ``tf.image.resize(method="bilinear", antialias=False)``, in chunks of 1,024 images.
    Values keep their units (no rescaling); bilinear interpolation stays within the input range.

    Args:
        x: ``(N, H, W, C)`` array (cast to float32).
        input_size: new height and width in pixels (> 0).

    Returns:
        float32 ``(N, input_size, input_size, C)``; a float32 copy of ``x`` when it already has
        that size.

    Raises:
        TFLiteError: ``x`` is not 4-D, ``input_size`` is not a positive integer, or the resized
            images would not fit in memory (``data_checks.check_resize_fits``).
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 4:
        raise TFLiteError(
            f"input_size={input_size} resizes (N, H, W, C) images but the data has shape {x.shape}; drop input_size"
        )
    if isinstance(input_size, bool) or not isinstance(input_size, (int, np.integer)) or input_size <= 0:
        raise TFLiteError(f"input_size {input_size!r} must be a positive number of pixels, e.g. 96")
    check_resize_fits(len(x), x.shape[3], int(input_size))
    if x.shape[1] == input_size and x.shape[2] == input_size:
        return x.copy()
    start_tensorflow()  # TensorFlow's start-up notices dropped, if this is its first use in the process
    import tensorflow as tf

    size = (int(input_size), int(input_size))
    parts = [
        tf.image.resize(x[i : i + 1024], size, method="bilinear", antialias=False).numpy()
        for i in range(0, len(x), 1024)
    ]
    if not parts:
        return np.zeros((0, *size, x.shape[3]), np.float32)
    return np.concatenate(parts).astype(np.float32, copy=False)


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


def _numbered(arrays: dict, prefix: str) -> list[np.ndarray] | None:
    """``x_train_0``, ``x_train_1``, ... (several model inputs) as a list, or None."""
    keys = sorted((k for k in arrays if k.startswith(prefix + "_") and k[len(prefix) + 1:].isdigit()),
                  key=lambda k: int(k[len(prefix) + 1:]))
    return [arrays[k] for k in keys] or None


def load_npz(path: str | Path, test_fraction: float = 0.25, seed: int = 0,
             preprocessing: Preprocessing | None = None) -> Dataset:
    """A .npz file with ``x_train``, ``y_train``, ``x_test``, ``y_test``, or ``x`` and ``y`` to split.

    ``y`` arrays are optional (fidelity-only data). A model with several inputs takes
    ``x_train_0``, ``x_train_1``, ... and ``x_test_0``, ... (one per input, in model order).
    Features are cast to float32 (then preprocessed), labels (whole numbers) to int64.

    Raises:
        TFLiteError: the file is missing or lacks the required keys, or its labels are not one
            whole number per example (``data_checks.class_labels``).
    """
    path = Path(path)
    if not path.is_file():
        raise TFLiteError(f"data file {str(path)!r} does not exist; pass a .npz file or omit data for the digits demo")
    with np.load(path, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    x_train = arrays.get("x_train", _numbered(arrays, "x_train"))
    x_test = arrays.get("x_test", _numbered(arrays, "x_test"))
    if x_train is not None and x_test is not None:
        parts = [x_train, x_test, arrays.get("y_train"), arrays.get("y_test")]
    elif "x" in arrays:
        y = class_labels(arrays.get("y"), "y", str(path.resolve()))
        if y is not None and len(y) != len(arrays["x"]):
            raise TFLiteError(f"y of {str(path.resolve())!r} has {len(y)} labels but x has {len(arrays['x'])} "
                              "examples; give one label per example")
        parts = _split(arrays["x"], y, test_fraction, seed)
    else:
        raise TFLiteError(
            f"data file {str(path)!r} has keys {sorted(arrays)}; it needs x_train, x_test "
            "(and y_train, y_test for labels), or x (and y) to split"
        )
    return _dataset(path, *parts, preprocessing=preprocessing)


def _dataset(path: Path, x_train, x_test, y_train, y_test, preprocessing: Preprocessing | None) -> Dataset:
    """A Dataset of the arrays read from ``path``: features preprocessed, labels checked and made int64."""
    prep = preprocessing or Preprocessing()
    features = lambda x: [prep.apply(a) for a in x] if isinstance(x, list) else prep.apply(x)  # noqa: E731
    source = str(path.resolve())
    return Dataset(path.stem, source, features(x_train), features(x_test), class_labels(y_train, "y_train", source),
                   class_labels(y_test, "y_test", source), preprocessing)


def load_npy(path: str | Path, test_fraction: float = 0.25, seed: int = 0,
             preprocessing: Preprocessing | None = None) -> Dataset:
    """An unlabelled ``.npy`` array ``(N, ...)``: fidelity-only data split into calibration and evaluation.

    Raises:
        TFLiteError: the file is missing or holds fewer than 2 examples.
    """
    path = Path(path)
    if not path.is_file():
        raise TFLiteError(f"data file {str(path)!r} does not exist; pass an existing .npy file")
    x = np.load(path, allow_pickle=False)
    if x.ndim < 1 or len(x) < 2:
        raise TFLiteError(f"data file {str(path)!r} holds {x.shape}; it needs at least 2 examples along axis 0")
    x_train, x_test, _, _ = _split(x, None, test_fraction, seed)
    return _dataset(path, x_train, x_test, None, None, preprocessing)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def load_image_folder(path: str | Path, test_fraction: float = 0.25, seed: int = 0,
                      preprocessing: Preprocessing | None = None) -> Dataset:
    """Images in one sub-folder per class (``root/<class>/*.png``); labels by sorted class name.

    Pixels are read with Pillow as uint8 (grey or RGB per ``preprocessing.channels``, else as
    the files are), resized if ``preprocessing.resize`` is set, then scaled/normalised. The
    split is stratified.

    Raises:
        TFLiteError: no class folders or images, or images of different sizes without a resize.
    """
    from PIL import Image

    root, prep = Path(path), preprocessing or Preprocessing()
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    files = [(f, label) for label, name in enumerate(classes) for f in sorted((root / name).iterdir())
             if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise TFLiteError(f"image folder {str(root)!r} has no class sub-folders with images; use root/<class>/*.png")
    mode = {1: "L", 3: "RGB", None: None}[prep.channels]
    images = []
    for file, _ in files:
        with Image.open(file) as image:
            image = image.convert(mode) if mode else image
            if prep.resize:
                image = image.resize((prep.resize, prep.resize), Image.BILINEAR)
            images.append(np.asarray(image))
    sizes = sorted({im.shape for im in images})
    if len(sizes) > 1:
        raise TFLiteError(
            f"images in {str(root)!r} have different sizes {sizes[:4]}; set a resize (e.g. resize=96) to make them equal"
        )
    x = np.stack(images).astype(np.float32)
    x = x[..., np.newaxis] if x.ndim == 3 else x
    y = np.array([label for _, label in files], np.int64)
    x_train, x_test, y_train, y_test = _split(x, y, test_fraction, seed)
    resized_already = Preprocessing(None, prep.scale, prep.mean, prep.std, prep.channels)
    dataset = _dataset(root, x_train, x_test, y_train, y_test, resized_already)
    dataset.preprocessing = prep
    return dataset


def _split(x, y, test_fraction: float, seed: int):
    from sklearn.model_selection import train_test_split

    if y is None:
        x_train, x_test = train_test_split(x, test_size=test_fraction, random_state=seed)
        return x_train, x_test, None, None
    return train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)


def load_dataset(data: str | None, preprocessing: Preprocessing | None = None) -> Dataset:
    """The data set named by the ``data`` parameter.

    Empty or ``digits`` -> scikit-learn digits; a ``.npz`` or ``.npy`` file; a directory of
    class sub-folders of images.

    Raises:
        TFLiteError: a path that does not exist or is none of these.
    """
    if not data or data == "digits":
        dataset = load_digits_dataset()
        if preprocessing is not None:
            dataset = Dataset(dataset.name, dataset.source, preprocessing.apply(dataset.x_train),
                              preprocessing.apply(dataset.x_test), dataset.y_train, dataset.y_test, preprocessing)
        return dataset
    path = Path(data)
    if path.is_dir():
        return load_image_folder(path, preprocessing=preprocessing)
    loaders = {".npz": load_npz, ".npy": load_npy}
    if path.suffix not in loaders:
        raise TFLiteError(f"data {data!r} is not a .npz, .npy or image folder; pass one of those")
    return loaders[path.suffix](path, preprocessing=preprocessing)


def calibration_sample(x_train, samples: int, seed: int = 0):
    """The representative dataset: ``samples`` rows of the train split drawn without replacement.

    Args:
        x_train: ``(N, ...)`` float32, or a list of them (one per input; the same rows are drawn).
        samples: how many rows (capped at N; must be > 0).
        seed: seed of the draw (``numpy.random.default_rng``).

    Returns:
        ``(min(samples, N), ...)`` float32 (a list for several inputs).

    Raises:
        TFLiteError: ``samples`` <= 0.
    """
    inputs = as_inputs(x_train)
    rows = calibration_rows(len(inputs[0]), samples, seed)
    drawn = [x[rows] for x in inputs]
    return drawn if isinstance(x_train, (list, tuple)) else drawn[0]


def calibration_rows(n: int, samples: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of the ``min(samples, n)`` train rows :func:`calibration_sample` draws.

    Raises:
        TFLiteError: ``samples`` <= 0.
    """
    if samples <= 0:
        raise TFLiteError(f"calibration_samples={samples} must be > 0; 100-500 is typical (default 200)")
    return np.sort(np.random.default_rng(seed).choice(n, size=min(samples, n), replace=False))
