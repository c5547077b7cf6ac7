"""The project's one exception type."""

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE


class TFLiteError(MlflowException):
    """A bad input or a failed stage of mlflow-tflite.

    The message is one line: what was wrong, with which value, and what to do. It is an
    ``MlflowException`` with error code ``INVALID_PARAMETER_VALUE``, so MLflow's own callers
    (the model server, ``mlflow models predict``) report it as a client error.
    """

    def __init__(self, message: str):
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


def first_line(error: BaseException, limit: int | None = None) -> str:
    """The first non-blank line of ``str(error)``, stripped and cut to ``limit`` characters;
    the exception's type name when the message is empty. For one-line error messages."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[0] if lines else type(error).__name__)[:limit]
