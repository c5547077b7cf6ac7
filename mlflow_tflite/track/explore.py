"""``mlflow-tflite explore``: a variant's .tflite graph in Model Explorer, coloured by its per-tensor SNR.

The run's model and its overlay (``model_explorer/tensor_snr.json``, ``track.node_data``) are
downloaded to a temporary directory and Model Explorer (the ``[explorer]`` extra) serves its
bundled web app on 127.0.0.1 with both loaded. Every bad input is found before the server starts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import signal
import socket
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mlflow_tflite.errors import TFLiteError, first_line
from mlflow_tflite.tags import VARIANT_TAG
from mlflow_tflite.track.node_data import TENSOR_SNR_ARTIFACT, tensor_snr_node_data
from mlflow_tflite.track.runs import TENSOR_ERRORS_FILE

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
EXTRA_MISSING = 'Model Explorer is not installed; pip install "mlflow-tflite[explorer]"'
_MODEL_URI_SCHEMES = ("models:/", "runs:/")


@dataclass(frozen=True)
class ExploreSession:
    """What ``explore`` serves.

    Attributes:
        run_id: the variant run the model and overlay come from.
        model_file: the downloaded .tflite, named after the variant (Model Explorer shows the name).
        overlay_file: the downloaded node data JSON.
        tensors: how many tensors the overlay colours.
        port: the port on 127.0.0.1 to serve on.
    """

    run_id: str
    model_file: Path
    overlay_file: Path
    tensors: int
    port: int


def require_model_explorer():
    """The ``model_explorer`` module.

    Raises:
        TFLiteError: the ``[explorer]`` extra is not installed (the message says how to install it).
    """
    try:
        import model_explorer
    except ImportError:
        raise TFLiteError(EXTRA_MISSING) from None
    return model_explorer


@contextlib.contextmanager
def downloaded(value: str, port: int | None):
    """Check ``value`` and ``port``, then download the model and overlay to a temporary directory.

    Args:
        value: a run id, or a model URI (``models:/<name>@<alias>``, ``models:/<name>/<version>``,
            ``models:/m-<id>``, ``runs:/<run id>/model``) of a ``tflite`` model logged by a run.
        port: the port to serve on (1-65535), or ``None`` for a free one.

    Yields:
        :class:`ExploreSession` (the files live until the block ends).

    Raises:
        TFLiteError: no such run or model, a model that is not ``tflite``, a run without a
            per-tensor table, or a port in use; the message names the value. A run with the table
            but without the overlay (logged before the overlay existed) gets one made from the table.
    """
    run_id, model_uri, flavor = _resolve(value)
    from_table = _overlay_source(run_id)
    port = _checked_port(port) if port is not None else _free_port()
    with tempfile.TemporaryDirectory(prefix="mlflow-tflite-explore-") as folder:
        model_dir = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(Path(folder, "model")))
        variant = MlflowClient().get_run(run_id).data.tags.get(VARIANT_TAG) or run_id
        model_file = Path(folder, re.sub(r"[^\w.-]", "_", variant) + ".tflite")
        model_file.write_bytes(Path(model_dir, flavor.get("model_file", "model.tflite")).read_bytes())
        overlay_file = _download_overlay(run_id, Path(folder), from_table)
        tensors = len(json.loads(overlay_file.read_text())["results"])
        yield ExploreSession(run_id, model_file, overlay_file, tensors, port)


def serve(session: ExploreSession, open_browser: bool) -> None:
    """Start Model Explorer on 127.0.0.1 with the session's model and overlay; return on Ctrl-C or SIGTERM.

    Model Explorer prints the URL (its ``data`` parameter names both files) and serves its bundled
    web app: nothing is fetched from the network for the graph. Called from the main thread,
    SIGTERM stops it as Ctrl-C does, so the caller's cleanup runs (the downloads are removed).

    Raises:
        TFLiteError: the ``[explorer]`` extra is not installed.
    """
    model_explorer = require_model_explorer()
    config = model_explorer.config()
    config.add_model_from_path(str(session.model_file))
    config.add_node_data_from_path(str(session.overlay_file))
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None
    try:
        model_explorer.visualize_from_config(config, host=HOST, port=session.port, no_open_in_browser=not open_browser)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame) -> None:
    """SIGTERM as Ctrl-C: Model Explorer stops its server on ``KeyboardInterrupt`` and returns."""
    raise KeyboardInterrupt


def _resolve(value: str) -> tuple[str, str, dict]:
    """``(run id, model URI, tflite flavor config)`` of a run id or model URI."""
    store = mlflow.get_tracking_uri()
    if value.startswith(_MODEL_URI_SCHEMES):
        info = _model_info(value, f"no model {value} in the tracking store {store}; pass a model URI such as "
                                  "models:/<name>@champion or models:/<name>/<version>, or a variant run's id")
        if info.run_id is None:
            raise TFLiteError(f"the model {value} was not logged by a run, so it has no per-tensor SNR; "
                              "pass a variant run's id or a model it logged")
    else:
        try:
            MlflowClient().get_run(value)
        except MlflowException:
            raise TFLiteError(f"no run {value!r} in the tracking store {store}; pass a variant run's id (convert "
                              "prints it) or a model URI such as models:/<name>@champion") from None
        info = _model_info(f"runs:/{value}/model", f"the run {value} has no model named 'model' (a sweep's parent "
                                                   "run or a failed variant?); pass a variant run's id")
    if "tflite" not in info.flavors:
        raise TFLiteError(f"the model {value} is not a tflite model (flavors: {', '.join(info.flavors)}); "
                          "pass a model logged by mlflow-tflite")
    return info.run_id, info.model_uri, info.flavors["tflite"]


def _model_info(uri: str, missing: str):
    """``mlflow.models.get_model_info(uri)``, or the one-line error ``missing`` (MLflow's reason is logged)."""
    try:
        return mlflow.models.get_model_info(uri)
    except (MlflowException, OSError) as error:
        logger.debug("%s: %s", uri, first_line(error))
        raise TFLiteError(missing) from None


def _overlay_source(run_id: str) -> bool:
    """Whether the run's overlay must be made from its table (a run logged before the overlay existed).

    Raises:
        TFLiteError: the run has neither the overlay nor a per-tensor table.
    """
    client = MlflowClient()
    folder = TENSOR_SNR_ARTIFACT.rsplit("/", 1)[0]
    if TENSOR_SNR_ARTIFACT in {f.path for f in client.list_artifacts(run_id, folder)}:
        return False
    if TENSOR_ERRORS_FILE in {f.path for f in client.list_artifacts(run_id)}:
        return True
    raise TFLiteError(f"the run {run_id} has no {TENSOR_SNR_ARTIFACT}: only quantized variants with float I/O "
                      "get a per-tensor table (not quant=none, int8_full or --no-tensor-errors); "
                      "pass such a run, e.g. an int8 variant")


def _download_overlay(run_id: str, folder: Path, from_table: bool) -> Path:
    """The run's overlay in ``folder``: downloaded, or made from its ``tensor_errors.json`` table."""
    if not from_table:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=TENSOR_SNR_ARTIFACT,
                                                        dst_path=str(folder)))
    table = json.loads(Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=TENSOR_ERRORS_FILE,
                                                                dst_path=str(folder))).read_text())
    rows = [dict(zip(table["columns"], values)) for values in table["data"]]  # mlflow.log_table's layout
    overlay_file = folder / Path(TENSOR_SNR_ARTIFACT).name
    overlay_file.write_text(json.dumps(tensor_snr_node_data(rows)))
    return overlay_file


def _checked_port(port: int) -> int:
    """``port`` if nothing listens on it at 127.0.0.1 (Model Explorer would exit with a red line)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((HOST, port))
        except OSError:
            raise TFLiteError(f"port {port} on {HOST} is in use; pass another --port or leave it out "
                              "for a free one") from None
    return port


def _free_port() -> int:
    """A port on 127.0.0.1 nothing listens on (the system's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]
