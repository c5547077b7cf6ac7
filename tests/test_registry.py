"""The champion guard: tolerance for unlabelled (fidelity) variants and honest registry errors."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow_tflite.cli import cli
from mlflow_tflite.sweep.context import prepare
from mlflow_tflite.sweep.main_job import run_variant
from mlflow_tflite.track.registry import _current_champion
from mlflow_tflite.track.selection import Tolerance
from mlflow_tflite.variants import Variant


def test_fidelity_variant_outside_tolerance_never_takes_champion(tracking):
    prepared = prepare(task="fidelity")  # the demo CNN judged by its outputs only, as if unlabelled
    assert prepared.task == "fidelity"
    strict = run_variant(prepared, Variant("int8", input_size=8), "fid", tolerance=Tolerance(min_cosine_similarity=1.0))
    assert "accuracy_drop" not in strict.metrics and strict.metrics["cosine_similarity"] < 1.0
    assert not strict.registration.champion and "outside the tolerance" in strict.registration.reason
    client = MlflowClient()
    assert _current_champion(client, "fid") is None
    within = run_variant(prepared, Variant("int8", input_size=8), "fid")
    assert within.registration.champion and within.registration.reason == "no champion yet"
    assert str(client.get_model_version_by_alias("fid", "champion").version) == within.registration.version


def test_an_unreachable_registry_is_an_error_not_no_champion(monkeypatch, tracking):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    client = MlflowClient(tracking_uri=tracking, registry_uri="http://127.0.0.1:9")
    with pytest.raises(MlflowException):
        _current_champion(client, "anything")
    assert _current_champion(MlflowClient(), "no-such-model") is None  # a model that does not exist: no champion


def test_unreachable_tracking_server_is_one_line_before_any_work(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    for command in (["convert", "--quant", "int8"], ["sweep", "--quant", "int8", "--sparsity", "0"]):
        result = CliRunner().invoke(cli, command)
        assert result.exit_code == 1, result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("Error: the MLflow tracking store http://127.0.0.1:9"), lines
