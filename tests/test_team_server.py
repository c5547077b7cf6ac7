"""The whole product against a team's shared tracking server (PostgreSQL store, proxied artifacts).

`mlflow-tflite convert` (main), `sweep` and `promote` run as subprocesses with
``MLFLOW_TRACKING_URI`` pointing at ``mlflow server``; the champion is loaded through the pyfunc
and served by `mlflow models serve`; and real promoter processes race their promotions into one
registered model: two for 10 rounds, four for 4 rounds, and three of which one is SIGKILLed
mid-promotion. See ``servers.py`` for the server fixtures.
"""

from __future__ import annotations

import itertools
import json
import re
import signal
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
from faults import HOLD_MARKER_ENV, HOLD_PROMOTION_ENV, HOLD_STAGES
from servers import MLFLOW, free_port, subprocess_env
from servers import mlflow_server, postgres, team_server, tracking_server  # noqa: F401  (fixtures)
from test_serving import _wait_for_ping

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "mlflow_tflite.cli"]
MODEL = "team-digits"
# The registry's version tags (registry.READY_TAG, registry.TOLERANCE_TAG, tags.EVAL_DIGEST_TAG).
READY_TAG = "mlflow_tflite.ready"
TOLERANCE_TAG = "mlflow_tflite.tolerance_violation"
EVAL_DIGEST_TAG = "mlflow_tflite.eval_digest"
MODEL_URI_TAG = "mlflow_tflite.model_uri"
RACE_ROUNDS = 10
RACE4_ROUNDS = 4
TESTS = Path(__file__).parent


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
    assert first.tags[READY_TAG] == "true"
    assert (f"registered {MODEL} version 1; version 1 is champion: the first version within the tolerance"
            in team["main_output"])


def test_sweep_logs_its_variants_and_registers_the_best(team, team_server):
    client = MlflowClient()
    parent = client.get_run(team["sweep_run_id"])
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(c.data.tags["mlflow_tflite.variant"] for c in children) == ["dynamic-s0-8px", "int8-s0-8px"]
    assert all(c.info.status == "FINISHED" for c in children)
    best = parent.data.tags["mlflow_tflite.best_run_id"]
    registered = [v for v in _versions(client, MODEL) if v.run_id == best]
    assert len(registered) == 1, team["sweep_output"]
    assert registered[0].tags[READY_TAG] == "true"
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"comparison.json", "pareto.png"}


def test_promote_registers_a_logged_model_and_the_alias_follows_the_rule(team, team_server):
    client = MlflowClient()
    line = re.search(rf"registered {MODEL} version (\d+); (.*)", team["promote_output"])
    assert line, team["promote_output"]
    version = client.get_model_version(MODEL, line.group(1))
    assert version.run_id == team["pruned_run_id"] and version.tags[READY_TAG] == "true"
    took = line.group(2).startswith(f"version {line.group(1)} is champion:")
    alias = client.get_model_version_by_alias(MODEL, "champion" if took else "challenger")
    assert str(alias.version) == str(version.version)
    # Every version was marked ready; three commands, three versions, none lost.
    versions = _versions(client, MODEL)
    assert [v.version for v in versions] == ["1", "2", "3"]
    assert all(v.tags.get(READY_TAG) == "true" for v in versions)


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


# --- promoters racing ------------------------------------------------------------------------

# A promoter process, started once for all its rounds (its imports take seconds): per round, say
# ready, wait for its go file, promote, print one RESULT line (JSON) with its timestamps. With
# faults.HOLD_PROMOTION_ENV set it stops mid-promotion instead (faults.hold_promotion_from_env).
PROMOTER = r"""
import json, sys, time
from pathlib import Path
folder, me, rounds = Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
sys.path.insert(0, sys.argv[4])
import faults
from mlflow_tflite.track.registry import promote_logged_model
from mlflow_tflite.options import Objective
from mlflow_tflite.track.selection import Tolerance
faults.hold_promotion_from_env()
for round_, (model_uri, name) in enumerate(rounds):
    (folder / f"ready-{me}-{round_}").touch()
    while not (folder / f"go-{me}-{round_}").exists():
        time.sleep(0.0005)
    start = time.time()
    registration = promote_logged_model(model_uri, name, Tolerance(max_accuracy_drop=1.0), Objective.ACCURACY)
    print("RESULT " + json.dumps({"version": registration.version, "champion": registration.champion,
                                  "reason": registration.reason, "start": start, "end": time.time()}), flush=True)
"""


class Promoters:
    """Promoter processes (sweeps' promotions) released round by round; ``rounds[r][i]`` is the
    (model URI, registered model name) process ``i`` promotes in round ``r``; ``env[i]`` adds to
    process ``i``'s environment."""

    def __init__(self, uri: str, folder: Path, rounds: list[list[tuple[str, str]]],
                 env: dict[int, dict[str, str]] | None = None):
        self.folder, self.count = folder, len(rounds[0])
        self.processes = [
            subprocess.Popen([sys.executable, "-c", PROMOTER, str(folder), str(i), json.dumps([r[i] for r in rounds]),
                              str(TESTS)],
                             env={**subprocess_env(uri), **(env or {}).get(i, {})}, stdout=subprocess.PIPE, text=True,
                             stderr=open(folder / f"promoter-{i}.log", "w"))
            for i in range(self.count)
        ]

    def wait_ready(self, round_: int) -> None:
        """Until every process waits for its go file of ``round_``."""
        deadline = time.monotonic() + 180
        while not all((self.folder / f"ready-{i}-{round_}").exists() for i in range(self.count)):
            assert all(p.poll() is None for p in self.processes) and time.monotonic() < deadline, self.logs()
            time.sleep(0.005)

    def go(self, round_: int, which: list[int] | None = None) -> None:
        for i in range(self.count) if which is None else which:
            (self.folder / f"go-{i}-{round_}").touch()

    def result(self, i: int, round_: int) -> dict:
        """Process ``i``'s RESULT of ``round_`` (blocks until it prints it)."""
        line = self.processes[i].stdout.readline()
        while line and not line.startswith("RESULT "):
            line = self.processes[i].stdout.readline()
        assert line, f"promoter {i} ended without a result in round {round_}:\n{self.logs()}"
        return json.loads(line.removeprefix("RESULT "))

    def race(self, round_: int) -> list[dict]:
        """Release every process for ``round_`` once all are ready; their outcomes, in process order."""
        self.wait_ready(round_)
        self.go(round_)
        return [self.result(i, round_) for i in range(self.count)]

    def logs(self) -> str:
        return "\n".join((self.folder / f"promoter-{i}.log").read_text()[-3000:] for i in range(self.count))

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=60)
            process.stdout.close()


def _noise_tied(a: dict, b: dict) -> bool:
    """Two p50 latencies within the noise of each other: 95% intervals, widened to +-2.5% of the
    p50, overlap (the tie the project's docs state for latency)."""
    def interval(m):
        p50 = m["latency_ms_p50"]
        return min(m["latency_ms_ci95_low"], p50 * 0.975), max(m["latency_ms_ci95_high"], p50 * 1.025)
    (a_low, a_high), (b_low, b_high) = interval(a), interval(b)
    return a_low <= b_high and b_low <= a_high


def _accuracy_words(new: dict, old: dict, other: str) -> str:
    if new["accuracy"] == old["accuracy"]:
        return f"as accurate as {other} (accuracy {new['accuracy']:.4f})"
    better = "more" if new["accuracy"] > old["accuracy"] else "less"
    return f"{better} accurate than {other} (accuracy {new['accuracy']:.4f} vs {old['accuracy']:.4f})"


def _wins(new: dict, old: dict) -> bool:
    """The objective ``accuracy``, ties by size, then latency within noise, then variant name; on a
    full tie the champion stays."""
    if new["accuracy"] != old["accuracy"]:
        return new["accuracy"] > old["accuracy"]
    if new["size_bytes"] != old["size_bytes"]:
        return new["size_bytes"] < old["size_bytes"]
    if not _noise_tied(new, old):
        return new["latency_ms_p50"] < old["latency_ms_p50"]
    return new["variant"] < old["variant"]


def _expected(facts: dict[int, dict]) -> tuple[int | None, int | None, dict[int, str]]:
    """The champion rule stated independently of the registry code, for ready versions that all met
    the tolerance and the objective ``accuracy``, ``facts`` = {version: {eval digest, the run's
    metrics, variant}}: going up in version order, a version takes champion when there is none
    yet, or when it has the champion's digest and wins (:func:`_wins`). Returns (champion,
    challenger: the latest version that did not take champion, the one-line reason per version
    the registry is expected to give)."""
    champion, challenger, reasons, named = None, None, {}, {}
    for version in sorted(facts):
        new = facts[version]
        if champion is None:
            champion, reasons[version] = version, f"version {version} is champion: the first version within the tolerance"
            continue
        old = facts[champion]
        if new["digest"] == old["digest"] and _wins(new, old):
            reasons[champion] = f"version {version} took champion from it"
            reasons[version] = f"version {version} is champion: {_accuracy_words(new, old, f'version {champion}')}"
            named[champion], champion = version, version
            continue
        challenger, named[version] = version, champion
        reasons[version] = (f"version {champion} stays champion: version {version} was evaluated on other data"
                            if new["digest"] != old["digest"] else
                            f"version {champion} stays champion: version {version} is {_accuracy_words(new, old, 'it')}")
    for version, holder in named.items():
        if holder != champion:
            reasons[version] += f"; version {champion} is champion now"
    return champion, challenger, reasons


def _possible(version: int, facts: dict, always: tuple[int, ...] = ()) -> set[tuple[bool, str]]:
    """(champion?, reason) a promoter of ``version`` may return: what it last read holds its own
    version, ``always`` (ready before it started) and any of the others (ready by then or not)."""
    others = [v for v in facts if v != version and v not in always]
    outcomes = set()
    for k in range(len(others) + 1):
        for seen in itertools.combinations(others, k):
            champion, _, reasons = _expected({v: facts[v] for v in (version, *always, *seen)})
            outcomes.add((champion == version, reasons[version]))
    return outcomes


def _facts(client: MlflowClient, name: str, accuracy: dict[str, float]) -> dict[int, dict]:
    """{version: eval digest, the run's logged accuracy, size and latency, variant} of the ready versions of ``name``."""
    facts = {}
    for v in _versions(client, name):
        if v.tags.get(READY_TAG) == "true":
            metrics = client.get_run(v.run_id).data.metrics
            facts[int(v.version)] = {"digest": v.tags.get(EVAL_DIGEST_TAG), "accuracy": accuracy[v.run_id],
                                     "variant": v.tags["mlflow_tflite.variant"],
                                     **{k: metrics[k] for k in ("size_bytes", "latency_ms_p50", "latency_ms_ci95_low",
                                                                "latency_ms_ci95_high")}}
    return facts


def _assert_aliases(client: MlflowClient, name: str, champion: int | None, challenger: int | None) -> None:
    """Exactly ``champion`` and ``challenger`` hold their aliases (``None``: nobody holds it)."""
    held = {int(v.version): set(client.get_model_version(name, v.version).aliases) for v in _versions(client, name)}
    wanted = {v: {a for a, holder in (("champion", champion), ("challenger", challenger)) if holder == v} for v in held}
    assert held == wanted, f"aliases {held}, expected {wanted}"


def _check_round(client: MlflowClient, name: str, outcomes: list[dict], accuracy: dict[str, float]) -> int:
    """Assert a round's end: one ready version per promoter, each within the (opened) tolerance;
    the aliases are the rule's outcome over all of them; each promoter's result is the rule's
    outcome over some of them (see ``_possible``). Returns how many results equal the end state's."""
    versions = _versions(client, name)
    assert sorted(int(v.version) for v in versions) == sorted(int(o["version"]) for o in outcomes), outcomes
    assert all((v.tags.get(READY_TAG), v.tags.get(TOLERANCE_TAG)) == ("true", "none") for v in versions), \
        [v.tags for v in versions]
    facts = _facts(client, name, accuracy)
    champion, challenger, reasons = _expected(facts)
    _assert_aliases(client, name, champion, challenger)
    agreeing = 0
    for outcome in outcomes:
        version, got = int(outcome["version"]), (outcome["champion"], outcome["reason"])
        assert got in _possible(version, facts), (version, got, sorted(_possible(version, facts)))
        agreeing += got == (version == champion, reasons[version])
    return agreeing


def _file_runs(client: MlflowClient, team: dict) -> list:
    """The pruned int8 run and the sweep's two children: logged models evaluated on the digits files."""
    sweep = client.get_run(team["sweep_run_id"])
    children = client.search_runs([sweep.info.experiment_id], f"tags.mlflow.parentRunId = '{sweep.info.run_id}'")
    return [client.get_run(team["pruned_run_id"]), *children]


def test_two_sweeps_racing_end_with_champion_on_the_better_version(team, team_server, tmp_path, capsys):
    """Two real processes register two different models into one fresh name at the same moment,
    10 rounds. Each round must end as if the promotions had run one after the other in version
    order: ``champion`` on the better model (by the runs' logged ``accuracy``), both versions
    ready, and the worse one ``challenger`` when it came second (when it came first it held
    ``champion`` until the better one beat it, and now holds no alias). Each promoter's result
    is the rule over its own version and, when it had become ready by then, the other one.

    The tolerance is opened (``max_accuracy_drop=1``) so both models may take ``champion``: the
    outcome depends only on the version order. The same two processes serve every round
    (started once: Python + MLflow imports take seconds).
    """
    client = MlflowClient()
    # Same evaluation data (the digits files), so both are comparable; pick the best and the worst.
    candidates = sorted(_file_runs(client, team), key=lambda run: run.data.metrics["accuracy"])
    worse, better = candidates[0], candidates[-1]
    assert better.data.metrics["accuracy"] > worse.data.metrics["accuracy"], \
        [(r.data.tags["mlflow_tflite.variant"], r.data.metrics["accuracy"]) for r in candidates]
    accuracy = {run.info.run_id: run.data.metrics["accuracy"] for run in (better, worse)}
    uri = {run.info.run_id: run.data.tags[MODEL_URI_TAG] for run in (better, worse)}
    # Alternate which process promotes the better model.
    pairs = [(better, worse) if r % 2 == 0 else (worse, better) for r in range(RACE_ROUNDS)]
    rounds = [[(uri[run.info.run_id], f"team-race-{r}") for run in pair] for r, pair in enumerate(pairs)]

    promoters = Promoters(team_server, tmp_path, rounds)
    overlapping, better_first, agreeing, problems = 0, 0, 0, []
    try:
        for round_ in range(RACE_ROUNDS):
            name = f"team-race-{round_}"
            outcomes = promoters.race(round_)
            a, b = outcomes
            overlapping += a["start"] < b["end"] and b["start"] < a["end"]
            try:
                by_run = {v.run_id: v for v in _versions(client, name)}
                assert set(by_run) == {better.info.run_id, worse.info.run_id}, by_run
                good, bad = by_run[better.info.run_id], by_run[worse.info.run_id]
                better_first += int(good.version) < int(bad.version)
                assert client.get_model_version_by_alias(name, "champion").version == good.version
                agreeing += _check_round(client, name, outcomes, accuracy)
            except (AssertionError, MlflowException) as error:  # every round is run and reported
                problems.append(f"round {round_}: {error!r}; outcomes {outcomes}")
    finally:
        promoters.close()
    with capsys.disabled():  # the summary shows without -s
        print(f"\nrace: {RACE_ROUNDS} rounds, {RACE_ROUNDS - len(problems)} correct (champion on the better version, "
              f"2 ready versions, aliases as in version order, results the rule's); {overlapping} with overlapping "
              f"promotions; better model registered first in {better_first}; {agreeing} of {2 * RACE_ROUNDS} "
              "results saw both versions' outcome")
    assert not problems, "\n".join(problems)


def test_four_promoters_racing_end_with_the_rules_champion(team, team_server, tmp_path, capsys):
    """Four real processes register four different models (main's, the pruned one, the sweep's
    two) into one fresh name at the same moment, 4 rounds, each process taking the next model
    every round. The aliases must end as the rule over the four versions in version order
    (computed here from the runs' accuracy and the versions' eval digests), each promoter's
    result the rule over the versions it saw.
    """
    client = MlflowClient()
    runs = [client.get_run(team["main_run_id"]), *_file_runs(client, team)]
    accuracy = {run.info.run_id: run.data.metrics["accuracy"] for run in runs}
    uris = [run.data.tags[MODEL_URI_TAG] for run in runs]
    rounds = [[(uris[(i + r) % 4], f"team-race4-{r}") for i in range(4)] for r in range(RACE4_ROUNDS)]

    promoters = Promoters(team_server, tmp_path, rounds)
    agreeing, champions, problems = 0, [], []
    try:
        for round_ in range(RACE4_ROUNDS):
            name = f"team-race4-{round_}"
            outcomes = promoters.race(round_)
            try:
                agreeing += _check_round(client, name, outcomes, accuracy)
                champions.append(client.get_model_version_by_alias(name, "champion").version)
            except (AssertionError, MlflowException) as error:
                problems.append(f"round {round_}: {error!r}; outcomes {outcomes}")
    finally:
        promoters.close()
    with capsys.disabled():
        print(f"\nrace of 4: {RACE4_ROUNDS} rounds, {RACE4_ROUNDS - len(problems)} correct; champion versions "
              f"{champions}; {agreeing} of {4 * RACE4_ROUNDS} results saw the end state")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("stage", HOLD_STAGES)
def test_a_promoter_killed_mid_promotion_holds_nobody_up(stage, team, team_server, tmp_path, capsys):
    """Three promoters; the one with the most accurate model registers first (the lowest version)
    and stops mid-promotion (``before-ready``: registered with its tags, not marked ready;
    ``after-ready``: marked ready, no alias read or set). The other two are released together
    and it is SIGKILLed at once. They finish within seconds (nothing waits for a dead promoter).
    Before ready, its version is no candidate; after ready, they set the aliases for it. Then
    the killed promotion is resumed with ``promote`` on the same logged model: it reuses its
    version, and every alias and the printed line are the rule's over the three versions.
    """
    client = MlflowClient()
    runs = sorted(_file_runs(client, team), key=lambda run: -run.data.metrics["accuracy"])
    accuracy = {run.info.run_id: run.data.metrics["accuracy"] for run in runs}
    name, marker = f"team-kill-{stage}", tmp_path / "held"
    promoters = Promoters(team_server, tmp_path, [[(run.data.tags[MODEL_URI_TAG], name) for run in runs]],
                          env={0: {HOLD_PROMOTION_ENV: stage, HOLD_MARKER_ENV: str(marker)}})
    try:
        promoters.wait_ready(0)
        promoters.go(0, [0])
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert promoters.processes[0].poll() is None and time.monotonic() < deadline, promoters.logs()
            time.sleep(0.01)
        killed = int(marker.read_text())
        started = time.monotonic()
        promoters.go(0, [1, 2])
        promoters.processes[0].send_signal(signal.SIGKILL)
        assert promoters.processes[0].wait(timeout=60) == -signal.SIGKILL
        outcomes = [promoters.result(i, 0) for i in (1, 2)]
        seconds = time.monotonic() - started
    finally:
        promoters.close()
    with capsys.disabled():
        print(f"\nkilled {stage}: the two other promoters finished {seconds:.2f} s after their start")
    assert seconds < 60, outcomes

    victim = client.get_model_version(name, str(killed))
    assert victim.run_id == runs[0].info.run_id and victim.tags[TOLERANCE_TAG] == "none"
    assert victim.tags.get(READY_TAG) == ("true" if stage == "after-ready" else None), victim.tags
    facts = _facts(client, name, accuracy)
    assert sorted(facts) == sorted([int(o["version"]) for o in outcomes] + ([killed] if stage == "after-ready" else []))
    champion, challenger, _ = _expected(facts)
    _assert_aliases(client, name, champion, challenger)
    always = (killed,) if stage == "after-ready" else ()
    for outcome in outcomes:
        version, got = int(outcome["version"]), (outcome["champion"], outcome["reason"])
        assert got in _possible(version, facts, always), (version, got, sorted(_possible(version, facts, always)))

    resumed = _finish(_start(team_server, tmp_path, "promote", "--model-uri", runs[0].data.tags[MODEL_URI_TAG],
                             "--registered-model-name", name, "--max-accuracy-drop", "1", "--objective", "accuracy"))
    facts = _facts(client, name, accuracy)
    assert sorted(facts) == [killed, *sorted(int(o["version"]) for o in outcomes)]
    champion, challenger, reasons = _expected(facts)
    _assert_aliases(client, name, champion, challenger)
    line = [line for line in resumed.splitlines() if line.startswith("registered ")]
    assert line == [f"registered {name} version {killed}; {reasons[killed]}"], resumed[-3000:]
