"""PyTorch sources: a ``.pt2`` ExportedProgram, a ``package.module:factory`` returning an ``nn.Module``,
or an MLflow model of the ``pytorch`` flavor, converted with LiteRT Torch (``litert_torch.convert``).

Everything that imports torch runs in a child process (``torch_worker``, a fresh interpreter), so
this process never imports torch: with TensorFlow already loaded here (the CLI always loads it),
importing litert_torch's dependencies would crash the process. The child converts the model (the
float flatbuffer every variant starts from) and computes PyTorch's own outputs on the evaluation
inputs (the reference every variant is compared with). Quantized variants are made by the LiteRT
Quantizer on that float flatbuffer (``backend=litert``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from mlflow_tflite.build.source import Source
from mlflow_tflite.errors import TFLiteError
from mlflow_tflite.options import Layout

logger = logging.getLogger(__name__)

FACTORY_PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
TORCH_KIND = "pytorch"
INSTALL_HINT = 'install the extra: pip install "mlflow-tflite[torch]"'


@dataclass(frozen=True)
class TorchSpec:
    """Which PyTorch model to open and how.

    Attributes:
        kind: ``pt2``, ``factory`` or ``mlflow``.
        ref: the ``.pt2`` path, ``package.module:factory`` or MLflow model URI.
        input_shape: NCHW input shape incl. batch (e.g. ``(1, 3, 48, 48)``), or ``None`` to read it
            from the model (a ``.pt2``'s example inputs, an MLflow model's signature).
        layout: ``Layout.NCHW`` keeps PyTorch's layout; ``Layout.NHWC`` converts with channel-last I/O.
    """

    kind: str
    ref: str
    input_shape: tuple[int, ...] | None
    layout: Layout = Layout.NCHW


def is_factory(model: str) -> bool:
    """True for a ``package.module:factory`` reference (and not an existing path or URI)."""
    return bool(FACTORY_PATTERN.match(model)) and not Path(model).exists()


def run_child(spec: TorchSpec, convert: bool, inputs: np.ndarray | None = None) -> tuple[dict, bytes | None, list[np.ndarray]]:
    """Run ``torch_worker`` once in a fresh interpreter.

    Args:
        spec: the model.
        convert: also convert it with ``litert_torch.convert``.
        inputs: float32 ``(N, ...)`` in the model's layout, or ``None`` (one zero example).

    Returns:
        ``(meta, float flatbuffer or None, PyTorch outputs as float32 arrays)``; meta has
        ``input_shape`` (the model's layout) and ``convert_seconds``.

    Raises:
        TFLiteError: torch or litert-torch is not installed, or the child failed (its first error line).
    """
    with tempfile.TemporaryDirectory(prefix="mlflow-tflite-torch-") as folder:
        request = {"kind": spec.kind, "ref": spec.ref, "input_shape": list(spec.input_shape or []) or None,
                   "layout": str(spec.layout), "convert": convert, "inputs": None, "out_dir": folder}
        if inputs is not None:
            request["inputs"] = os.path.join(folder, "inputs.npz")
            np.savez(request["inputs"], x=inputs.astype(np.float32))
        Path(folder, "request.json").write_text(json.dumps(request))
        # The child imports a factory's module as this process would: same search path.
        search_path = os.pathsep.join(dict.fromkeys([os.getcwd(), *(p for p in sys.path if p)]))
        env = {**os.environ, "LITERT_TORCH_SHOW_PROGRESS": "n", "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": search_path}
        done = subprocess.run([sys.executable, "-m", "mlflow_tflite.build.torch_worker", str(Path(folder, "request.json"))],
                              capture_output=True, text=True, env=env, cwd=os.getcwd())
        if done.returncode != 0:
            logger.info("torch_worker stderr:\n%s", done.stderr)
            raise TFLiteError(f"PyTorch model {spec.ref!r} could not be {'converted' if convert else 'run'} "
                              f"({_first_error(done.stderr, done.returncode)})")
        meta = json.loads(Path(folder, "meta.json").read_text())
        tflite = Path(folder, "model.tflite").read_bytes() if convert else None
        with np.load(Path(folder, "outputs.npz")) as saved:
            outputs = [saved[f"output_{k}"] for k in range(len(saved.files))]
    return meta, tflite, outputs


def _first_error(stderr: str, returncode: int) -> str:
    """The child's error line: the last line that names an error, else the last line, else the exit code."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    if any("No module named 'torch'" in line or "No module named 'litert_torch'" in line for line in lines):
        return f"torch or litert-torch is not installed; {INSTALL_HINT}"
    errors = [line for line in lines if re.match(r"^[\w.]*(Error|Exception)\b", line) or line.startswith("SystemExit")]
    return (errors or lines or [f"exit code {returncode}"])[-1][:300]


def from_torch(spec: TorchSpec, name: str) -> Source:
    """Source for a PyTorch model: converted once now (in the child), PyTorch's outputs on demand.

    The float flatbuffer is the source's ``float_model`` (every variant starts from it); the
    ``predict_fn`` asks the child for PyTorch's outputs on the whole array at once.

    Raises:
        TFLiteError: the child failed (see :func:`run_child`).
    """
    meta, tflite, outputs = run_child(spec, convert=True)
    input_shape = tuple(meta["input_shape"])
    model_spec = replace(spec, input_shape=_nchw(input_shape, spec.layout))
    seconds = float(meta["convert_seconds"])
    return Source(
        name=name,
        kind=TORCH_KIND,
        uri=spec.ref,
        input_shapes=[input_shape],
        output_shapes=[tuple(o.shape) for o in outputs],
        input_names=["args_0"],  # litert_torch's signature names
        output_names=[f"output_{k}" for k in range(len(outputs))],
        predict_fn=lambda arrays: run_child(model_spec, convert=False, inputs=arrays[0])[2],
        converter_fn=lambda: _no_converter(spec),
        float_model=(tflite, seconds),
        predict_batch_size=None,
        layout=str(spec.layout),
    )


def _nchw(shape: tuple[int, ...], layout: Layout) -> tuple[int, ...]:
    return (shape[0], shape[-1], *shape[1:-1]) if layout == Layout.NHWC else shape


def _no_converter(spec: TorchSpec):
    raise TFLiteError(f"model {spec.ref!r} is a PyTorch model: TFLiteConverter cannot quantize it; "
                      "pass backend=litert (the LiteRT Quantizer on litert-torch's float model)")


def image_layout(x, layout: str):
    """NHWC image data (the project's convention) in a PyTorch source's layout: ``(N, C, H, W)`` for
    ``nchw`` (4-D arrays only), unchanged for ``nhwc``."""
    if layout == Layout.NCHW and isinstance(x, np.ndarray) and x.ndim == 4:
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    return x
