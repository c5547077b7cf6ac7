"""The tflite flavor: save/log/load, pyfunc round trip for every quantization mode, signatures."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import mlflow
import mlflow_tflite
from mlflow_tflite.flavor import runtime
from mlflow_tflite.errors import TFLiteError


def raw_dequantized_output(tflite_model: bytes, x: np.ndarray) -> np.ndarray:
    """Reference: the interpreter invoked by hand, one example at a time, output dequantized."""
    interpreter = runtime.make_interpreter(tflite_model)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    results = []
    for row in x:
        value = row[np.newaxis]
        if inp["dtype"] != np.float32:
            scale, zero_point = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            value = np.clip(np.round(value / scale + zero_point), info.min, info.max).astype(inp["dtype"])
        interpreter.resize_tensor_input(inp["index"], list(value.shape))
        interpreter.allocate_tensors()
        interpreter.set_tensor(inp["index"], value)
        interpreter.invoke()
        raw = interpreter.get_tensor(out["index"])
        if out["dtype"] != np.float32:
            scale, zero_point = out["quantization"]
            raw = (raw.astype(np.float32) - zero_point) * scale
        results.append(raw[0])
    return np.stack(results)


MODES = ["none-s0-8px", "dynamic-s0-8px", "float16-s0-8px", "int8-s0-8px", "int8_full-s0-8px",
         "int8_full-uint8-s0-8px", "int16x8-s0-8px"]


@pytest.mark.parametrize("name", MODES)
def test_pyfunc_round_trip_every_mode(name, converted, demo_prepared, tmp_path):
    variant, tflite_model = converted[name]
    x_test, y_test = demo_prepared.dataset.x_test, demo_prepared.dataset.y_test
    path = tmp_path / "model"
    mlflow_tflite.save_model(tflite_model, path, input_example=x_test[:2], quantization=variant.quant)

    model = mlflow.pyfunc.load_model(str(path))
    predicted = model.predict(x_test)
    expected = raw_dequantized_output(tflite_model, x_test)
    np.testing.assert_allclose(predicted, expected, rtol=0, atol=1e-6)
    assert predicted.shape == (len(x_test), 10) and predicted.dtype == np.float32

    float_model = converted["none-s0-8px"][1]
    float_top1 = raw_dequantized_output(float_model, x_test).argmax(1)
    agreement = np.mean(predicted.argmax(1) == float_top1)
    assert agreement >= 0.95, f"{name}: top-1 agreement with the float model {agreement:.3f}"
    assert np.mean(predicted.argmax(1) == y_test) >= 0.95


def test_flavor_configuration_records_model_and_tensors(converted, tmp_path):
    variant, tflite_model = converted["int8_full-s0-8px"]
    mlflow_tflite.save_model(tflite_model, tmp_path / "m")
    mlmodel = yaml.safe_load((tmp_path / "m" / "MLmodel").read_text())
    conf = mlmodel["flavors"]["tflite"]
    assert conf["model_file"] == "model.tflite"
    assert (tmp_path / "m" / "model.tflite").read_bytes() == tflite_model
    assert conf["quantization"] == "int8_full"  # inferred from the tensors
    assert conf["runtime_version"] == runtime.runtime_version()
    assert conf["inputs"][0]["dtype"] == "int8" and conf["inputs"][0]["shape"] == [-1, 8, 8, 1]
    assert conf["outputs"][0]["dtype"] == "int8" and conf["outputs"][0]["scale"] > 0
    assert mlmodel["flavors"]["python_function"]["loader_module"] == "mlflow_tflite.flavor"
    signature = mlmodel["signature"]
    # No input schema: MLflow would enforce it strictly (float64 refused); the pyfunc checks its input.
    assert signature["inputs"] is None
    assert json.loads(signature["outputs"]) == [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 10]}}]
    # The plugin travels in the model's code/ directory; it is not a requirement (not on PyPI).
    assert mlmodel["flavors"]["python_function"]["code"] == "code" and conf["code"] == "code"
    requirements = (tmp_path / "m" / "requirements.txt").read_text().splitlines()
    assert not [r for r in requirements if r.startswith("mlflow-tflite")], requirements
    names = {r.split("==")[0] for r in requirements}
    assert {"mlflow", "ai-edge-litert", "numpy", "pandas"} <= names and "tensorflow" not in names, requirements
    code = tmp_path / "m" / "code" / "mlflow_tflite"
    assert (code / "flavor" / "__init__.py").read_text() == Path(mlflow_tflite.flavor.__file__).read_text()
    assert (code / "flavor" / "runtime.py").is_file() and (code / "errors.py").is_file()
    assert not list(code.rglob("__pycache__"))


@pytest.mark.parametrize("name", MODES)
def test_quantization_mode_is_inferred(name, converted):
    variant, tflite_model = converted[name]
    assert runtime.quantization_mode(runtime.make_interpreter(tflite_model)) == variant.quant


def test_int8_model_internal_tensors_are_int8(converted):
    interpreter = runtime.make_interpreter(converted["int8-s0-8px"][1])
    ops = interpreter._get_ops_details()
    conv_ops = [op for op in ops if op["op_name"] in ("CONV_2D", "FULLY_CONNECTED")]
    assert conv_ops
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    for op in conv_ops:
        assert all(details[i]["dtype"] == np.int8 for i in op["inputs"][:2]), op
        assert all(details[i]["dtype"] == np.int8 for i in op["outputs"]), op


def test_pyfunc_accepts_dataframe_and_path(converted, demo_prepared, tmp_path):
    _, tflite_model = converted["dynamic-s0-8px"]
    file = tmp_path / "digits.tflite"
    file.write_bytes(tflite_model)
    mlflow_tflite.save_model(str(file), tmp_path / "m")
    model = mlflow.pyfunc.load_model(str(tmp_path / "m"))
    x = demo_prepared.dataset.x_test[:20]
    # Through MLflow's schema enforcement: one column holding an image per row.
    column = pd.DataFrame({"image": list(x)})
    np.testing.assert_allclose(model.predict(column), model.predict(x), atol=1e-6)
    # The raw wrapper also takes flattened features, one column per value.
    wrapper = mlflow_tflite.flavor._load_pyfunc(str(tmp_path / "m"))
    np.testing.assert_allclose(wrapper.predict(pd.DataFrame(x.reshape(20, -1))), model.predict(x), atol=1e-6)


def test_pyfunc_batch_size_param_reaches_the_interpreter(converted, demo_prepared, tmp_path):
    mlflow_tflite.save_model(converted["dynamic-s0-8px"][1], tmp_path / "m")
    assert mlflow.models.Model.load(str(tmp_path / "m")).signature.params.to_dict() == [
        {"name": "batch_size", "type": "long", "default": 256, "shape": None}
    ]
    model = mlflow.pyfunc.load_model(str(tmp_path / "m"))
    x = demo_prepared.dataset.x_test[:20]
    interpreter = model.get_raw_model()  # this thread's interpreter: its input keeps the last batch's shape
    expected = model.predict(x)
    assert tuple(interpreter.get_input_details()[0]["shape"]) == (20, 8, 8, 1)  # default 256 rows per call
    np.testing.assert_allclose(model.predict(x, params={"batch_size": 3}), expected, atol=1e-6)
    assert tuple(interpreter.get_input_details()[0]["shape"]) == (2, 8, 8, 1)  # 20 = 6 x 3 + 2
    for bad in (0, -4):
        with pytest.raises(TFLiteError, match=f"batch_size {bad} ") as error:
            model.predict(x, params={"batch_size": bad})
        assert "\n" not in error.value.message


def test_user_signature_is_kept(converted, tmp_path):
    signature = mlflow.models.infer_signature(np.zeros((1, 8, 8, 1), np.float32), np.zeros((1, 10), np.float32))
    mlflow_tflite.save_model(converted["none-s0-8px"][1], tmp_path / "m", signature=signature)
    assert mlflow.models.Model.load(str(tmp_path / "m")).signature == signature


def _serial_and_threaded(model, x, threads: int, calls: int):
    """Predictions of ``calls`` batches per thread, run serially and from ``threads`` threads at once."""
    jobs = [(t, c, 1 + (7 * t + 13 * c) % 40) for t in range(threads) for c in range(calls)]
    serial = {(t, c): model.predict(x[:n]) for t, c, n in jobs}
    threaded, errors = {}, []
    start = threading.Barrier(threads)

    def work(thread: int):
        start.wait()
        for t, c, n in jobs:
            if t == thread:
                try:
                    threaded[(t, c)] = model.predict(x[:n], params={"batch_size": 1 + c % 16})
                except Exception as error:  # counted, not raised: the test reports how many failed
                    errors.append(f"{type(error).__name__}: {error}"[:200])

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return serial, threaded, errors


def test_pyfunc_predict_is_thread_safe(converted, demo_prepared, tmp_path):
    mlflow_tflite.save_model(converted["int8_full-s0-8px"][1], tmp_path / "m")
    model = mlflow.pyfunc.load_model(str(tmp_path / "m"))
    serial, threaded, errors = _serial_and_threaded(model, demo_prepared.dataset.x_test, threads=8, calls=50)
    assert not errors, f"{len(errors)} of 400 concurrent predict calls failed, e.g. {errors[:3]}"
    for key, expected in serial.items():
        np.testing.assert_array_equal(threaded[key], expected, err_msg=str(key))


def test_user_code_paths_are_merged_with_the_package(converted, tmp_path):
    helper = tmp_path / "my_helpers.py"
    helper.write_text("VALUE = 42\n")
    mlflow_tflite.save_model(converted["none-s0-8px"][1], tmp_path / "m", code_paths=[str(helper)])
    assert (tmp_path / "m" / "code" / "my_helpers.py").read_text() == "VALUE = 42\n"
    assert (tmp_path / "m" / "code" / "mlflow_tflite" / "flavor" / "__init__.py").is_file()
    with pytest.raises(TypeError, match="code_paths should be a list"):
        mlflow_tflite.save_model(converted["none-s0-8px"][1], tmp_path / "m2", code_paths=str(helper))


# Runs with `python -I -S`: no site module, so the editable install's import hook (a .pth file)
# is not loaded; the venv's site-packages is added by hand, so only the model's code/ can
# provide mlflow_tflite.
_LOAD_WITHOUT_PLUGIN = """
import importlib.util, sys
sys.path.append(sys.argv[1])
assert importlib.util.find_spec("mlflow_tflite") is None, "mlflow_tflite importable before loading"
import numpy as np, mlflow.pyfunc
model = mlflow.pyfunc.load_model(sys.argv[2])
out = model.predict(np.load(sys.argv[3]), params={"batch_size": 5})
np.save(sys.argv[4], out)
print(sys.modules["mlflow_tflite"].__file__)
"""


def test_saved_model_loads_where_the_plugin_is_not_installed(converted, demo_prepared, tmp_path):
    mlflow_tflite.save_model(converted["int8-s0-8px"][1], tmp_path / "m")
    x = demo_prepared.dataset.x_test[:12]
    np.save(tmp_path / "x.npy", x)
    site_packages = sysconfig.get_paths()["purelib"]
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _LOAD_WITHOUT_PLUGIN, site_packages, str(tmp_path / "m"),
         str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    loaded_from = Path(done.stdout.strip().splitlines()[-1])
    assert loaded_from == tmp_path / "m" / "code" / "mlflow_tflite" / "__init__.py"
    expected = mlflow.pyfunc.load_model(str(tmp_path / "m")).predict(x)
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), expected)


def test_log_model_and_load_model_return_interpreter(converted, demo_prepared, tracking):
    _, tflite_model = converted["float16-s0-8px"]
    x = demo_prepared.dataset.x_test[:2]
    with mlflow.start_run():
        info = mlflow_tflite.log_model(tflite_model, name="model", input_example=x, registered_model_name="m16")
    assert info.flavors["tflite"]["quantization"] == "float16"
    interpreter = mlflow_tflite.load_model("models:/m16/1")
    inputs, outputs = runtime.io_tensors(interpreter)
    assert inputs[0].shape == (-1, 8, 8, 1) and outputs[0].shape == (-1, 10)
    pyfunc_out = mlflow.pyfunc.load_model(info.model_uri).predict(x)
    np.testing.assert_allclose(pyfunc_out, runtime.run(interpreter, [x])[0], atol=1e-6)


def test_corrupt_tflite_is_rejected_and_nothing_written(tmp_path):
    target = tmp_path / "m"
    with pytest.raises(TFLiteError, match="not a valid TFLite flatbuffer"):
        mlflow_tflite.save_model(b"TFL3" + b"\x00garbage" * 50, target)
    assert not target.exists()
    with pytest.raises(TFLiteError, match="does not exist"):
        mlflow_tflite.save_model(str(tmp_path / "missing.tflite"), target)


def test_pyfunc_rejects_wrong_shape(converted, tmp_path):
    mlflow_tflite.save_model(converted["none-s0-8px"][1], tmp_path / "m")
    wrapper = mlflow_tflite.flavor._load_pyfunc(str(tmp_path / "m" / "model.tflite"))
    with pytest.raises(TFLiteError, match=r"shape \(3, 9, 9, 1\)"):
        wrapper.predict(np.zeros((3, 9, 9, 1), np.float32))
