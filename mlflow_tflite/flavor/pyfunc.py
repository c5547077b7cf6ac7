"""The ``python_function`` side of the ``tflite`` flavor: a thread-safe LiteRT predictor.

``flavor._load_pyfunc`` (the MLmodel's loader module) returns a :class:`TFLiteModelWrapper`.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pandas as pd

from mlflow_tflite.flavor import runtime
from mlflow_tflite.errors import TFLiteError

# Rows per interpreter invocation unless the caller passes params={"batch_size": N}.
DEFAULT_BATCH_SIZE = 256


class TFLiteModelWrapper:
    """pyfunc wrapper around LiteRT interpreters, safe to call from several threads.

    ``predict`` takes, for each model input, ``(N, *input_shape[1:])`` numbers: a numpy array
    or list (single-input model), a dict of them keyed by input name (any model), or a pandas
    DataFrame (a column per input holding per-row arrays, or for a single input one column of
    arrays or one column per value, reshaped in C order). Numbers not in the tensor's dtype are
    cast to float32 (see :func:`model_input`); float input is quantized for integer input
    tensors, where NaN and Inf are refused. It runs batches and returns float32 dequantized
    outputs: one array for one output, else a dict keyed by output name. The saved signature
    has no input schema, so MLflow passes the input here unchanged and these rules apply.

    A LiteRT interpreter is not thread-safe (resize, allocate, set and invoke share its
    buffers) and MLflow's scoring server calls ``predict`` from a thread pool, so each calling
    thread gets its own interpreter, created from the model bytes on its first call. This beat
    one interpreter behind a lock in ``benchmarks/serving_concurrency.py``: ``invoke`` releases
    the GIL, so per-thread interpreters run on several cores while a lock serialises them; the
    cost is one interpreter (its arena and packed weights) per serving thread.

    Args:
        tflite_model: the flatbuffer bytes.
        num_threads: CPU threads of each interpreter (>= 1).
        batch_size: default rows per invocation (>= 1), overridden by ``params["batch_size"]``.

    Raises:
        TFLiteError: the bytes are not a loadable model (checked once, in the loading thread),
            or ``num_threads``/``batch_size`` is not a positive integer.
    """

    def __init__(self, tflite_model: bytes, num_threads: int = 1, batch_size: int = DEFAULT_BATCH_SIZE):
        self._model_bytes = bytes(tflite_model)
        self._num_threads = checked_num_threads(num_threads)
        self._local = threading.local()
        self.inputs, self.outputs = runtime.io_tensors(self._interpreter())
        self.batch_size = _checked_batch_size(batch_size)

    def _interpreter(self):
        """The calling thread's interpreter, created on its first call."""
        interpreter = getattr(self._local, "interpreter", None)
        if interpreter is None:
            interpreter = runtime.make_interpreter(self._model_bytes, self._num_threads)
            self._local.interpreter = interpreter
        return interpreter

    def get_raw_model(self):
        """The calling thread's interpreter (``ai_edge_litert.interpreter.Interpreter``)."""
        return self._interpreter()

    def predict(self, data, params: dict[str, Any] | None = None):
        """Predict on ``data``, ``batch_size`` rows per interpreter invocation.

        Args:
            data: numbers ``(N, *input_shape[1:])`` (float, or already quantized in the tensor's
                dtype) as an array, a dict of arrays keyed by input name, or a DataFrame (see
                the class docstring).
            params: ``{"batch_size": int >= 1}`` (default 256); a model with a fixed batch
                dimension always runs that many rows at a time.

        Returns:
            ``np.ndarray`` of float32 ``(N, ...)`` for one output, else ``{name: np.ndarray}``.

        Raises:
            TFLiteError: missing inputs, values that are not numbers, NaN or Inf for an integer
                input tensor, shapes that do not match the model, or a batch_size < 1.
        """
        batch_size = _checked_batch_size((params or {}).get("batch_size", self.batch_size))
        results = self._run(self._arrays(data), batch_size)
        if len(results) == 1:
            return results[0]
        return {tensor.name: value for tensor, value in zip(self.outputs, results)}

    def _run(self, arrays: list[np.ndarray], batch_size: int) -> list[np.ndarray]:
        return runtime.run(self._interpreter(), arrays, batch_size)

    def _arrays(self, data) -> list[np.ndarray]:
        """One array per model input, in the model's input order, in the dtype :func:`model_input` gives."""
        if isinstance(data, pd.DataFrame):
            data = self._from_dataframe(data)
        if isinstance(data, dict):
            missing = [t.name for t in self.inputs if t.name not in data]
            if missing:
                raise TFLiteError(f"inputs {missing} are missing from {sorted(data)}; pass every model input by name")
            return [model_input(data[t.name], t) for t in self.inputs]
        if len(self.inputs) != 1:
            names = [t.name for t in self.inputs]
            raise TFLiteError(f"the model has inputs {names}; pass a dict of arrays keyed by these names")
        return [model_input(data, self.inputs[0])]

    def _from_dataframe(self, frame: pd.DataFrame):
        """A dict of arrays (columns named after the inputs) or the single input's array."""
        names = [t.name for t in self.inputs]
        if set(names) <= set(frame.columns):
            return {t.name: _stack(frame[t.name], t) for t in self.inputs}
        if len(self.inputs) != 1:
            raise TFLiteError(f"DataFrame columns {list(frame.columns)} do not name the model inputs {names}")
        tensor = self.inputs[0]
        if len(frame.columns) == 1 and frame.dtypes.iloc[0] == object:
            return _stack(frame.iloc[:, 0], tensor)  # one column of per-row arrays or lists
        return _reshaped_features(frame, tensor)


def _reshaped_features(frame: pd.DataFrame, tensor: runtime.TensorInfo) -> np.ndarray:
    """A DataFrame of one column per input value (C order) -> ``(N, *tensor.shape[1:])``."""
    shape = tensor.shape[1:]
    if -1 in shape or int(np.prod(shape)) != frame.shape[1]:
        wanted = "one column of arrays" if -1 in shape else f"{int(np.prod(shape))} columns (one per value)"
        raise TFLiteError(
            f"a DataFrame of {frame.shape[1]} columns does not hold input {tensor.name!r} of shape "
            f"{_shown(tensor)}; pass {wanted}"
        )
    return frame.to_numpy().reshape((len(frame), *shape))


def _shown(tensor: runtime.TensorInfo) -> str:
    """The tensor's shape as error messages show it, ``?`` for dynamic dimensions: ``"(?, 8, 8, 1)"``."""
    return "(" + ", ".join("?" if d == -1 else str(d) for d in tensor.shape) + ")"


def model_input(values, tensor: runtime.TensorInfo) -> np.ndarray:
    """Input for one tensor as :func:`runtime.run` takes it.

    Values already in the tensor's dtype pass unchanged (for an integer tensor: already
    quantized). Other numbers (float64, int64 as JSON gives them, bool) are cast to float32,
    the pyfunc's interface dtype, as MLflow's own flavors cast float64; ``runtime.run`` then
    quantizes them for an integer tensor. A non-quantized integer tensor gets its own dtype.

    Args:
        values: array-like ``(N, *tensor.shape[1:])`` of numbers.
        tensor: the model input it feeds.

    Returns:
        ``np.ndarray`` in ``tensor.dtype`` or float32.

    Raises:
        TFLiteError: values that are not numbers, or NaN/Inf for an integer tensor (which
            cannot hold them); float tensors take NaN and Inf as they are.
    """
    array, real = None, None
    try:
        array = np.asarray(values)
        if array.dtype == tensor.dtype:
            return array
        real = array.astype(np.float32) if array.dtype.kind in "biufO" else None
    except (TypeError, ValueError):  # ragged rows, None or text in an object array
        pass
    if real is None:
        raise TFLiteError(
            f"input {tensor.name!r} is not an array of numbers of shape {_shown(tensor)}; pass numeric "
            "arrays with the same number of values in every row"
        )
    if np.issubdtype(tensor.dtype, np.integer):
        bad = int(real.size - np.count_nonzero(np.isfinite(real)))
        if bad:
            raise TFLiteError(
                f"input {tensor.name!r} has {bad} NaN or Inf value(s) but the model takes {tensor.dtype} input, "
                "which cannot hold them; replace them (e.g. with numpy.nan_to_num) or drop those rows"
            )
        if not tensor.quantized:
            return array.astype(tensor.dtype)  # from the original: float32 would round large ids
    return real


def checked_positive_int(value, name: str, example: str) -> int:
    """``value`` as an int >= 1 (bool, float and NaN refused).

    Raises:
        TFLiteError: ``"<name> <value> is not a positive integer; pass e.g. <example>"``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise TFLiteError(f"{name} {value!r} is not a positive integer; pass e.g. {example}")
    return int(value)


def checked_num_threads(num_threads) -> int:
    """``num_threads`` (interpreter CPU threads) as an int >= 1.

    Raises:
        TFLiteError: ``"num_threads 0 is not a positive integer; pass e.g. num_threads=1"``
            (also for negative, non-integer, bool and NaN values).
    """
    return checked_positive_int(num_threads, "num_threads", "num_threads=1")


def _checked_batch_size(value) -> int:
    """``value`` as an int >= 1, else a TFLiteError."""
    return checked_positive_int(value, "batch_size", "params={'batch_size': 32}")


def _stack(column: pd.Series, tensor: runtime.TensorInfo) -> np.ndarray:
    """A DataFrame column of per-row arrays, lists (or scalars) -> one ``(N, *tensor.shape[1:])`` array."""
    try:
        stacked = np.stack([np.asarray(value) for value in column])
        return stacked if stacked.ndim == len(tensor.shape) else stacked.reshape((len(column), *tensor.shape[1:]))
    except ValueError:
        raise TFLiteError(
            f"DataFrame column {column.name!r} does not hold rows of input {tensor.name!r} of shape "
            f"{_shown(tensor)}; give each row one example, every row the same number of values"
        ) from None
