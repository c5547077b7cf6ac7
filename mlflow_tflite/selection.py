"""Registering a variant and guarding the ``champion`` alias.

A new version takes ``champion`` only when there is none yet, or when it beats the current
champion's score on the same evaluation data (same MLflow dataset digest).
"""

from __future__ import annotations

from dataclasses import dataclass

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

CHAMPION = "champion"
EVAL_DIGEST_TAG = "mlflow_tflite.eval_digest"
VARIANT_TAG = "mlflow_tflite.variant"
VERSION_METRIC_TAGS = ("accuracy", "accuracy_drop", "agreement", "max_abs_error", "size_bytes", "latency_ms_p50")


@dataclass(frozen=True)
class Registration:
    """Outcome of :func:`register_and_promote`: the model version and whether it is now champion."""

    name: str
    version: str
    champion: bool
    reason: str


def promotion_score(metrics: dict[str, float]) -> float | None:
    """The number a champion is compared by (higher is better).

    ``accuracy`` on labelled data; else top-1 ``agreement`` with the source; else
    ``-max_abs_error``; ``None`` when the variant was not evaluated on data.
    """
    if "accuracy" in metrics:
        return metrics["accuracy"]
    if "agreement" in metrics:
        return metrics["agreement"]
    if "max_abs_error" in metrics:
        return -metrics["max_abs_error"]
    return None


def _current_champion(client: MlflowClient, name: str):
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def _champion_decision(client: MlflowClient, name: str, score: float | None, eval_digest: str | None):
    """(take champion?, reason) for a new version with ``score`` on data ``eval_digest``."""
    current = _current_champion(client, name)
    if current is None:
        return True, "no champion yet"
    if score is None or eval_digest is None:
        return False, f"version {current.version} stays champion: the new version was not evaluated on data"
    if current.tags.get(EVAL_DIGEST_TAG) != eval_digest:
        return False, f"version {current.version} stays champion: it was evaluated on other data"
    current_score = promotion_score({k: float(current.tags[k]) for k in VERSION_METRIC_TAGS if k in current.tags})
    if current_score is not None and score <= current_score:
        return False, f"version {current.version} stays champion: score {current_score:.4f} >= {score:.4f}"
    return True, f"beats version {current.version} ({current_score} -> {score:.4f}) on the same data"


def register_and_promote(
    model_uri: str,
    name: str,
    metrics: dict[str, float],
    eval_digest: str | None,
    variant_name: str,
) -> Registration:
    """Register ``model_uri`` under ``name``, tag the version, and move ``champion`` if it wins.

    Args:
        model_uri: the logged model (``models:/m-...`` or ``runs:/<id>/model``).
        name: registered model name.
        metrics: the variant's run metrics; a few are copied into version tags.
        eval_digest: digest of the evaluation dataset (``mlflow.data`` digest), or ``None``.
        variant_name: e.g. ``int8-s0-i8``, stored as the version tag ``mlflow_tflite.variant``.

    Returns:
        :class:`Registration`.
    """
    client = MlflowClient()
    take_champion, reason = _champion_decision(client, name, promotion_score(metrics), eval_digest)
    version = mlflow.register_model(model_uri, name).version
    tags = {VARIANT_TAG: variant_name, **{k: repr(float(metrics[k])) for k in VERSION_METRIC_TAGS if k in metrics}}
    if eval_digest:
        tags[EVAL_DIGEST_TAG] = eval_digest
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    if take_champion:
        client.set_registered_model_alias(name, CHAMPION, version)
    return Registration(name, str(version), take_champion, reason)
