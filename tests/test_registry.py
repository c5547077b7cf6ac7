"""The champion rule: the fold over ready versions, tolerance for unlabelled (fidelity) variants and
honest registry errors."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow_tflite.cli import cli
from mlflow_tflite.sweep.context import prepare
from mlflow_tflite.sweep.main_job import run_variant
from mlflow_tflite.track.registry import VersionRecord, _current_champion, fold_champion
from mlflow_tflite.track.selection import Tolerance
from mlflow_tflite.variants import Variant


def _v(version, accuracy, digest="d", violation=None):
    return VersionRecord(version, violation, digest, {"accuracy": accuracy})


def test_the_fold_applies_the_rule_in_version_order_whatever_order_it_is_given():
    records = [_v(5, 0.97), _v(3, 0.99, violation="accuracy_drop 0.0500 > max_accuracy_drop 0.01"),
               _v(1, 0.90), _v(4, 0.99, digest="other"), _v(2, 0.95), _v(6, 0.97)]
    outcome = fold_champion(records)
    assert (outcome.champion, outcome.challenger) == (5, 6)
    assert outcome.reasons == {
        1: "version 2 beat it (0.9000 -> 0.9500) on the same data; version 5 is champion",
        2: "version 5 beat it (0.9500 -> 0.9700) on the same data",
        3: "outside the tolerance (accuracy_drop 0.0500 > max_accuracy_drop 0.01); champion not moved",
        4: "version 2 stays champion: it was evaluated on other data; version 5 is champion",
        5: "beats version 2 (0.9500 -> 0.9700) on the same data",
        6: "version 5 stays champion: score 0.9700 >= 0.9700",
    }
    assert fold_champion(list(reversed(records))) == outcome


def test_the_first_version_within_the_tolerance_sets_the_data_later_ones_are_compared_on():
    outcome = fold_champion([_v(1, 0.99, violation="not evaluated on data"), _v(2, 0.80, digest="a"),
                             _v(3, 0.99, digest="b"), _v(4, 0.99, digest=None)])
    assert (outcome.champion, outcome.challenger) == (2, 4)
    assert outcome.reasons[4] == "version 2 stays champion: the new version was not evaluated on data"
    nobody = fold_champion([_v(1, 0.99, violation="not evaluated on data")])
    assert (nobody.champion, nobody.challenger) == (None, 1)


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
