"""A converted and evaluated variant (:class:`Outcome`): the value a worker returns. Plain data:
it pickles, and nothing here calls MLflow."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mlflow_tflite.build.precision_search import SearchResult


@dataclass(frozen=True)
class Outcome:
    """A converted and evaluated variant, ready to log (picklable: it crosses processes).

    Attributes:
        tflite_model: flatbuffer bytes.
        metrics: run metrics (see the design notes' contracts), without latency.
        calibration: the representative dataset used (one float32 ``(n, ...)`` array per input) or ``None``.
        input_example: two test examples at the variant's input size (a dict by input name for several inputs).
        op_inventory: op name -> count in the converted model (Flex ops appear as ``FlexXxx``).
        not_evaluated: why the model could not be run here (Flex ops), else ``None``; then only
            the size metrics exist and the variant is neither registered nor selected.
        recipe_json: the LiteRT Quantizer recipe that made it (JSON text), or ``None``.
        tensor_errors: per-tensor error rows against the float model (``measure.tensors``),
            or ``None`` with ``tensor_errors_note`` saying why.
        edgetpu: static Edge TPU readiness report (``edgetpu.readiness``) of variants with int8 kernels, else ``None``.
        tflm: TFLite Micro readiness report (``tflm.readiness``) of a variant LiteRT could run, else ``None``.
        search: the mixed-precision search of ``int8_mixed``, else ``None``.
        mode_params: run params of the mode's own options (``qat_epochs``, ``qat_learning_rate``).
        size_warning: why the quantized model is larger than its float model
            (``measure.size.size_warning``), else ``None``.
    """

    tflite_model: bytes
    metrics: dict[str, float]
    calibration: list[np.ndarray] | None
    input_example: np.ndarray | dict
    op_inventory: dict[str, int]
    not_evaluated: str | None = None
    recipe_json: str | None = None
    tensor_errors: list[dict] | None = None
    tensor_errors_note: str | None = None
    edgetpu: dict | None = None
    tflm: dict | None = None
    search: SearchResult | None = None
    mode_params: dict = field(default_factory=dict)
    size_warning: str | None = None

    @property
    def final_step(self) -> int:
        """Step of the run's final metric values: 0, or after the trials of a mixed-precision search."""
        return len(self.search.trials) + 1 if self.search is not None else 0

    def latency_models(self, name: str) -> dict[str, tuple[bytes, object]]:
        """The models to time for variant ``name``: its own, and each other trial's as ``name#trial<n>``."""
        models = {name: (self.tflite_model, self.input_example)}
        for trial in self.search.trials if self.search is not None else []:
            if trial.number != self.search.chosen.number:
                models[f"{name}#trial{trial.number}"] = (trial.tflite_model, self.input_example)
        return models

    def trial_latencies(self, name: str, latencies: dict[str, dict[str, float]]) -> dict[int, float]:
        """Trial number -> ``latency_ms_p50`` (ms) from timings of :meth:`latency_models`."""
        if self.search is None:
            return {}
        chosen = self.search.chosen.number
        return {t.number: latencies[name if t.number == chosen else f"{name}#trial{t.number}"]["latency_ms_p50"]
                for t in self.search.trials}

    @property
    def tolerance_met(self) -> bool:
        """False only for an ``int8_mixed`` search that did not meet the tolerance (never selected or promoted)."""
        return self.search is None or self.search.tolerance_met
