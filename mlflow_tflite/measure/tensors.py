"""Per-tensor error of a quantized model against its float model (the run's per-tensor table).

Both models run on a few evaluation examples and every tensor the two share by name is compared
with the LiteRT Quantizer's metrics (``model_validator.compare_model``).
"""

from __future__ import annotations

import warnings

import numpy as np

from mlflow_tflite.errors import TFLiteError, first_line
from mlflow_tflite.flavor.flatbuffer import tensor_producers
from mlflow_tflite.flavor.runtime import signature_samples

# Per-tensor comparison metrics, as named by ai_edge_quantizer.utils.validation_utils.
ERROR_METRICS = ("snr", "cosine_similarity", "mse")


def tensor_errors(float_model: bytes, quantized_model: bytes, arrays: list[np.ndarray],
                  input_names: list[str] | None = None, samples: int = 16) -> list[dict]:
    """Per-tensor quantization error of ``quantized_model`` against ``float_model``.

    Both models run on the first ``samples`` examples of ``arrays`` (float inputs, so a model
    with integer I/O cannot be compared here); every op output present in both under the same
    name and size is compared with the LiteRT Quantizer's metrics
    (``model_validator.compare_model``), averaged over the examples: signal-to-noise ratio
    ``mean(float^2) / mean((quantized - float)^2)``, reported as ``10 log10`` (dB, higher is
    better), cosine similarity and mean squared error.

    Returns:
        One dict per tensor, worst SNR first: ``tensor``, ``op`` (the op that writes it in the
        quantized model, e.g. ``CONV_2D``), ``shape`` (text), ``snr_db``, ``cosine``, ``mse``.

    Raises:
        TFLiteError: the models cannot be compared (integer I/O, other signature).
    """
    from ai_edge_quantizer import model_validator
    from ai_edge_quantizer.utils import validation_utils

    metrics = [validation_utils.ValidationErrorMetric(m) for m in ERROR_METRICS]
    compare_fns = [_same_size_only(validation_utils.get_validation_func(m)) for m in metrics]
    data = signature_samples(float_model, [a[:samples] for a in arrays], input_names)
    try:
        with warnings.catch_warnings():  # the interpreter's debugging-mode warning, once per model
            warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors.*")
            result = model_validator.compare_model(float_model, quantized_model, data, metrics, compare_fns,
                                                   num_threads=1)
    except Exception as error:
        raise TFLiteError(f"per-tensor comparison with the float model failed ({first_line(error, 200)})") from None
    producers = tensor_producers(quantized_model)
    rows = [{"tensor": name, "op": producers[name][0], "shape": str(list(producers[name][1])),
             "snr_db": float(10 * np.log10(max(values["snr"], 1e-30))), "cosine": values["cosine_similarity"],
             "mse": values["mse"]}
            for name, values in result.get_all_tensor_results().items()
            if name in producers and np.isfinite(values["mse"])]
    return sorted(rows, key=lambda r: (r["snr_db"], r["tensor"]))


def _same_size_only(compare):
    """A comparison that gives NaN (left out) for tensors whose sizes differ between the models.

    A float16 model keeps float16 copies of the weights under the float names; those are storage,
    not activations, and cannot be compared element by element.
    """

    def compare_same_size(target, reference) -> float:
        if np.size(target) != np.size(reference):
            return float("nan")
        return float(compare(target, reference))

    return compare_same_size
