"""mlflow-tflite: TensorFlow Lite (LiteRT) conversion variants tracked in MLflow.

The ``tflite`` flavor API sits at the top level, as ``mlflow.onnx`` does::

    import mlflow_tflite
    mlflow_tflite.log_model(tflite_bytes, name="model")
    interpreter = mlflow_tflite.load_model("models:/digits-cnn@champion")

TensorFlow is imported only by the conversion stages, never by loading or serving a model.
"""

from mlflow_tflite.errors import TFLiteError
from mlflow_tflite.flavor import (
    FLAVOR_NAME,
    MODEL_FILE_NAME,
    QUANTIZATION_MODES,
    get_default_conda_env,
    get_default_pip_requirements,
    load_model,
    log_model,
    save_model,
)

__version__ = "0.1.0"

__all__ = [
    "FLAVOR_NAME",
    "MODEL_FILE_NAME",
    "QUANTIZATION_MODES",
    "TFLiteError",
    "get_default_conda_env",
    "get_default_pip_requirements",
    "load_model",
    "log_model",
    "save_model",
]
