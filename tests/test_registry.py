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
from mlflow_tflite.options import Objective
from mlflow_tflite.track.champion import VersionRecord, fold_champion
from mlflow_tflite.track.registry import _current_champion
from mlflow_tflite.track.selection import Tolerance
from mlflow_tflite.variants import Variant


def _v(version, accuracy, digest="d", violation=None, latency=1.0, size=1000, variant="int8-s0-8px"):
    metrics = {"accuracy": accuracy, "latency_ms_p50": latency, "size_bytes": size, "gzip_size_bytes": size / 2}
    return VersionRecord(version, violation, digest, metrics, variant)


def test_the_fold_applies_the_rule_in_version_order_whatever_order_it_is_given():
    records = [_v(5, 0.97), _v(3, 0.99, violation="accuracy_drop 0.0500 > max_accuracy_drop 0.01"),
               _v(1, 0.90), _v(4, 0.99, digest="other"), _v(2, 0.95), _v(6, 0.97)]
    outcome = fold_champion(records, Objective.ACCURACY)
    assert (outcome.champion, outcome.challenger) == (5, 6)
    assert outcome.reasons == {
        1: "version 2 took champion from it; version 5 is champion now",
        2: "version 5 took champion from it",
        3: "version 3 is outside the tolerance (accuracy_drop 0.0500 > max_accuracy_drop 0.01); "
           "version 2 stays champion",
        4: "version 2 stays champion: version 4 was evaluated on other data; version 5 is champion now",
        5: "version 5 is champion: more accurate than version 2 (accuracy 0.9700 vs 0.9500)",
        6: "version 5 stays champion: version 6 is as accurate as it (accuracy 0.9700)",
    }
    assert fold_champion(list(reversed(records)), Objective.ACCURACY) == outcome


def test_the_first_version_within_the_tolerance_sets_the_data_later_ones_are_compared_on():
    outcome = fold_champion([_v(1, 0.99, violation="not evaluated on data"), _v(2, 0.80, digest="a"),
                             _v(3, 0.99, digest="b"), _v(4, 0.99, digest=None)])
    assert (outcome.champion, outcome.challenger) == (2, 4)
    assert outcome.reasons[2] == "version 2 is champion: the first version within the tolerance"
    assert outcome.reasons[4] == "version 2 stays champion: version 4 was not evaluated on data"
    nobody = fold_champion([_v(1, 0.99, violation="not evaluated on data")])
    assert (nobody.champion, nobody.challenger) == (None, 1)


def test_the_objective_decides_and_quality_breaks_ties():
    """The sweep's rule: latency first (within noise is a tie), then quality, size, name."""
    int8 = _v(1, 0.95, latency=0.0095, variant="int8-s0-8px")
    dynamic = _v(2, 0.95, latency=0.0078, variant="dynamic-s0-8px")
    faster = fold_champion([int8, dynamic], Objective.LATENCY)
    assert faster.champion == 2
    assert faster.reasons[2] == "version 2 is champion: 18% faster than version 1 at the same accuracy"
    slower = fold_champion([dynamic, _v(3, 0.96, latency=0.0095)], Objective.LATENCY)
    assert slower.champion == 2
    assert slower.reasons[3] == "version 2 stays champion: version 3 is 22% slower than it at accuracy 0.9600 vs 0.9500"
    # 2% apart is within the noise floor: a tie, so the more accurate version wins.
    noisy = fold_champion([_v(1, 0.95, latency=1.00), _v(2, 0.96, latency=1.02)], Objective.LATENCY)
    assert noisy.champion == 2
    assert noisy.reasons[2] == ("version 2 is champion: as fast as version 1 (p50 1.02 vs 1 ms, within noise) "
                                "at accuracy 0.9600 vs 0.9500")
    # The same variant again with the same metrics: the champion stays.
    again = fold_champion([_v(1, 0.95), _v(2, 0.95)], Objective.LATENCY)
    assert again.champion == 1 and again.reasons[2] == (
        "version 1 stays champion: version 2 is as fast as it (p50 1 vs 1 ms, within noise) at the same accuracy")


def test_size_and_gzip_size_objectives():
    dense, pruned = _v(1, 0.95, size=1000), VersionRecord(2, None, "d", {"accuracy": 0.95, "size_bytes": 1000,
                                                                          "gzip_size_bytes": 300, "latency_ms_p50": 1.0},
                                                          "int8-s0.5-8px")
    by_size = fold_champion([dense, pruned], Objective.SIZE)
    assert by_size.champion == 1  # same size and accuracy: the name decides ("int8-s0-8px" < "int8-s0.5-8px")
    assert by_size.reasons[2] == "version 1 stays champion: version 2 is the same size as it at the same accuracy"
    by_gzip = fold_champion([dense, pruned], Objective.GZIP_SIZE)
    assert by_gzip.champion == 2
    assert by_gzip.reasons[2] == "version 2 is champion: 40% smaller compressed than version 1 at the same accuracy"
    old = VersionRecord(3, None, "d", {"accuracy": 0.99, "size_bytes": 10}, "none-s0-8px")
    assert fold_champion([dense, old], Objective.GZIP_SIZE).reasons[3] == (
        "version 1 stays champion: gzip_size_bytes is not recorded on both versions")


def test_fidelity_variant_outside_tolerance_never_takes_champion(tracking):
    prepared = prepare(task="fidelity")  # the demo CNN judged by its outputs only, as if unlabelled
    assert prepared.task == "fidelity"
    strict = run_variant(prepared, Variant("int8", input_size=8), "fid", tolerance=Tolerance(min_cosine_similarity=1.0))
    assert "accuracy_drop" not in strict.metrics and strict.metrics["cosine_similarity"] < 1.0
    assert not strict.registration.champion
    assert strict.registration.reason == (
        f"version 1 is outside the tolerance (cosine_similarity {strict.metrics['cosine_similarity']:.6g} < "
        "min_cosine_similarity 1)")
    client = MlflowClient()
    assert _current_champion(client, "fid") is None
    within = run_variant(prepared, Variant("int8", input_size=8), "fid")
    assert within.registration.champion
    assert within.registration.reason == "version 2 is champion: the first version within the tolerance"
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
