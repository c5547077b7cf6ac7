"""Registering a variant and guarding the ``champion`` alias, safe for concurrent promoters.

A new version takes ``champion`` only when it is within the tolerance and there is no champion
yet, or it beats the current champion's quality (``selection.quality``) on the same evaluation
data (same MLflow dataset digest). A model is registered once: registering the same logged
model again (a resumed sweep) reuses its version.

MLflow has no compare-and-set on aliases, so two sweeps promoting into one model at the same
time could both read the old champion and the worse one set the alias last. The registry's
version numbers are the one atomic, ordered thing it gives (the store assigns them), so
promotions take turns in version order: a new version is tagged
``mlflow_tflite.promotion=pending`` as soon as it is registered, waits until every lower
version of the model is ``done`` (or was registered by something else, or its promoter has
been gone for ``PROMOTION_EXPIRY_SECONDS``), then reads the champion, decides, sets the alias
and tags itself ``done``. Only one promoter is ever between reading and setting, without any
timing assumption beyond the expiry of a crashed promoter's turn. Ages are measured on the
tracking server's clock (version timestamps) plus the time waited here, so a promoter whose
clock is off does not cut another's turn short. A champion that is beaten keeps no alias;
``challenger`` names the latest version that did not take ``champion``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mlflow_tflite.errors import TFLiteError
from mlflow_tflite.flavor import FLAVOR_NAME
from mlflow_tflite.track.selection import Tolerance, quality
from mlflow_tflite.tags import EVAL_DIGEST_TAG, VARIANT_TAG, VERSION_METRIC_TAGS
from mlflow_tflite.track.runs import evaluation_digest

CHAMPION = "champion"
CHALLENGER = "challenger"
PROMOTION_TAG = "mlflow_tflite.promotion"  # on a model version: "pending" while its promoter decides, then "done"
# A pending turn older than this belongs to a promoter that died (a sweep's promotion takes seconds).
PROMOTION_EXPIRY_SECONDS = 600.0
# A version without the tag this long after its creation was registered by something else.
UNTAGGED_GRACE_SECONDS = 60.0


@dataclass(frozen=True)
class Registration:
    """Outcome of :func:`register_and_promote`: the model version and whether it is now champion."""

    name: str
    version: str
    champion: bool
    reason: str


def _current_champion(client: MlflowClient, name: str):
    """The version holding ``champion``, or ``None`` when the model or the alias does not exist.

    Raises:
        MlflowException: any other registry error (an unreachable server, no permission): it
            must not be mistaken for "no champion yet", which would move the alias.
    """
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as error:
        missing_model = error.error_code == "RESOURCE_DOES_NOT_EXIST"
        missing_alias = error.error_code == "INVALID_PARAMETER_VALUE" and "not found" in error.message
        if missing_model or missing_alias:
            return None
        raise


def _version_metrics(version) -> dict[str, float]:
    return {k: float(version.tags[k]) for k in VERSION_METRIC_TAGS if k in version.tags}


def champion_decision(client: MlflowClient, name: str, metrics: dict[str, float], eval_digest: str | None,
                      tolerance: Tolerance, version: str | None = None) -> tuple[bool, str]:
    """(take ``champion``?, one-line reason) for a version with ``metrics`` on data ``eval_digest``.

    Args:
        version: the version being decided, when it already exists (it may hold the alias).
    """
    violation = tolerance.violation(metrics)
    current = _current_champion(client, name)
    if current is not None and version is not None and str(current.version) == str(version):
        return True, "already champion"
    if violation:
        return False, f"outside the tolerance ({violation}); champion not moved"
    if current is None:
        return True, "no champion yet"
    score = quality(metrics)
    if score is None or eval_digest is None:
        return False, f"version {current.version} stays champion: the new version was not evaluated on data"
    if current.tags.get(EVAL_DIGEST_TAG) != eval_digest:
        return False, f"version {current.version} stays champion: it was evaluated on other data"
    current_score = quality(_version_metrics(current))
    if current_score is not None and score <= current_score:
        return False, f"version {current.version} stays champion: score {current_score:.4f} >= {score:.4f}"
    return True, f"beats version {current.version} ({current_score} -> {score:.4f}) on the same data"


def _existing_version(client: MlflowClient, name: str, model_uri: str, run_id: str | None):
    """The version of ``name`` already registered from ``model_uri`` (same run), or ``None``."""
    if run_id is None:
        return None
    for version in client.search_model_versions(f"run_id = '{run_id}'"):
        if version.name == name and version.source == model_uri:
            return version
    return None


def _blocking_versions(versions: list, version: str, server_now_ms: int) -> list[str]:
    """Lower versions whose promotion has not finished at ``server_now_ms`` (server clock, see module doc)."""
    blocking = []
    for other in versions:
        if int(other.version) >= int(version):
            continue
        age = (server_now_ms - int(other.creation_timestamp)) / 1000.0
        state = other.tags.get(PROMOTION_TAG)
        if state == "pending" and age < PROMOTION_EXPIRY_SECONDS:
            blocking.append(str(other.version))
        elif state is None and age < UNTAGGED_GRACE_SECONDS:
            blocking.append(str(other.version))  # registered a moment ago; its pending tag is on its way
    return blocking


def _wait_for_turn(client: MlflowClient, name: str, version: str, poll_seconds: float = 0.2) -> None:
    """Block until every lower version of ``name`` has finished its promotion.

    The server's "now" is the newest timestamp among the model's versions when waiting starts
    (this version was just registered and tagged there), advanced by the time waited here.

    Raises:
        TFLiteError: still blocked after ``PROMOTION_EXPIRY_SECONDS`` (names the versions).
    """
    import sys

    started, told, server_start_ms = time.monotonic(), False, None
    while True:
        versions = client.search_model_versions(f"name = '{name}'")
        if server_start_ms is None:
            server_start_ms = max(max(int(v.creation_timestamp), int(v.last_updated_timestamp or 0)) for v in versions)
        waited = time.monotonic() - started
        blocking = _blocking_versions(versions, version, server_start_ms + int(waited * 1000))
        if not blocking:
            return
        if waited > PROMOTION_EXPIRY_SECONDS + 5:
            raise TFLiteError(f"model {name!r} version {version} waited {waited:.0f} s for the promotion of versions "
                              f"{', '.join(blocking)}; retry with promote")
        if waited > 5 and not told:  # a promoter that died holds its turn until it expires: say why we wait
            print(f"waiting for the promotion of {name!r} version(s) {', '.join(blocking)} to finish (a promoter "
                  f"that died releases its turn after {PROMOTION_EXPIRY_SECONDS:.0f} s)", file=sys.stderr)
            told = True
        time.sleep(poll_seconds)


def register_and_promote(
    model_uri: str,
    name: str,
    metrics: dict[str, float],
    eval_digest: str | None,
    variant_name: str,
    tolerance: Tolerance = Tolerance(),
) -> Registration:
    """Register ``model_uri`` under ``name`` (once), tag and describe the version, and set an alias.

    The version takes ``champion`` if it wins (see module doc), otherwise ``challenger``.

    Args:
        model_uri: the logged model (``models:/m-...`` or ``runs:/<id>/model``).
        name: registered model name.
        metrics: the variant's run metrics; a few are copied into version tags.
        eval_digest: digest of the evaluation dataset (``mlflow.data`` digest), or ``None``.
        variant_name: e.g. ``int8-s0-i8``, stored as the version tag ``mlflow_tflite.variant``.
        tolerance: a version outside it never takes ``champion``.

    Returns:
        :class:`Registration`.

    Raises:
        MlflowException: the registry could not be read or written.
    """
    client = MlflowClient()
    run_id = mlflow.models.get_model_info(model_uri).run_id if model_uri.startswith("models:/m-") else None
    existing = _existing_version(client, name, model_uri, run_id)
    version = str(existing.version if existing else mlflow.register_model(model_uri, name).version)
    client.set_model_version_tag(name, version, PROMOTION_TAG, "pending")
    tags = {VARIANT_TAG: variant_name, **{k: repr(float(metrics[k])) for k in VERSION_METRIC_TAGS if k in metrics}}
    if eval_digest:
        tags[EVAL_DIGEST_TAG] = eval_digest
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    _wait_for_turn(client, name, version)
    try:
        take_champion, reason = champion_decision(client, name, metrics, eval_digest, tolerance, version)
        client.update_model_version(name, version, description=version_description(variant_name, metrics, reason))
        client.set_registered_model_alias(name, CHAMPION if take_champion else CHALLENGER, version)
    finally:
        client.set_model_version_tag(name, version, PROMOTION_TAG, "done")
    return Registration(name, version, take_champion, reason)


def version_description(variant_name: str, metrics: dict[str, float], reason: str) -> str:
    """Markdown for the model version page: the variant, its metrics table, the alias decision."""
    rows = "\n".join(f"| {key} | {metrics[key]:.6g} |" for key in sorted(metrics))
    return f"**Variant** `{variant_name}`\n\n| metric | value |\n|---|---|\n{rows}\n\n**Alias**: {reason}\n"


def promote_logged_model(model_uri: str, name: str, tolerance: Tolerance = Tolerance()) -> Registration:
    """Register any logged ``tflite`` model and apply the alias guard (the ``promote`` command).

    The metrics, the variant name and the evaluation data digest are read from the run that
    logged the model.

    Args:
        model_uri: ``runs:/<run_id>/model`` or ``models:/m-<id>`` of a logged model.
        name: registered model name.
        tolerance: a model outside it is registered as ``challenger`` only.

    Raises:
        TFLiteError: the URI does not name a logged model of a run of flavor ``tflite``.
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
    return register_and_promote(model_uri, name, run.data.metrics, evaluation_digest(run), variant, tolerance)
