"""Bad input at the edge: every one a single ``Error: ...`` line (exit status 1, no traceback) that
names the option (and the config file) and shows a value that passes, before any run is opened.

The table rows are the inputs a new-user test found (NaN and inf, config files of the wrong
shape or encoding, short or fractional labels, sizes, registry names, stores, Ray addresses).
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mlflow import MlflowClient
from mlflow_tflite.build.data_checks import check_resize_fits
from mlflow_tflite.build.mixed import MixedPrecision
from mlflow_tflite.build.qat import QatOptions
from mlflow_tflite.cli import CONFIG_SECTIONS, cli
from mlflow_tflite.errors import TFLiteError
from mlflow_tflite.options import RunSettings
from mlflow_tflite.sweep.config import SweepConfig
from mlflow_tflite.sweep.ray_executor import stderr_captured
from mlflow_tflite.track.selection import Tolerance
from mlflow_tflite.variants import Variant, expand_grid

ROOT = Path(__file__).resolve().parents[1]
LONG_NAME = "m" * 300


@pytest.fixture(scope="module")
def files(tmp_path_factory, digits):
    """Models, data sets and config files with one fault each."""
    import tf_keras

    folder = tmp_path_factory.mktemp("inputs")
    for name, activation in (("tiny.h5", "softmax"), ("logits.h5", None)):
        model = tf_keras.Sequential([tf_keras.Input((8, 8, 1)), tf_keras.layers.Flatten(),
                                     tf_keras.layers.Dense(10, activation=activation)])
        model.save(folder / name)
    x_train, x_test, y_train, y_test = digits.x_train[:64], digits.x_test[:32], digits.y_train[:64], digits.y_test[:32]
    out_of_range = y_train.copy()
    out_of_range[3] = 12
    arrays = {
        "short_y_train": {"y_train": y_train[:40]},
        "short_y_test": {"y_test": y_test[:20]},
        "float_labels": {"y_train": y_train + 0.5},
        "train_label_12": {"y_train": out_of_range},
    }
    for name, changed in arrays.items():
        np.savez(folder / f"{name}.npz", **{"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test,
                                            **changed})
    configs = {
        "list_value": "mixed_precision: {max_trials: [1, 2]}\n",
        "flag": "run: {no_register: maybe}\n",
        "nan": "qat: {qat_learning_rate: .nan}\n",
        "name": "run: {registered_model_name: a/b}\n",
        "zero_threads": "run: {num_threads: 0}\n",
    }
    for name, text in configs.items():
        (folder / f"{name}.yaml").write_text(text)
    (folder / "latin1.yaml").write_bytes("run: {registered_model_name: caf\xe9}\n".encode("latin-1"))
    return folder


def _no_runs_and_no_models() -> bool:
    client = MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments()]
    return (not experiments or client.search_runs(experiments) == []) and client.search_registered_models() == []


def _error_line(result) -> str:
    """The one ``Error:`` line, after checking it is the only one, the last line and no traceback."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error:")]
    assert result.exit_code == 1, result.output
    assert len(errors) == 1 and lines[-1] == errors[0], result.output
    assert "Traceback" not in result.output
    return errors[0]


# (command line, the whole error line); {d} is the folder of the `files` fixture.
CLI_CASES = [
    # NaN and inf
    (["sweep", "--quant", "int8", "--sparsity", "0", "--max-size-bytes", "nan"],
     "Error: max_size_bytes=nan is not a finite number; pass e.g. 1000000, or none for no budget"),
    (["sweep", "--quant", "int8", "--sparsity", "0", "--max-latency-ms", "nan"],
     "Error: max_latency_ms=nan is not a finite number; pass e.g. 5, or none for no budget"),
    (["convert", "--quant", "qat_int8", "--qat-learning-rate", "nan"],
     "Error: qat_learning_rate=nan is not a finite number; pass e.g. 0.0001, or none"),
    (["convert", "--max-accuracy-drop", "inf"],
     "Error: max_accuracy_drop=inf is not a finite number; pass e.g. 0.01 (an absolute fraction)"),
    (["convert", "--quant", "int8_mixed", "--max-trials", "inf"],
     "Error: max_trials=inf is not a finite number; pass e.g. 8, or none"),
    (["convert", "--calibration-samples", "inf"],
     "Error: calibration_samples=inf is not a finite number; pass e.g. 200 (100-500 is typical)"),
    (["convert", "--input-size", "inf"], "Error: input_size=inf is not a finite number; pass e.g. 96, or native"),
    (["sweep", "--quant", "int8", "--sparsity", "0,nan"], "Error: sparsity=nan is not a finite number; pass e.g. 0.5"),
    # config files: wrong shape, encoding, flags, NaN; the key, the section and the file named
    (["convert", "--quant", "int8_mixed", "--config", "{d}/list_value.yaml"],
     "Error: config section 'mixed_precision': max_trials=[1, 2] is a list; pass one value, e.g. 8 "
     "(config file '{d}/list_value.yaml')"),
    (["convert", "--config", "{d}/latin1.yaml"],
     "Error: config file '{d}/latin1.yaml' is not UTF-8 text (byte 0xe9 at offset 32); save it as UTF-8 YAML"),
    (["convert", "--config", "{d}/flag.yaml"],
     "Error: config section 'run': no_register='maybe' is not a boolean; pass true or false "
     "(config file '{d}/flag.yaml')"),
    (["convert", "--quant", "qat_int8", "--config", "{d}/nan.yaml"],
     "Error: config section 'qat': qat_learning_rate=nan is not a finite number; pass e.g. 0.0001, or none "
     "(config file '{d}/nan.yaml')"),
    (["convert", "--config", "{d}/zero_threads.yaml"],
     "Error: config section 'run': num_threads=0 must be >= 1; pass e.g. 1 (config file '{d}/zero_threads.yaml')"),
    (["convert", "--config", "{d}/name.yaml"],
     "Error: config section 'run': registered_model_name 'a/b' contains '/', which MLflow model names cannot "
     "contain; pass e.g. a-b (config file '{d}/name.yaml')"),
    # labels: length, whole numbers, range in the train split (with a logits model, task auto)
    (["convert", "--model", "{d}/tiny.h5", "--data", "{d}/short_y_train.npz"],
     "Error: y_train of '{d}/short_y_train.npz' has 40 labels but x_train has 64 examples; give one label per "
     "example"),
    (["convert", "--model", "{d}/tiny.h5", "--data", "{d}/short_y_test.npz"],
     "Error: y_test of '{d}/short_y_test.npz' has 20 labels but x_test has 32 examples; give one label per example"),
    (["convert", "--model", "{d}/tiny.h5", "--data", "{d}/float_labels.npz"],
     "Error: y_train of '{d}/float_labels.npz' has labels that are not whole numbers (e.g. 7.5 at index 0); labels "
     "are class indices 0, 1, 2, ... (for regression targets leave y_train and y_test out: fidelity only)"),
    (["convert", "--model", "{d}/logits.h5", "--data", "{d}/train_label_12.npz"],
     "Error: y_train of '{d}/train_label_12.npz' has labels in [0, 12] but the model has 10 classes; labels must "
     "be integers in [0, 9]; or pass task=fidelity if output 0 is not class scores"),
    (["convert", "--model", "{d}/tiny.h5", "--data", "{d}/train_label_12.npz"],
     "Error: y_train of '{d}/train_label_12.npz' has labels in [0, 12] but the model has 10 classes; labels must "
     "be integers in [0, 9]"),
    # hints that now pass their check
    (["convert", "--calibration-samples", "abc"],
     "Error: calibration_samples 'abc' is not a number; pass e.g. 200 (100-500 is typical)"),
    (["convert", "--sparsity", "abc"], "Error: sparsity 'abc' is not a number; pass e.g. 0.5"),
    (["sweep", "--quant", "int8", "--sparsity", ""],
     "Error: sparsity is an empty list; give at least one value, e.g. sparsity=0,0.5,0.8"),
    # input_size
    (["convert", "--input-size", "0"],
     "Error: input_size=0 is not a size; pass native for the model's own input size, or e.g. 96"),
    (["sweep", "--quant", "int8", "--sparsity", "0", "--input-size", "native,0"],
     "Error: input_size=0 is not a size; pass native for the model's own input size, or e.g. 96"),
    (["convert", "--input-size", "-5"], "Error: input_size=-5 must be >= 1; pass e.g. 96, or native"),
    (["convert", "--input-size", "96.5"], "Error: input_size=96.5 is not a whole number; pass e.g. 96, or native"),
    # registered model names, checked before any work
    (["convert", "--registered-model-name", "a/b"],
     "Error: registered_model_name 'a/b' contains '/', which MLflow model names cannot contain; pass e.g. a-b"),
    (["convert", "--registered-model-name", ""],
     "Error: registered_model_name is empty; pass a name, e.g. digits-cnn, or auto to name it after the source"),
    (["sweep", "--quant", "int8", "--sparsity", "0", "--registered-model-name", LONG_NAME],
     "Error: registered_model_name 'mmmmmmmmmmmmmmmmmmmm...' has 300 characters; MLflow stores at most 256, pass a "
     "shorter name, e.g. digits-cnn"),
    (["promote", "--model-uri", "runs:/0123/model", "--registered-model-name", "a:b"],
     "Error: registered_model_name 'a:b' contains ':', which MLflow model names cannot contain; pass e.g. a-b"),
    # integer options given a fraction
    (["sweep", "--quant", "int8", "--sparsity", "0", "--workers", "2.5"],
     "Error: workers=2.5 is not a whole number; pass e.g. 2"),
]


@pytest.mark.parametrize("args, message", CLI_CASES, ids=[" ".join(a)[:60] for a, _ in CLI_CASES])
def test_bad_input_is_one_line_before_any_run(args, message, files, tracking):
    result = CliRunner().invoke(cli, [a.format(d=files) for a in args])
    assert _error_line(result) == message.format(d=files)
    assert _no_runs_and_no_models()


def test_an_input_size_whose_images_cannot_fit_in_memory_is_refused_before_the_run(tracking, monkeypatch):
    """Digits: 1,797 images resized to 100000 x 100000 x 1 float32 need 72 TB; with 8 GB planned for,
    at most isqrt(4e9 / (1797 * 4)) = 745 pixels fit."""
    monkeypatch.setenv("MLFLOW_TFLITE_MEMORY_BYTES", "8000000000")
    message = ("Error: input_size=100000 needs about 72 TB for 1797 resized images (100000 x 100000 x 1 float32 "
               "each) but 8.0 GB of memory is available; pass input_size <= 745, or native")
    for command in (["convert"], ["sweep", "--quant", "int8", "--sparsity", "0"]):
        result = CliRunner().invoke(cli, [*command, "--input-size", "100000"])
        assert _error_line(result) == message
    assert _no_runs_and_no_models()
    with pytest.raises(TFLiteError) as error:
        check_resize_fits(10, 3, 1000, available=100)
    assert error.value.message == ("input_size=1000 needs about 120 MB for 10 resized images (1000 x 1000 x 3 "
                                   "float32 each) but 100 bytes of memory is available; pass native")


@pytest.mark.parametrize("make, message", [
    (lambda: Variant(input_size=96.5), "input_size=96.5 is not a whole number; pass e.g. 96, or None for the native size"),
    (lambda: Variant(input_size=0), "input_size=0 must be >= 1; pass e.g. 96, or None for the native size"),
    (lambda: Variant(calibration_samples=math.inf), "calibration_samples=inf is not a finite number; pass e.g. 200 "
                                                    "(100-500 is typical)"),
    (lambda: Variant(sparsity=math.nan), "sparsity=nan is not a finite number; pass e.g. 0.5"),
    (lambda: Variant(sparsity=1), "sparsity=1 is outside [0, 1); pass e.g. 0, 0.5 or 0.8"),
    (lambda: MixedPrecision(max_trials=2.5), "max_trials=2.5 is not a whole number; pass e.g. 8 (the first trial is "
                                             "full int8)"),
    (lambda: MixedPrecision(float_layers=["conv2d", 3]), "float_layers item 3 is not a name; pass names as text, "
                                                         "e.g. conv2d,dense"),
    (lambda: QatOptions(qat_learning_rate=math.nan), "qat_learning_rate=nan is not a finite number; pass e.g. 0.0001"),
    (lambda: QatOptions(qat_epochs=True), "qat_epochs=True is not a number; pass e.g. 2"),
    (lambda: Tolerance(max_accuracy_drop=math.inf), "max_accuracy_drop=inf is not a finite number; pass e.g. 0.01 "
                                                    "(an absolute fraction)"),
    (lambda: RunSettings(registered_model_name=" "), "registered_model_name is empty; pass a name, e.g. digits-cnn, "
                                                     "or auto to name it after the source"),
    (lambda: RunSettings(no_register="false"), "no_register='false' is not a boolean; pass true or false"),
    (lambda: SweepConfig([Variant()], max_size_bytes=math.nan), "max_size_bytes=nan is not a finite number; pass "
                                                                "e.g. 1000000, or none for no budget"),
    (lambda: SweepConfig([Variant()], workers=2.5), "workers=2.5 is not a whole number; pass e.g. 2"),
    (lambda: SweepConfig([Variant()], registered_model_name=".."), "registered_model_name '..' reads as a relative "
                                                                   "path, which MLflow refuses as a model name; pass "
                                                                   "e.g. digits-cnn"),
])
def test_bad_values_from_python_are_the_same_one_line_errors(make, message):
    with pytest.raises(TFLiteError) as error:
        make()
    assert error.value.message == message


def test_python_values_are_normalised_not_misread():
    assert MixedPrecision(float_layers="conv2d, dense").float_layers == ("conv2d", "dense")
    assert MixedPrecision(float_layers=["conv2d"]).float_layers == ("conv2d",)
    assert MixedPrecision(float_layers="").float_layers is None
    variant = Variant(input_size=96.0, calibration_samples=np.int64(100))
    assert (variant.input_size, variant.calibration_samples) == (96, 100)
    assert type(variant.input_size) is int and type(variant.calibration_samples) is int
    assert MixedPrecision(max_trials=3.0).max_trials == 3


def test_workers_are_capped_by_the_variants():
    assert SweepConfig(expand_grid(["int8"], [0.0], [None]), workers=3).worker_count == 1
    assert SweepConfig(expand_grid(["int8", "none"], [0.0, 0.5], [None]), workers=3).worker_count == 3


def test_every_suggested_value_passes_its_own_check():
    """The example each option type shows in its messages is accepted by that type and by the dataclass."""
    for cls in (*CONFIG_SECTIONS.values(), SweepConfig):
        for field in cls.__dataclass_fields__.values():
            ptype = field.metadata.get("type")
            if ptype is None or getattr(ptype, "example", None) in (None, ""):
                continue
            value = ptype.parse_as(str(ptype.example), field.name)
            if cls is SweepConfig:
                others = {"executor": "ray"} if field.name == "ray_address" else {}
                SweepConfig([Variant()], **{field.name: value, **others})
            else:
                cls(**{field.name: value})


def _serve_http1(listener: socket.socket) -> None:
    """Answer every connection the way a plain web server answers the HTTP/2 preface, then close."""
    while True:
        try:
            connection, _ = listener.accept()
        except OSError:
            return
        with connection:
            connection.recv(64)
            connection.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")


def test_a_ray_address_that_is_not_ray_is_one_line(tracking, tmp_path, capfd):
    listener = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=_serve_http1, args=(listener,), daemon=True).start()
    address = f"127.0.0.1:{listener.getsockname()[1]}"
    config = tmp_path / "ray.yaml"
    config.write_text(f"sweep: {{ray_address: '{address}'}}\n")
    try:
        result = CliRunner().invoke(cli, ["sweep", "--quant", "int8", "--sparsity", "0", "--executor", "ray",
                                          "--config", str(config)])
    finally:
        listener.close()
    assert _error_line(result) == (f"Error: ray_address '{address}' answers but not as a Ray cluster (no gRPC reply); "
                                   "pass the address ray start --head printed, e.g. 127.0.0.1:6379, or auto")
    assert "gcs_client" not in capfd.readouterr().err
    assert _no_runs_and_no_models()


def test_native_writes_to_stderr_are_captured_while_ray_connects(capfd):
    lines: list[str] = []
    with stderr_captured(lines):
        os.write(2, b"[W gcs_client.cc:210] Failed to get cluster ID from GCS server\n")
    assert lines == ["[W gcs_client.cc:210] Failed to get cluster ID from GCS server"]
    assert "gcs_client" not in capfd.readouterr().err


@pytest.mark.parametrize("store, message", [
    ("{d}/tiny.h5/runs/mlflow.db",
     "Error: the MLflow tracking store sqlite:///{d}/tiny.h5/runs/mlflow.db cannot be opened ({d}/tiny.h5 is a file, "
     "not a directory); set MLFLOW_TRACKING_URI to a database file in a writable directory, e.g. sqlite:///mlflow.db"),
    ("{d}",
     "Error: the MLflow tracking store sqlite:///{d} names a directory, not a database file; set MLFLOW_TRACKING_URI "
     "to a database file in a writable directory, e.g. sqlite:///mlflow.db"),
    ("{d}/flag.yaml",
     "Error: the MLflow tracking store sqlite:///{d}/flag.yaml cannot be opened (file is not a database); set "
     "MLFLOW_TRACKING_URI to a database file in a writable directory, e.g. sqlite:///mlflow.db"),
])
def test_an_unusable_sqlite_store_is_one_line_without_mlflow_retries(store, message, files, tmp_path):
    """In a subprocess, as a user runs it: MLflow would retry such a file for minutes with warnings."""
    uri = f"sqlite:///{store.format(d=files)}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "mlflow_tflite.cli", "convert", "--quant", "int8"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stdout == "" and result.stderr == message.format(d=files) + "\n"


def test_mlflow_run_reads_relative_paths_from_the_users_directory(tmp_path):
    """`mlflow run <project>` runs the entry point in the project directory; -P config=bad.yaml is the
    user's file (the message names it by its absolute path)."""
    (tmp_path / "bad.yaml").write_text("run: {num_threads: 0}\n")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", "PYTHONPATH": str(ROOT)}
    mlflow_command = str(Path(sys.executable).parent / "mlflow")
    result = subprocess.run([mlflow_command, "run", str(ROOT), "--env-manager", "local", "-P", "config=bad.yaml"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error:")]
    assert errors == [f"Error: config section 'run': num_threads=0 must be >= 1; pass e.g. 1 (config file "
                      f"'{tmp_path}/bad.yaml')"], result.stderr
