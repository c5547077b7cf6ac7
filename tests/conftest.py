"""Shared fixtures: a real MLflow sqlite store per test and the digits demo trained once."""

from __future__ import annotations

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    """A fresh sqlite tracking store and registry in a temp dir (also seen by subprocesses)."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="session")
def digits():
    from mlflow_tflite.build.data import load_digits_dataset

    return load_digits_dataset()


@pytest.fixture(scope="session")
def demo_prepared():
    """The demo source (digits CNN trained with the fixed seed), its data and reference outputs."""
    from mlflow_tflite.sweep.context import prepare
    return prepare()


@pytest.fixture(scope="session")
def converted(demo_prepared):
    """The demo model converted in every quantization mode: {variant name: (Variant, bytes)}."""
    from mlflow_tflite.build.convert import convert
    from mlflow_tflite.build.data import calibration_sample
    from mlflow_tflite.variants import CONVERTER_MODES, Variant

    calibration = [calibration_sample(demo_prepared.dataset.x_train, 200)]
    # int8_mixed and qat_int8 need the pipeline (a search / a fine-tune), not one convert call.
    modes = [q for q in CONVERTER_MODES if not (Variant(q).recipe.trained or Variant(q).recipe.mixed)]
    variants = [Variant(q, input_size=8) for q in modes] + [Variant("int8_full", input_size=8, io_type="uint8")]
    return {v.name: (v, convert(demo_prepared.source, v, calibration).tflite_model) for v in variants}


@pytest.fixture(scope="session")
def digits_files(tmp_path_factory, demo_prepared):
    """The trained demo CNN as an .h5 file and the digits split as .npz (fast to open in workers)."""
    folder = tmp_path_factory.mktemp("digits")
    demo_prepared.source.keras_model.save(folder / "digits-cnn.h5")
    d = demo_prepared.dataset
    np.savez(folder / "digits.npz", x_train=d.x_train, y_train=d.y_train, x_test=d.x_test, y_test=d.y_test)
    return str(folder / "digits-cnn.h5"), str(folder / "digits.npz")
