"""Registering a variant and setting the ``champion`` alias, safe for concurrent promoters.

The rule itself (which version is champion) is ``champion.fold_champion``: the sweep's rule
(tolerance, then the registered model's objective, ties by quality, size, name) applied in version
order to the ready versions. The objective is a registered-model tag (``OBJECTIVE_TAG``), written by
the model's first registration and changed only on request (``promote --objective``). A model is
registered once: registering the same logged model again (a resumed sweep) reuses its version.

MLflow has no compare-and-set on aliases, so promoters do not read the champion and then move
it. Instead each version records everything the rule needs as version tags: its metrics
(``VERSION_METRIC_TAGS``), its evaluation data digest (``EVAL_DIGEST_TAG``) and whether it met
the tolerance its promoter judged it with (``TOLERANCE_TAG``: the violation, or ``none``), and
then, last, ``READY_TAG``. The champion is a function of the ready versions and the objective
alone. Every promoter marks its version ready, computes that function, sets the aliases to it,
and reads the ready versions, the objective and the aliases again, until what it reads agrees
with what it computed. Promoters that read the same versions write the same aliases, and each
one's last read follows its last write, so the aliases end on the function of all ready
versions, whatever the interleaving. Nobody waits for anybody: a promoter that dies before
marking its version ready leaves a version that is never a candidate; one that dies after
leaves its version to the next promoter of the model, which sets the aliases for it.

A promoter's :class:`Registration` describes the ready versions it last read. ``challenger``
names the latest ready version that did not take ``champion`` in the fold (a beaten champion
keeps no alias). Aliases the fold does not name are left as they are.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mlflow_tflite.errors import TFLiteError
from mlflow_tflite.flavor import FLAVOR_NAME
from mlflow_tflite.options import Objective
from mlflow_tflite.tags import (
    EVAL_DIGEST_TAG, OBJECTIVE_TAG, READY_TAG, TOLERANCE_MET, TOLERANCE_TAG, VARIANT_TAG, VERSION_METRIC_TAGS,
)
from mlflow_tflite.track.champion import Outcome, VersionRecord, fold_champion
from mlflow_tflite.track.runs import evaluation_digest
from mlflow_tflite.track.selection import Tolerance

_logger = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
# Rounds of (read, set aliases) before a promoter gives up: each round that does not settle
# means another version became ready or another writer moved an alias meanwhile.
MAX_ROUNDS = 50


@dataclass(frozen=True)
class Registration:
    """Outcome of :func:`register_and_promote`: the model version and whether it is now champion.

    Attributes:
        name: registered model name.
        version: the version registered (or reused).
        champion: it holds ``champion`` among the ready versions last read.
        reason: one plain sentence, e.g. ``version 3 is champion: 18% faster than version 1 at the
            same accuracy``.
        objective: the registered model's objective the rule used.
    """

    name: str
    version: str
    champion: bool
    reason: str
    objective: Objective = Objective.LATENCY


def _alias_holder(client: MlflowClient, name: str, alias: str):
    """The version holding ``alias``, or ``None`` when the model or the alias does not exist.

    Raises:
        MlflowException: any other registry error (an unreachable server, no permission): it
            must not be mistaken for "no champion yet", which would move the alias.
    """
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as error:
        missing_model = error.error_code == "RESOURCE_DOES_NOT_EXIST"
        missing_alias = error.error_code == "INVALID_PARAMETER_VALUE" and "not found" in error.message
        if missing_model or missing_alias:
            return None
        raise


def _current_champion(client: MlflowClient, name: str):
    """The version holding ``champion``, or ``None`` (see :func:`_alias_holder`, which raises)."""
    return _alias_holder(client, name, CHAMPION)


def _record(version) -> VersionRecord:
    """The rule's inputs from a model version's tags (a missing tolerance verdict counts as outside)."""
    violation = version.tags.get(TOLERANCE_TAG, "no tolerance verdict recorded")
    metrics = {k: float(version.tags[k]) for k in VERSION_METRIC_TAGS if k in version.tags}
    return VersionRecord(int(version.version), None if violation == TOLERANCE_MET else violation,
                         version.tags.get(EVAL_DIGEST_TAG), metrics, version.tags.get(VARIANT_TAG, ""))


def _ready_records(client: MlflowClient, name: str) -> list[VersionRecord]:
    """The ready versions of ``name`` (every page of the search)."""
    records, token = [], None
    while True:
        page = client.search_model_versions(f"name = '{name}'", page_token=token)
        records += [_record(v) for v in page if v.tags.get(READY_TAG) == "true"]
        token = page.token
        if not token:
            return records


def _holders(client: MlflowClient, name: str) -> dict[str, int | None]:
    """Which version holds ``champion`` and ``challenger`` (``None``: no such alias)."""
    holders = {alias: _alias_holder(client, name, alias) for alias in (CHAMPION, CHALLENGER)}
    return {alias: int(v.version) if v is not None else None for alias, v in holders.items()}


def _set_alias(client: MlflowClient, name: str, alias: str, version: int, absent: bool) -> None:
    """Point ``alias`` at ``version``. Creating an alias that was ``absent`` fails when another
    promoter created it at the same moment (the store's insert hits the unique key); that is
    no error: the next round reads who holds it.

    Raises:
        MlflowException: any other failure (the alias still does not exist after it).
    """
    try:
        client.set_registered_model_alias(name, alias, str(version))
    except MlflowException:
        if not absent or _alias_holder(client, name, alias) is None:
            raise
        _logger.info("%s: another promoter created %s at the same moment; reading again", name, alias)


def converge(client: MlflowClient, name: str, max_rounds: int = MAX_ROUNDS) -> Outcome:
    """Set ``champion`` and ``challenger`` of ``name`` to :func:`fold_champion` of its ready versions.

    Reads the ready versions and the aliases; when an alias the fold names is elsewhere, sets
    it and reads again, until a read agrees with the fold of the versions it returned.

    Args:
        client: the registry client.
        name: registered model name.
        max_rounds: rounds of (read, set) before giving up.

    Returns:
        The :class:`Outcome` of the last read.

    Raises:
        TFLiteError: the aliases did not settle within ``max_rounds`` (another writer keeps
            moving them).
        MlflowException: the registry could not be read or written.
    """
    for round_ in range(max_rounds):
        records, objective = _ready_records(client, name), stored_objective(client, name)
        outcome, holders = fold_champion(records, objective), _holders(client, name)
        wanted = {CHAMPION: outcome.champion, CHALLENGER: outcome.challenger}
        moves = {alias: v for alias, v in wanted.items() if v is not None and holders[alias] != v}
        if not moves:
            _logger.debug("%s: aliases agree with %d ready versions after %d round(s)", name, len(records), round_ + 1)
            return outcome
        for alias, version in moves.items():
            _logger.debug("%s: setting %s to version %s (was %s)", name, alias, version, holders[alias])
            _set_alias(client, name, alias, version, holders[alias] is None)
    raise TFLiteError(f"the aliases of model {name!r} did not settle after {max_rounds} rounds: another writer "
                      "keeps moving champion or challenger; retry with promote")


def stored_objective(client: MlflowClient, name: str) -> Objective:
    """The registered model's objective (tag ``mlflow_tflite.objective``); ``latency`` when unset."""
    value = client.get_registered_model(name).tags.get(OBJECTIVE_TAG)
    try:
        return Objective(value) if value else Objective.LATENCY
    except ValueError:
        raise TFLiteError(f"registered model {name!r} has objective {value!r}, which is not one of "
                          f"{', '.join(Objective)}; set one with promote --objective latency") from None


def _keep_objective(client: MlflowClient, name: str, objective: Objective | None, change: bool) -> None:
    """Store ``objective`` on the registered model at its first registration, or when asked to ``change`` it."""
    if objective is None:
        return
    for _ in range(3):
        stored = client.get_registered_model(name).tags.get(OBJECTIVE_TAG)
        if stored == str(objective) or (stored is not None and not change):
            return
        try:
            client.set_registered_model_tag(name, OBJECTIVE_TAG, str(objective))
            return
        except MlflowException:
            # Two first registrations set the tag at the same moment: the store's insert of the
            # second hits the unique key. Read again; whoever's value is stored now counts.
            _logger.info("%s: another promoter set the objective at the same moment; reading again", name)
    raise TFLiteError(f"the objective of model {name!r} could not be stored: another writer keeps changing it; "
                      "retry with promote --objective")


def _existing_version(client: MlflowClient, name: str, model_uri: str, run_id: str | None):
    """The version of ``name`` already registered from ``model_uri`` (same run), or ``None``."""
    if run_id is None:
        return None
    for version in client.search_model_versions(f"run_id = '{run_id}'"):
        if version.name == name and version.source == model_uri:
            return version
    return None


def _mark_ready(client: MlflowClient, name: str, version: str) -> None:
    """Tag ``version`` ready: from now on it is a candidate (its other tags are written)."""
    client.set_model_version_tag(name, version, READY_TAG, "true")


def _version_tags(metrics: dict[str, float], eval_digest: str | None, variant_name: str,
                  violation: str | None) -> dict[str, str]:
    """The version tags the rule reads (all but ``READY_TAG``), plus the variant name."""
    tags = {VARIANT_TAG: variant_name, TOLERANCE_TAG: violation or TOLERANCE_MET,
            **{k: repr(float(metrics[k])) for k in VERSION_METRIC_TAGS if k in metrics}}
    if eval_digest:
        tags[EVAL_DIGEST_TAG] = eval_digest
    return tags


def _register(client: MlflowClient, model_uri: str, name: str, tags: dict[str, str]) -> str:
    """Register ``model_uri`` under ``name`` with ``tags`` (or reuse its version) and mark it ready.

    A reused version that is already ready keeps the tags it was judged with.
    """
    run_id = mlflow.models.get_model_info(model_uri).run_id if model_uri.startswith("models:/m-") else None
    existing = _existing_version(client, name, model_uri, run_id)
    if existing is None:
        # mlflow.register_model prints "Successfully registered model ..." and "Created version ..."
        # to stderr; the project says what happened in its own line.
        with contextlib.redirect_stderr(io.StringIO()):
            version = str(mlflow.register_model(model_uri, name, tags=tags).version)
    else:
        version = str(existing.version)
        if existing.tags.get(READY_TAG) == "true":
            _logger.info("%s version %s is registered and ready already; its tags stay", name, version)
            return version
        for key, value in tags.items():  # its promoter died before marking it ready
            client.set_model_version_tag(name, version, key, value)
    _mark_ready(client, name, version)
    return version


def register_and_promote(
    model_uri: str,
    name: str,
    metrics: dict[str, float],
    eval_digest: str | None,
    variant_name: str,
    tolerance: Tolerance = Tolerance(),
    objective: Objective | None = Objective.LATENCY,
    change_objective: bool = False,
) -> Registration:
    """Register ``model_uri`` under ``name`` (once), tag and describe the version, and set the aliases.

    The version records its metrics, evaluation data digest and tolerance verdict, then is
    marked ready; ``champion`` and ``challenger`` are then set to the function of all ready
    versions and the registered model's objective (see module doc).

    Args:
        model_uri: the logged model (``models:/m-...`` or ``runs:/<id>/model``).
        name: registered model name.
        metrics: the variant's run metrics; a few are copied into version tags.
        eval_digest: digest of the evaluation dataset (``mlflow.data`` digest), or ``None``.
        variant_name: e.g. ``int8-s0-8px``, stored as the version tag ``mlflow_tflite.variant``.
        tolerance: a version outside it never takes ``champion``.
        objective: stored on the registered model when it has none yet (its first registration);
            ``None`` leaves the tag alone.
        change_objective: store ``objective`` even when the model has one (``promote --objective``).

    Returns:
        :class:`Registration`: whether this version holds ``champion`` among the ready
        versions the promoter last read, and why (one sentence).

    Raises:
        MlflowException: the registry could not be read or written.
        TFLiteError: the aliases did not settle (see :func:`converge`), or the stored objective is unknown.
    """
    client = MlflowClient()
    tags = _version_tags(metrics, eval_digest, variant_name, tolerance.violation(metrics))
    version = _register(client, model_uri, name, tags)
    _keep_objective(client, name, objective, change_objective)
    before = _current_champion(client, name)
    outcome = converge(client, name)
    reason = outcome.reasons.get(int(version), "not among the ready versions read (its ready tag was removed)")
    client.update_model_version(name, version, description=version_description(variant_name, metrics, reason))
    before = int(before.version) if before is not None else None
    if before is not None and before != outcome.champion and before in outcome.reasons:
        _restate(client, name, before, outcome.reasons[before])
    return Registration(name, version, outcome.champion == int(version), reason, outcome.objective)


def _restate(client: MlflowClient, name: str, version: int, reason: str) -> None:
    """Rewrite the first line of a version's description (a champion that lost the alias says so)."""
    current = client.get_model_version(name, str(version))
    rest = (current.description or "").partition("\n")[2]
    variant = current.tags.get(VARIANT_TAG, "variant")
    client.update_model_version(name, str(version), description=f"{variant}: {reason}\n{rest}")


def version_description(variant_name: str, metrics: dict[str, float], reason: str) -> str:
    """The model version page's description: one plain-text line (the variant and the alias
    decision, which the registry's version list shows as is), then a markdown table of the metrics."""
    rows = "\n".join(f"| {key} | {metrics[key]:.6g} |" for key in sorted(metrics))
    return f"{variant_name}: {reason}\n\n| metric | value |\n|---|---|\n{rows}\n"


def promote_logged_model(model_uri: str, name: str, tolerance: Tolerance = Tolerance(),
                         objective: Objective | None = None) -> Registration:
    """Register any logged ``tflite`` model and apply the champion rule (the ``promote`` command).

    The metrics, the variant name and the evaluation data digest are read from the run that
    logged the model.

    Args:
        model_uri: ``runs:/<run_id>/model`` or ``models:/m-<id>`` of a logged model.
        name: registered model name.
        tolerance: a model outside it is registered as ``challenger`` only.
        objective: set the registered model's objective to this first (every version is then
            judged by it); ``None`` keeps the stored one (``latency`` for a new model).

    Returns:
        :class:`Registration` (see :func:`register_and_promote`).

    Raises:
        TFLiteError: the URI does not name a logged model of a run of flavor ``tflite``.
        MlflowException: the registry could not be read or written.
    """
    try:
        info = mlflow.models.get_model_info(model_uri)
    except Exception:
        raise TFLiteError(f"model URI {model_uri!r} does not name a logged model; pass runs:/<run_id>/model") from None
    if info.run_id is None:
        raise TFLiteError(f"model {model_uri!r} was not logged by a run, so it has no metrics to compare")
    if FLAVOR_NAME not in info.flavors:
        raise TFLiteError(f"model {model_uri!r} is not of flavor {FLAVOR_NAME} (it has {sorted(info.flavors)})")
    run = MlflowClient().get_run(info.run_id)
    variant = run.data.tags.get(VARIANT_TAG, "unknown")
    return register_and_promote(model_uri, name, run.data.metrics, evaluation_digest(run), variant, tolerance,
                                objective or Objective.LATENCY, change_objective=objective is not None)
