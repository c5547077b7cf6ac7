"""Where mlflow-tflite keeps files between runs: ``$MLFLOW_TFLITE_CACHE_DIR`` or ``~/.cache/mlflow-tflite``."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "MLFLOW_TFLITE_CACHE_DIR"


def cache_dir() -> Path:
    """The cache directory (trained demo models, a sweep's results saved when the tracking store failed)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "mlflow-tflite")
