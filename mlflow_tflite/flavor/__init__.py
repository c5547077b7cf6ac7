"""The ``tflite`` MLflow flavor: save, log and load .tflite models, and their pyfunc wrapper.

Shaped like ``mlflow.onnx``: the model directory holds ``model.tflite`` and an MLmodel file
whose ``tflite`` section records the model file, the LiteRT runtime version, the quantization
mode and the input/output tensors. The ``python_function`` flavor loads it with
:func:`_load_pyfunc`, which quantizes float input and dequantizes integer output.

A saved model carries this package in its ``code/`` directory (MLflow's ``code_paths``), so it
loads and serves where ``mlflow-tflite`` is not installed (it is not published on PyPI); its
requirements are only the LiteRT interpreter, numpy and pandas (and tensorflow for Flex models).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mlflow import pyfunc as mlflow_pyfunc  # not "pyfunc": that is this package's submodule
from mlflow.models import Model, ModelInputExample, ModelSignature
from mlflow.models.model import MLMODEL_FILE_NAME
from mlflow.models.utils import _save_example
from mlflow.tracking._model_registry import DEFAULT_AWAIT_MAX_SLEEP_SECONDS
from mlflow.tracking.artifact_utils import _download_artifact_from_uri
from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec
from mlflow.utils.environment import (
    _CONDA_ENV_FILE_NAME,
    _CONSTRAINTS_FILE_NAME,
    _PYTHON_ENV_FILE_NAME,
    _REQUIREMENTS_FILE_NAME,
    _mlflow_conda_env,
    _process_conda_env,
    _process_pip_requirements,
    _PythonEnv,
    _validate_env_arguments,
)
from mlflow.utils.file_utils import get_total_file_size, write_to
from mlflow.utils.model_utils import (
    _add_code_from_conf_to_system_path,
    _copy_extra_files,
    _get_flavor_configuration,
    _validate_and_copy_code_paths,
    _validate_code_paths,
    _validate_and_prepare_target_save_path,
)
from mlflow.utils.requirements_utils import _get_pinned_requirement

from mlflow_tflite.flavor import runtime
from mlflow_tflite.flavor import flatbuffer
from mlflow_tflite.errors import TFLiteError
from mlflow_tflite.flavor.pyfunc import DEFAULT_BATCH_SIZE, TFLiteModelWrapper, checked_num_threads
from mlflow_tflite.options import parse_enum
from mlflow_tflite.quant_modes import QuantMode

FLAVOR_NAME = "tflite"
MODEL_FILE_NAME = "model.tflite"
QUANTIZATION_MODES = tuple(m.value for m in QuantMode)
# This package, copied into every saved model's code/ directory (see save_model).
PACKAGE_DIR = Path(__file__).resolve().parent.parent


def get_default_pip_requirements(flex: bool = False) -> list[str]:
    """Pip requirements of a model of this flavor: what its pyfunc wrapper imports.

    ``mlflow-tflite`` itself is not listed: the model carries the package in its ``code/``
    directory (it is not on PyPI). MLflow adds its own ``mlflow==<version>`` pin when saving.

    Args:
        flex: the model has Flex (SELECT_TF_OPS) ops, so TensorFlow's interpreter is needed too.

    Returns:
        Pinned requirement strings, e.g. ``["ai-edge-litert==2.3.0", "numpy==2.4.6", "pandas==3.1.1"]``.
    """
    packages = ["ai-edge-litert", "numpy", "pandas"] + (["tensorflow"] if flex else [])
    return [_get_pinned_requirement(package) for package in packages]


def get_default_conda_env(flex: bool = False) -> dict:
    """Conda environment (a dict as in ``conda.yaml``) holding :func:`get_default_pip_requirements`."""
    return _mlflow_conda_env(additional_pip_deps=get_default_pip_requirements(flex))


def read_tflite_bytes(tflite_model: bytes | str | os.PathLike) -> bytes:
    """The flatbuffer bytes of ``tflite_model`` (bytes, or the path of a .tflite file).

    Raises:
        TFLiteError: the path does not exist or the value is neither bytes nor a path.
    """
    if isinstance(tflite_model, (bytes, bytearray, memoryview)):
        return bytes(tflite_model)
    if isinstance(tflite_model, (str, os.PathLike)):
        path = Path(tflite_model)
        if not path.is_file():
            raise TFLiteError(f"TFLite model file {str(path)!r} does not exist; pass the path of a .tflite file")
        return path.read_bytes()
    raise TFLiteError(
        f"tflite_model of type {type(tflite_model).__name__} is not supported; "
        "pass the flatbuffer bytes or the path of a .tflite file"
    )


def infer_signature_from_tensors(outputs: list[runtime.TensorInfo]) -> ModelSignature:
    """Signature of the pyfunc interface: float32 outputs and the ``batch_size`` param, no input schema.

    The input is left out on purpose: MLflow enforces a tensor input schema before the pyfunc
    runs, strictly (float64 refused for float32, no DataFrame of one column per value, no dict
    for an unnamed input). The pyfunc checks the input itself against the model's tensors
    (recorded in the flavor's ``inputs``) and casts it, as MLflow's onnx flavor casts float64.
    Quantized outputs are dequantized, so they appear as float32. A single output is unnamed;
    several are named. The params schema declares ``batch_size`` (long, default 256): without
    it MLflow drops the ``params`` of ``predict`` before they reach the wrapper.

    Args:
        outputs: the model's output tensors, from :func:`runtime.io_tensors`.

    Returns:
        ``ModelSignature(inputs=None, outputs=<float32 TensorSpec of shape (-1, *shape[1:])>,
        params=ParamSchema([ParamSpec("batch_size", "long", 256)]))``.
    """
    named = len(outputs) > 1
    schema = Schema(
        [TensorSpec(np.dtype(np.float32), (-1, *t.shape[1:]), t.name if named else None) for t in outputs]
    )
    params = ParamSchema([ParamSpec("batch_size", "long", DEFAULT_BATCH_SIZE)])
    return ModelSignature(inputs=None, outputs=schema, params=params)


def _code_paths_with_package(code_paths: list | None) -> list[str]:
    """The user's ``code_paths`` plus this package's directory (unless they pass an ``mlflow_tflite`` of their own).

    Raises:
        TypeError: ``code_paths`` is not a list (MLflow's own check).
    """
    _validate_code_paths(code_paths)
    user_paths = [str(p) for p in code_paths or []]
    if any(Path(p).name == PACKAGE_DIR.name for p in user_paths):
        return user_paths
    return [str(PACKAGE_DIR), *user_paths]


def save_model(
    tflite_model: bytes | str | os.PathLike,
    path: str | os.PathLike,
    conda_env=None,
    code_paths=None,
    mlflow_model: Model | None = None,
    signature: ModelSignature | None = None,
    input_example: ModelInputExample | None = None,
    pip_requirements=None,
    extra_pip_requirements=None,
    metadata: dict[str, Any] | None = None,
    extra_files=None,
    quantization: str | None = None,
    num_threads: int = 1,
    quantization_backend: str = "converter",
    quantization_recipe: str | None = None,
    **kwargs,
) -> None:
    """Save a .tflite model as an MLflow model directory.

    The flatbuffer is loaded into the LiteRT interpreter first; nothing is written unless it
    loads. A model with Flex (SELECT_TF_OPS) ops is checked by parsing the flatbuffer instead
    (no Python interpreter here can run Flex ops; see ``runtime.FLEX_UNAVAILABLE``); its
    flavor records ``flex_ops: true`` and its requirements add tensorflow.

    Args:
        tflite_model: flatbuffer bytes, or the path of a .tflite file.
        path: local directory to create (must not exist or be empty).
        conda_env, pip_requirements, extra_pip_requirements, metadata, extra_files:
            as in every MLflow flavor (see ``mlflow.onnx.save_model``).
        code_paths: extra files or directories for the model's ``code/`` directory (a list);
            this package (``mlflow_tflite``, without ``__pycache__``) is always copied there too,
            so the model loads without ``mlflow-tflite`` installed.
        mlflow_model: the :class:`mlflow.models.Model` this flavor is added to.
        signature: pyfunc signature; when ``None``, the outputs and a ``batch_size`` param
            (no input schema: the pyfunc checks and casts its input, see
            :func:`infer_signature_from_tensors`). A given signature is kept as is: MLflow then
            enforces its inputs strictly, and without a params schema drops
            ``params={"batch_size": ...}`` at predict time.
        input_example: an example input (numpy array or dict of arrays).
        quantization: the quantization mode (one of :data:`QUANTIZATION_MODES`); inferred from
            the tensors when ``None``.
        num_threads: interpreter threads the pyfunc uses (>= 1).
        quantization_backend: what quantized it: ``converter`` (TFLiteConverter) or ``litert``
            (the LiteRT Quantizer).
        quantization_recipe: the LiteRT Quantizer recipe as JSON text, or ``None``.

    Raises:
        TFLiteError: the bytes are not a loadable TFLite model, ``quantization`` is unknown or
            ``num_threads`` is not a positive integer (nothing is written).
        TypeError: ``code_paths`` is not a list.
    """
    num_threads = checked_num_threads(num_threads)
    model_bytes = read_tflite_bytes(tflite_model)
    flex = bool(flatbuffer.flex_ops(model_bytes))
    if flex:
        inputs, outputs = flatbuffer.static_io_tensors(model_bytes)
    else:
        interpreter = runtime.make_interpreter(model_bytes)
        inputs, outputs = runtime.io_tensors(interpreter)
    if quantization is None:
        quantization = "none" if flex else runtime.quantization_mode(interpreter)
    quantization = parse_enum(QuantMode, quantization, "quantization").value  # a plain string in the MLmodel
    _validate_env_arguments(conda_env, pip_requirements, extra_pip_requirements)
    code_paths = _code_paths_with_package(code_paths)

    path = os.path.abspath(path)
    _validate_and_prepare_target_save_path(path)
    code_dir_subpath = _validate_and_copy_code_paths(code_paths, path)
    mlflow_model = mlflow_model or Model()
    mlflow_model.signature = signature or infer_signature_from_tensors(outputs)
    if input_example is not None:
        _save_example(mlflow_model, input_example, path)
    if metadata is not None:
        mlflow_model.metadata = metadata
    Path(path, MODEL_FILE_NAME).write_bytes(model_bytes)
    mlflow_pyfunc.add_to_model(
        mlflow_model,
        loader_module="mlflow_tflite.flavor",
        data=MODEL_FILE_NAME,
        conda_env=_CONDA_ENV_FILE_NAME,
        python_env=_PYTHON_ENV_FILE_NAME,
        code=code_dir_subpath,
    )
    mlflow_model.add_flavor(
        FLAVOR_NAME,
        model_file=MODEL_FILE_NAME,
        runtime=runtime.RUNTIME_PACKAGE,
        runtime_version=runtime.runtime_version(),
        quantization=quantization,
        flex_ops=flex,
        num_threads=num_threads,
        quantization_backend=str(quantization_backend),
        quantization_recipe=quantization_recipe,
        inputs=[t.to_dict() for t in inputs],
        outputs=[t.to_dict() for t in outputs],
        code=code_dir_subpath,
        **_copy_extra_files(extra_files, path),
    )
    if size := get_total_file_size(path):
        mlflow_model.model_size_bytes = size
    mlflow_model.save(os.path.join(path, MLMODEL_FILE_NAME))
    _write_environment(path, flex, conda_env, pip_requirements, extra_pip_requirements)


def _write_environment(path: str, flex: bool, conda_env, pip_requirements, extra_pip_requirements) -> None:
    """Write conda.yaml, requirements.txt, python_env.yaml (and constraints.txt) as MLflow does."""
    if conda_env is None:
        default_reqs = get_default_pip_requirements(flex) if pip_requirements is None else None
        conda_env, pip_requirements, pip_constraints = _process_pip_requirements(
            default_reqs, pip_requirements, extra_pip_requirements
        )
    else:
        conda_env, pip_requirements, pip_constraints = _process_conda_env(conda_env)
    with open(os.path.join(path, _CONDA_ENV_FILE_NAME), "w") as f:
        yaml.safe_dump(conda_env, stream=f, default_flow_style=False)
    if pip_constraints:
        write_to(os.path.join(path, _CONSTRAINTS_FILE_NAME), "\n".join(pip_constraints))
    write_to(os.path.join(path, _REQUIREMENTS_FILE_NAME), "\n".join(pip_requirements))
    _PythonEnv.current().to_yaml(os.path.join(path, _PYTHON_ENV_FILE_NAME))


def log_model(
    tflite_model: bytes | str | os.PathLike,
    artifact_path: str | None = None,
    conda_env=None,
    code_paths=None,
    registered_model_name: str | None = None,
    signature: ModelSignature | None = None,
    input_example: ModelInputExample | None = None,
    await_registration_for: int = DEFAULT_AWAIT_MAX_SLEEP_SECONDS,
    pip_requirements=None,
    extra_pip_requirements=None,
    metadata: dict[str, Any] | None = None,
    extra_files=None,
    quantization: str | None = None,
    num_threads: int = 1,
    name: str | None = None,
    params: dict[str, Any] | None = None,
    tags: dict[str, Any] | None = None,
    model_type: str | None = None,
    step: int = 0,
    model_id: str | None = None,
    **kwargs,
):
    """Log a .tflite model as an MLflow model (flavors ``tflite`` and ``python_function``).

    Arguments are those of :func:`save_model` plus MLflow's usual logging ones (``name``,
    ``registered_model_name``, ``await_registration_for``, ``params``, ``tags``, ...).

    Returns:
        :class:`mlflow.models.model.ModelInfo` of the logged model.

    Raises:
        TFLiteError: the model is not a loadable TFLite flatbuffer, or ``num_threads`` is not a
            positive integer (nothing is logged).
    """
    checked_num_threads(num_threads)  # before Model.log creates a logged model
    return Model.log(
        artifact_path=artifact_path,
        name=name,
        flavor=sys.modules[__name__],  # this module is the flavor (save_model, load_model)
        tflite_model=read_tflite_bytes(tflite_model),
        conda_env=conda_env,
        code_paths=code_paths,
        registered_model_name=registered_model_name,
        signature=signature,
        input_example=input_example,
        await_registration_for=await_registration_for,
        pip_requirements=pip_requirements,
        extra_pip_requirements=extra_pip_requirements,
        metadata=metadata,
        extra_files=extra_files,
        quantization=quantization,
        num_threads=num_threads,
        params=params,
        tags=tags,
        model_type=model_type,
        step=step,
        model_id=model_id,
        **kwargs,
    )


def _local_model_file(model_uri: str, dst_path: str | None = None) -> tuple[Path, dict]:
    """Download an MLflow model of this flavor; return (path of model.tflite, flavor config)."""
    local_path = _download_artifact_from_uri(artifact_uri=model_uri, output_path=dst_path)
    flavor_conf = _get_flavor_configuration(model_path=local_path, flavor_name=FLAVOR_NAME)
    _add_code_from_conf_to_system_path(local_path, flavor_conf)
    return Path(local_path) / flavor_conf.get("model_file", MODEL_FILE_NAME), flavor_conf


def load_model(model_uri: str, dst_path: str | None = None, num_threads: int | None = None):
    """Load a ``tflite`` MLflow model as a ready interpreter (tensors allocated).

    Args:
        model_uri: ``runs:/<run_id>/<name>``, ``models:/<name>@<alias>``, a local path, ...
        dst_path: local directory to download to (default: a temporary one).
        num_threads: interpreter threads (>= 1); default the one recorded in the flavor.

    Returns:
        ``ai_edge_litert.interpreter.Interpreter`` (``tf.lite.Interpreter`` for Flex models).

    Raises:
        TFLiteError: ``num_threads`` is not a positive integer.
    """
    if num_threads is not None:
        checked_num_threads(num_threads)
    model_file, conf = _local_model_file(model_uri, dst_path)
    return runtime.make_interpreter(model_file.read_bytes(), num_threads or conf.get("num_threads", 1))


def _load_pyfunc(path: str):
    """Called by ``mlflow.pyfunc.load_model``: ``path`` is the model file (or its directory)."""
    model_path = Path(path)
    if model_path.is_dir():
        model_path = model_path / MODEL_FILE_NAME
    conf = {}
    mlmodel = model_path.parent / MLMODEL_FILE_NAME
    if mlmodel.exists():
        conf = Model.load(str(mlmodel)).flavors.get(FLAVOR_NAME, {})
    return TFLiteModelWrapper(model_path.read_bytes(), num_threads=conf.get("num_threads", 1))
