"""The whole product against a team's shared tracking server (PostgreSQL store, proxied artifacts).

`mlflow-tflite convert` (main), `sweep` and `promote` run as subprocesses with
``MLFLOW_TRACKING_URI`` pointing at ``mlflow server``; the champion is loaded through the pyfunc
and served by `mlflow models serve`; and two real processes race their promotions into one
registered model, 10 rounds. See ``servers.py`` for the server fixtures.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import requests
from sklearn.metrics import accuracy_score

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from servers import MLFLOW, free_port, subprocess_env
from servers import mlflow_server, postgres, team_server, tracking_server  # noqa: F401  (fixtures)
from test_serving import _wait_for_ping

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "mlflow_tflite.cli"]
MODEL = "team-digits"
PROMOTION_TAG = "mlflow_tflite.promotion"  # the registry's turn-taking tag (registry.PROMOTION_TAG)
MODEL_URI_TAG = "mlflow_tflite.model_uri"
RACE_ROUNDS = 10


def _start(uri: str, cwd: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([*CLI, *args], cwd=cwd, env=subprocess_env(uri), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _finish(process: subprocess.Popen, timeout: float = 600) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, f"{' '.join(process.args[2:])} exited with {process.returncode}:\n{output[-4000:]}"
    return output


def _run_id(output: str, pattern: str) -> str:
    found = re.search(pattern, output)
    assert found, f"{pattern!r} not in:\n{output[-3000:]}"
    return found.group(1)


@pytest.fixture(scope="module")
def team(mlflow_server, request, tmp_path_factory):
    """The product's commands against the server, as a team uses it; returns what they logged.

    main (demo, int8) registers ``team-digits``; the sweep (dynamic,int8 at sparsity 0 on the
    digits files) registers its best into it; a pruned int8 model is logged without registering
    and then promoted into ``team-digits``.
    """
    workdir = tmp_path_factory.mktemp("team")
    main = _start(mlflow_server, workdir, "convert", "--registered-model-name", MODEL)
    # The in-process demo model (for the files) is prepared while main converts.
    model_file, data_file = request.getfixturevalue("digits_files")
    main_output = _finish(main)
    files = ("--model", model_file, "--data", data_file)
    sweep = _start(mlflow_server, workdir, "sweep", *files, "--quant", "dynamic,int8", "--sparsity", "0",
                   "--registered-model-name", MODEL)
    pruned = _start(mlflow_server, workdir, "convert", *files, "--quant", "int8", "--sparsity", "0.8", "--no-register")
    sweep_output, pruned_output = _finish(sweep), _finish(pruned)
    client = MlflowClient(mlflow_server)
    pruned_run_id = _run_id(pruned_output, r"run ([0-9a-f]{32}) variant")
    pruned_model_uri = client.get_run(pruned_run_id).data.tags[MODEL_URI_TAG]
    promote_output = _finish(_start(mlflow_server, workdir, "promote", "--model-uri", pruned_model_uri,
                                    "--registered-model-name", MODEL))
    return {
        "main_run_id": _run_id(main_output, r"run ([0-9a-f]{32}) variant"), "main_output": main_output,
        "sweep_run_id": _run_id(sweep_output, r"sweep run ([0-9a-f]{32})"), "sweep_output": sweep_output,
        "pruned_run_id": pruned_run_id, "pruned_model_uri": pruned_model_uri, "promote_output": promote_output,
        "workdir": workdir,
    }


def _versions(client: MlflowClient, name: str) -> list:
    return sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))


def test_main_registers_the_first_champion_on_the_server(team, team_server):
    client = MlflowClient()
    run = client.get_run(team["main_run_id"])
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri  # proxied
    assert run.data.params["quant"] == "int8" and run.data.metrics["accuracy_drop"] <= 0.01
    first = _versions(client, MODEL)[0]
    assert first.version == "1" and first.run_id == team["main_run_id"]
    assert first.tags[PROMOTION_TAG] == "done"
    assert f"registered {MODEL} version 1 (champion" in team["main_output"]


def test_sweep_logs_its_variants_and_registers_the_best(team, team_server):
    client = MlflowClient()
    parent = client.get_run(team["sweep_run_id"])
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(c.data.tags["mlflow_tflite.variant"] for c in children) == ["dynamic-s0-i8", "int8-s0-i8"]
    assert all(c.info.status == "FINISHED" for c in children)
    best = parent.data.tags["mlflow_tflite.best_run_id"]
    registered = [v for v in _versions(client, MODEL) if v.run_id == best]
    assert len(registered) == 1, team["sweep_output"]
    assert registered[0].tags[PROMOTION_TAG] == "done"
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"comparison.json", "pareto.png"}


def test_promote_registers_a_logged_model_and_the_alias_follows_the_rule(team, team_server):
    client = MlflowClient()
    line = re.search(rf"registered {MODEL} version (\d+) \((champion|challenger): ", team["promote_output"])
    assert line, team["promote_output"]
    version = client.get_model_version(MODEL, line.group(1))
    assert version.run_id == team["pruned_run_id"] and version.tags[PROMOTION_TAG] == "done"
    alias = client.get_model_version_by_alias(MODEL, line.group(2))
    assert alias.version == version.version
    # Every version's promotion finished; three commands, three versions, none lost.
    versions = _versions(client, MODEL)
    assert [v.version for v in versions] == ["1", "2", "3"]
    assert all(v.tags.get(PROMOTION_TAG) == "done" for v in versions)


def test_artifacts_went_through_the_proxy(team, team_server, tracking_server):
    """Every logged model's ``model.tflite`` is a file under the server's --artifacts-destination."""
    client = MlflowClient()
    stored = {p.parent.parent.name for p in tracking_server.artifacts.rglob("model.tflite")}
    for version in _versions(client, MODEL):
        model_id = client.get_run(version.run_id).data.tags[MODEL_URI_TAG].removeprefix("models:/")
        assert model_id in stored, (model_id, sorted(stored))


def test_champion_through_the_pyfunc_has_the_runs_accuracy(team, team_server, digits):
    champion = MlflowClient().get_model_version_by_alias(MODEL, "champion")
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    predictions = model.predict(digits.x_test)
    logged = MlflowClient().get_run(champion.run_id).data.metrics["accuracy"]
    assert accuracy_score(digits.y_test, predictions.argmax(1)) == pytest.approx(logged, abs=1e-9)


def test_models_serve_answers_the_champions_predictions(team, team_server, digits):
    expected = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion").predict(digits.x_test)
    port = free_port()
    log_path = team["workdir"] / f"serve-{port}.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [MLFLOW, "models", "serve", "-m", f"models:/{MODEL}@champion", "--env-manager", "local",
             "--host", "127.0.0.1", "-p", str(port)],
            cwd=team["workdir"], env=subprocess_env(team_server), stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_for_ping(base, server, 180, log_path)
        response = requests.post(f"{base}/invocations", json={"inputs": digits.x_test.tolist()}, timeout=60)
        assert response.status_code == 200, response.text
        np.testing.assert_allclose(np.asarray(response.json()["predictions"]), expected, rtol=1e-6, atol=1e-7)
    finally:
        server.terminate()
        server.wait(timeout=60)


# --- two promoters racing --------------------------------------------------------------------

# A promoter process, started once for all the rounds (its imports take seconds): per round, say
# ready, wait for the round's go file, promote, print one RESULT line (JSON) with its timestamps.
PROMOTER = r"""
import json, os, sys, time
from pathlib import Path
from mlflow_tflite.track.registry import promote_logged_model
from mlflow_tflite.track.selection import Tolerance
folder, me, rounds = Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
for round_, (model_uri, name) in enumerate(rounds):
    (folder / f"ready-{me}-{round_}").touch()
    while not (folder / f"go-{round_}").exists():
        time.sleep(0.0005)
    start = time.time()
    registration = promote_logged_model(model_uri, name, Tolerance(max_accuracy_drop=1.0))
    print("RESULT " + json.dumps({"version": registration.version, "champion": registration.champion,
                                  "reason": registration.reason, "start": start, "end": time.time()}), flush=True)
"""


class Promoters:
    """Two promoter processes (two sweeps' promotions), released together round by round."""

    def __init__(self, uri: str, folder: Path, rounds: list[tuple[tuple[str, str], tuple[str, str]]]):
        self.folder = folder
        self.processes = [
            subprocess.Popen([sys.executable, "-c", PROMOTER, str(folder), str(i), json.dumps([r[i] for r in rounds])],
                             env=subprocess_env(uri), stdout=subprocess.PIPE, text=True,
                             stderr=open(folder / f"promoter-{i}.log", "w"))
            for i in range(2)
        ]

    def race(self, round_: int) -> list[dict]:
        """Release both promoters for ``round_`` once both are ready; their outcomes, in process order."""
        deadline = time.monotonic() + 180
        while not all((self.folder / f"ready-{i}-{round_}").exists() for i in range(2)):
            assert all(p.poll() is None for p in self.processes) and time.monotonic() < deadline, self.logs()
            time.sleep(0.005)
        (self.folder / f"go-{round_}").touch()
        outcomes = []
        for process in self.processes:
            line = process.stdout.readline()
            while line and not line.startswith("RESULT "):
                line = process.stdout.readline()
            assert line, f"a promoter ended without a result in round {round_}:\n{self.logs()}"
            outcomes.append(json.loads(line.removeprefix("RESULT ")))
        return outcomes

    def logs(self) -> str:
        return "\n".join((self.folder / f"promoter-{i}.log").read_text()[-3000:] for i in range(2))

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=60)
            process.stdout.close()


def test_two_sweeps_racing_end_with_champion_on_the_better_version(team, team_server, tmp_path, capsys):
    """Two real processes register two different models into one fresh name at the same moment,
    10 rounds. Each round must end as if the promotions had run one after the other in version
    order: ``champion`` on the better model (by the runs' logged ``accuracy``), both versions
    present with their promotion ``done``, and the worse one ``challenger`` when it came second
    (when it came first it held ``champion`` until the better one beat it, and now holds no
    alias); the second version's decision names the first (it read the first's outcome).

    The tolerance is opened (``max_accuracy_drop=1``) so both models may take ``champion``: the
    outcome depends only on the order the promoters read and set the alias. The same two
    processes serve every round (started once: Python + MLflow imports take seconds).
    """
    client = MlflowClient()
    sweep = client.get_run(team["sweep_run_id"])
    children = client.search_runs([sweep.info.experiment_id], f"tags.mlflow.parentRunId = '{sweep.info.run_id}'")
    # Same evaluation data (the digits files), so both are comparable; pick the best and the worst.
    candidates = [client.get_run(team["pruned_run_id"]), *children]
    candidates.sort(key=lambda run: run.data.metrics["accuracy"])
    worse, better = candidates[0], candidates[-1]
    assert better.data.metrics["accuracy"] > worse.data.metrics["accuracy"], \
        [(r.data.tags["mlflow_tflite.variant"], r.data.metrics["accuracy"]) for r in candidates]
    uri = {run.info.run_id: run.data.tags[MODEL_URI_TAG] for run in (better, worse)}
    # Alternate which process promotes the better model.
    pairs = [(better, worse) if r % 2 == 0 else (worse, better) for r in range(RACE_ROUNDS)]
    rounds = [tuple((uri[run.info.run_id], f"team-race-{r}") for run in pair) for r, pair in enumerate(pairs)]

    promoters = Promoters(team_server, tmp_path, rounds)
    overlapping, better_first, problems = 0, 0, []
    try:
        for round_ in range(RACE_ROUNDS):
            name = f"team-race-{round_}"
            outcomes = promoters.race(round_)
            a, b = outcomes
            overlapping += a["start"] < b["end"] and b["start"] < a["end"]
            try:
                versions = _versions(client, name)
                assert len(versions) == 2, [v.version for v in versions]
                by_run = {v.run_id: client.get_model_version(name, v.version) for v in versions}
                assert set(by_run) == {better.info.run_id, worse.info.run_id}, by_run
                good, bad = by_run[better.info.run_id], by_run[worse.info.run_id]
                better_first += int(good.version) < int(bad.version)
                assert client.get_model_version_by_alias(name, "champion").version == good.version
                assert set(good.aliases) == {"champion"}, good.aliases
                assert set(bad.aliases) == ({"challenger"} if int(bad.version) > int(good.version) else set()), \
                    bad.aliases
                assert all(v.tags.get(PROMOTION_TAG) == "done" for v in by_run.values())
                second = max(outcomes, key=lambda o: int(o["version"]))
                assert "no champion yet" not in second["reason"], second  # it read the first one's outcome
            except (AssertionError, MlflowException) as error:  # every round is run and reported
                problems.append(f"round {round_}: {error!r}; outcomes {outcomes}")
    finally:
        promoters.close()
    with capsys.disabled():  # the summary shows without -s
        print(f"\nrace: {RACE_ROUNDS} rounds, {RACE_ROUNDS - len(problems)} correct (champion on the better version, "
              f"2 versions, aliases as in version order, promotions done); {overlapping} with overlapping "
              f"promotions; better model registered first in {better_first}")
    assert not problems, "\n".join(problems)
