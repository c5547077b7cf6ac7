"""Accuracy-guided mixed precision (``quant=int8_mixed``): int8, with the worst layers kept in float.

Options here; the search follows in this module.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlflow_tflite.options import check_range, names_list, number, option


@dataclass(frozen=True)
class MixedPrecision:
    """How ``int8_mixed`` searches for the layers to keep in float.

    Attributes:
        max_trials: quantizations tried at most (>= 1); the first is full int8.
        float_layers: layers to keep in float, given by the user (no search): Keras layer
            names (``conv2d_1``), layer paths or the float model's tensor names; ``None`` to search.

    Raises:
        TFLiteError: ``max_trials`` < 1.
    """

    max_trials: int = option(8, "int8_mixed: quantizations tried at most (the first is full int8).", number(int, 1, optional=True))
    float_layers: tuple[str, ...] | None = option(
        None, "int8_mixed: comma-separated layers to keep in float instead of searching, or none.", names_list())

    def __post_init__(self):
        check_range(self.max_trials, "max_trials", 1, hint="; the first trial is full int8 (default 8)")
        if self.float_layers is not None:
            object.__setattr__(self, "float_layers", tuple(self.float_layers))
