"""The Fashion-MNIST example end to end at a tiny size: its script, then the sweep its README runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mlflow import MlflowClient
import store
from mlflow_tflite import tags
from mlflow_tflite.cli import cli

PREPARE = Path(__file__).resolve().parents[1] / "examples" / "fashion_mnist" / "prepare.py"
DATA = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.slow
@pytest.mark.skipif(not DATA.is_dir(), reason="Debian's dataset-fashion-mnist is not installed (.ci/run installs it)")
def test_example_prepares_data_and_a_vit_that_the_sweep_converts(tmp_path, tracking):
    prepared = subprocess.run([sys.executable, str(PREPARE), "--out", str(tmp_path), "--train", "600", "--test", "200",
                               "--epochs", "1"], capture_output=True, text=True, timeout=600)
    assert prepared.returncode == 0, prepared.stderr[-2000:]
    arrays = np.load(tmp_path / "fashion.npz")
    assert arrays["x_train"].shape == (600, 28, 28, 1) and arrays["x_test"].shape == (200, 28, 28, 1)
    assert 0.0 <= arrays["x_train"].min() and arrays["x_train"].max() <= 1.0 and set(arrays["y_test"]) <= set(range(10))
    result = CliRunner().invoke(cli, ["sweep", "--model", str(tmp_path / "model.h5"), "--data",
                                      str(tmp_path / "fashion.npz"), "--quant", "int8,int8_mixed", "--sparsity", "0",
                                      "--backend", "litert", "--max-trials", "3", "--no-register"])
    assert result.exit_code == 0, result.output
    runs = store.search_runs(f"tags.{tags.ROLE_TAG} = 'variant'")
    assert sorted(r.data.tags[tags.VARIANT_TAG] for r in runs) == ["int8-s0-28px-litert", "int8_mixed-s0-28px-litert"]
    assert all(r.info.status == "FINISHED" for r in runs)


def test_example_without_the_data_package_is_one_line(tmp_path):
    missing = subprocess.run([sys.executable, str(PREPARE), "--out", str(tmp_path), "--data-dir", str(tmp_path)],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode != 0 and "apt-get install dataset-fashion-mnist" in missing.stderr
    assert "Traceback" not in missing.stderr
