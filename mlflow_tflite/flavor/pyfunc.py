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

    ``predict`` takes a numpy array (one input), a dict of arrays keyed by input name, or a
    pandas DataFrame (one column per input, or the flattened features of the single input),
    quantizes float input for integer input tensors, runs batches and returns float32
    dequantized outputs: one array for one output, else a dict keyed by output name.

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
        TFLiteError: the bytes are not a loadable model (checked once, in the loading thread).
    """

    def __init__(self, tflite_model: bytes, num_threads: int = 1, batch_size: int = DEFAULT_BATCH_SIZE):
        self._model_bytes = bytes(tflite_model)
        self._num_threads = num_threads
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
            data: float (or already quantized) ``(N, *input_shape[1:])`` array, a dict of such
                arrays keyed by input name, or a DataFrame (see the class docstring).
            params: ``{"batch_size": int >= 1}`` (default 256); a model with a fixed batch
                dimension always runs that many rows at a time.

        Returns:
            ``np.ndarray`` of float32 ``(N, ...)`` for one output, else ``{name: np.ndarray}``.

        Raises:
            TFLiteError: missing inputs, shapes that do not match the model, or a batch_size < 1.
        """
        batch_size = _checked_batch_size((params or {}).get("batch_size", self.batch_size))
        results = self._run(self._arrays(data), batch_size)
        if len(results) == 1:
            return results[0]
        return {tensor.name: value for tensor, value in zip(self.outputs, results)}

    def _run(self, arrays: list[np.ndarray], batch_size: int) -> list[np.ndarray]:
        return runtime.run(self._interpreter(), arrays, batch_size)

    def _arrays(self, data) -> list[np.ndarray]:
        """One float array per model input, in the model's input order."""
        if isinstance(data, pd.DataFrame):
            data = self._from_dataframe(data)
        if isinstance(data, dict):
            missing = [t.name for t in self.inputs if t.name not in data]
            if missing:
                raise TFLiteError(f"inputs {missing} are missing from {sorted(data)}; pass every model input by name")
            return [np.asarray(data[t.name]) for t in self.inputs]
        if len(self.inputs) != 1:
            names = [t.name for t in self.inputs]
            raise TFLiteError(f"the model has inputs {names}; pass a dict of arrays keyed by these names")
        return [np.asarray(data)]

    def _from_dataframe(self, frame: pd.DataFrame):
        names = [t.name for t in self.inputs]
        if set(names) <= set(frame.columns):
            return {t.name: _stack(frame[t.name], t) for t in self.inputs}
        if len(self.inputs) == 1:
            shape = self.inputs[0].shape[1:]
            return frame.to_numpy(dtype=np.float32).reshape((len(frame), *shape))
        raise TFLiteError(f"DataFrame columns {list(frame.columns)} do not name the model inputs {names}")


def _checked_batch_size(value) -> int:
    """``value`` as an int >= 1, else a TFLiteError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise TFLiteError(f"batch_size {value!r} is not a positive integer; pass e.g. params={{'batch_size': 32}}")
    return int(value)


def _stack(column: pd.Series, tensor: runtime.TensorInfo) -> np.ndarray:
    """A DataFrame column of per-row arrays (or scalars) -> one ``(N, ...)`` array."""
    rows = [np.asarray(value, dtype=np.float32) for value in column]
    return np.stack(rows).reshape((len(rows), *tensor.shape[1:]))
