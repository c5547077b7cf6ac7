"""What the tflite pyfunc takes, in process and through `mlflow models serve`: float64, DataFrames,
dicts keyed by input name; NaN refused by integer-input models; num_threads checked on save."""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

import mlflow
import mlflow_tflite
from mlflow_tflite.errors import TFLiteError
from servers import MLFLOW, free_port, subprocess_env, wait_until_answering
from test_flavor import raw_dequantized_output

INTEGER_IO = "int8_full-s0-8px"  # int8 input and output tensors: the pyfunc quantizes float input
FLOAT_IO = "none-s0-8px"  # float32 input tensor, float arithmetic throughout
ROWS = 24


def _nan_message(dtype: str) -> str:
    return (f"input 'image' has 2 NaN or Inf value(s) but the model takes {dtype} input, which cannot hold "
            "them; replace them (e.g. with numpy.nan_to_num) or drop those rows")


def _with_nan_and_inf(x: np.ndarray) -> np.ndarray:
    """A copy of ``x`` with NaN in row 1 and +Inf in row 4."""
    bad = x.copy()
    bad[1, 2, 3, 0] = np.nan
    bad[4, 0, 0, 0] = np.inf
    return bad


@pytest.fixture(scope="module")
def saved(converted, tmp_path_factory) -> dict[str, Path]:
    """The integer-I/O, uint8-I/O and float-input digits models saved with save_model: {name: dir}."""
    folder = tmp_path_factory.mktemp("pyfunc-input")
    for name in (INTEGER_IO, "int8_full-uint8-s0-8px", FLOAT_IO):
        mlflow_tflite.save_model(converted[name][1], folder / name)
    return {name: folder / name for name in (INTEGER_IO, "int8_full-uint8-s0-8px", FLOAT_IO)}


@pytest.fixture(scope="module")
def images(demo_prepared) -> np.ndarray:
    """float32 (24, 8, 8, 1) digits in [0, 1]."""
    x = demo_prepared.dataset.x_test[:ROWS]
    assert x.dtype == np.float32 and x.shape == (ROWS, 8, 8, 1)
    return x


def _forms(x: np.ndarray) -> dict[str, object]:
    """The same images as a user may pass them (all but the first in float64)."""
    x64 = x.astype(np.float64)
    return {
        "float64 array": x64,
        "DataFrame, one column per value": pd.DataFrame(x64.reshape(len(x), -1)),
        "DataFrame, a column of arrays": pd.DataFrame({"pixels": list(x64)}),
        "DataFrame, a column of flat lists": pd.DataFrame({"pixels": [row.ravel().tolist() for row in x64]}),
        "dict keyed by input name": {"image": x64},
        "nested list": x64.tolist(),
    }


@pytest.mark.parametrize("name", [INTEGER_IO, FLOAT_IO])
def test_pyfunc_takes_float64_dataframes_and_dicts_as_float32(name, saved, converted, images):
    model = mlflow.pyfunc.load_model(str(saved[name]))
    assert model.metadata.signature.inputs is None  # MLflow leaves the input to the wrapper
    expected = model.predict(images)
    np.testing.assert_allclose(expected, raw_dequantized_output(converted[name][1], images), rtol=0, atol=1e-6)
    for form, data in _forms(images).items():
        np.testing.assert_array_equal(model.predict(data), expected, err_msg=form)
    np.testing.assert_array_equal(model.predict({"image": images}, params={"batch_size": 5}), expected)


@pytest.mark.parametrize("name, dtype", [(INTEGER_IO, "int8"), ("int8_full-uint8-s0-8px", "uint8")])
def test_nan_or_inf_into_an_integer_input_model_is_refused(name, dtype, saved, images):
    model = mlflow.pyfunc.load_model(str(saved[name]))
    for data in (_with_nan_and_inf(images), pd.DataFrame(_with_nan_and_inf(images).reshape(ROWS, -1))):
        with pytest.raises(TFLiteError) as error:
            model.predict(data)
        assert error.value.message == _nan_message(dtype)
        assert error.value.error_code == "INVALID_PARAMETER_VALUE"


def test_nan_through_a_float_input_model_passes_through(saved, images):
    model = mlflow.pyfunc.load_model(str(saved[FLOAT_IO]))
    predicted = model.predict(_with_nan_and_inf(images))
    clean = model.predict(images)
    assert np.isnan(predicted[[1, 4]]).all()  # the model's own arithmetic on NaN and Inf
    others = [i for i in range(ROWS) if i not in (1, 4)]
    np.testing.assert_array_equal(predicted[others], clean[others])


def test_pyfunc_refuses_input_it_cannot_read(saved, images):
    model = mlflow.pyfunc.load_model(str(saved[INTEGER_IO]))
    cases = {
        "a DataFrame of 63 columns does not hold input 'image' of shape (?, 8, 8, 1); pass 64 columns (one per value)":
            pd.DataFrame(images.reshape(ROWS, -1)[:, :63]),
        "input 'image' is not an array of numbers of shape (?, 8, 8, 1); pass numeric arrays with the same number "
        "of values in every row": np.array([["a"]]),
        "DataFrame column 'pixels' does not hold rows of input 'image' of shape (?, 8, 8, 1); give each row one "
        "example, every row the same number of values": pd.DataFrame({"pixels": [[0.0] * 64, [0.0] * 63]}),
    }
    for message, data in cases.items():
        with pytest.raises(TFLiteError) as error:
            model.predict(data)
        assert error.value.message == message


def test_a_given_input_schema_is_still_enforced_by_mlflow(converted, images, tmp_path):
    """Models saved before (or with a signature of the user's) keep MLflow's strict float32 check."""
    signature = mlflow.models.infer_signature(images, np.zeros((1, 10), np.float32))
    mlflow_tflite.save_model(converted[INTEGER_IO][1], tmp_path / "m", signature=signature)
    model = mlflow.pyfunc.load_model(str(tmp_path / "m"))
    np.testing.assert_allclose(model.predict(images), raw_dequantized_output(converted[INTEGER_IO][1], images),
                               rtol=0, atol=1e-6)
    with pytest.raises(mlflow.exceptions.MlflowException, match="dtype of input float64 does not match"):
        model.predict(images.astype(np.float64))


@pytest.mark.parametrize("bad", [0, -2, 1.5, math.nan, True, "2"])
def test_save_model_refuses_a_bad_num_threads_before_writing(bad, converted, tmp_path):
    target = tmp_path / "m"
    with pytest.raises(TFLiteError) as error:
        mlflow_tflite.save_model(converted[FLOAT_IO][1], target, num_threads=bad)
    assert error.value.message == f"num_threads {bad!r} is not a positive integer; pass e.g. num_threads=1"
    assert not target.exists()


def test_load_model_refuses_a_bad_num_threads(saved):
    with pytest.raises(TFLiteError) as error:
        mlflow_tflite.load_model(str(saved[FLOAT_IO]), num_threads=-1)
    assert error.value.message == "num_threads -1 is not a positive integer; pass e.g. num_threads=1"


def test_log_model_refuses_a_bad_num_threads_before_logging(converted, tracking):
    with pytest.raises(TFLiteError) as error:
        mlflow_tflite.log_model(converted[FLOAT_IO][1], name="model", num_threads=0)
    assert error.value.message == "num_threads 0 is not a positive integer; pass e.g. num_threads=1"
    experiment = mlflow.get_experiment_by_name("Default")
    assert mlflow.search_runs([experiment.experiment_id]).empty
    assert not mlflow.search_logged_models([experiment.experiment_id], output_format="list")


@contextlib.contextmanager
def _serve(model_dir: Path, workdir: Path):
    """`mlflow models serve -m <model_dir> --env-manager local` on a free port; yields its base URL."""
    port = free_port()
    log_path = workdir / f"serve-{port}.log"
    env = subprocess_env(f"sqlite:///{workdir / 'mlflow.db'}")
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [MLFLOW, "models", "serve", "-m", str(model_dir), "--host", "127.0.0.1", "--port", str(port),
             "--env-manager", "local", "--workers", "1"],
            cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        problem = wait_until_answering(f"{base}/ping", server, 120)
        if problem:
            pytest.fail(f"model server {problem}:\n{log_path.read_text()[-4000:]}")
        yield base
    finally:
        server.terminate()
        server.wait(timeout=60)


@pytest.fixture(scope="module")
def served(saved, tmp_path_factory):
    """The base URL of the integer-I/O model served by `mlflow models serve --env-manager local`."""
    with _serve(saved[INTEGER_IO], tmp_path_factory.mktemp("serve")) as base:
        yield base


def _post(base: str, body: dict) -> requests.Response:
    # requests' json= refuses NaN; Python's json (as MLflow's server reads it) writes and reads it.
    return requests.post(f"{base}/invocations", data=json.dumps(body), timeout=60,
                         headers={"Content-Type": "application/json"})


def _payloads(x: np.ndarray) -> dict[str, dict]:
    flat = x.reshape(len(x), -1)
    return {
        "inputs": {"inputs": x.tolist()},
        "instances": {"instances": x.tolist()},
        "inputs dict keyed by input name": {"inputs": {"image": x.tolist()}},
        "dataframe_split, one column per value": {
            "dataframe_split": {"columns": [f"p{i}" for i in range(64)], "data": flat.tolist()}},
        "dataframe_split, a column of arrays": {
            "dataframe_split": {"columns": ["pixels"], "data": [[row.tolist()] for row in x]}},
        "inputs with params": {"inputs": x.tolist(), "params": {"batch_size": 5}},
    }


@pytest.mark.slow
def test_served_model_takes_every_payload_form(served, saved, images):
    expected = mlflow.pyfunc.load_model(str(saved[INTEGER_IO])).predict(images)
    for form, body in _payloads(images).items():
        response = _post(served, body)
        assert response.status_code == 200, f"{form}: {response.text[:500]}"
        np.testing.assert_array_equal(np.asarray(response.json()["predictions"], np.float32), expected,
                                      err_msg=form)


@pytest.mark.slow
def test_served_integer_input_model_answers_400_to_nan(served, images):
    bad = _with_nan_and_inf(images)
    for body in ({"inputs": bad.tolist()},
                 {"dataframe_split": {"columns": [f"p{i}" for i in range(64)], "data": bad.reshape(ROWS, -1).tolist()}}):
        response = _post(served, body)
        assert response.status_code == 400, response.text[:500]
        error = response.json()
        assert error["error_code"] == "INVALID_PARAMETER_VALUE"
        # MLflow's server puts "Failed to predict data '<the data>'. \nError: " before the model's message.
        assert error["message"].endswith("\nError: " + _nan_message("int8")), error["message"][-400:]
