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
CHALLENGER = "challenger"
OBJECTIVES = ("latency", "size", "accuracy")
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
    """Register ``model_uri`` under ``name``, tag and describe the version, and set an alias.

    The version takes ``champion`` if it wins (see module doc), otherwise ``challenger``.

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
    client.update_model_version(name, version, description=version_description(variant_name, metrics, reason))
    client.set_registered_model_alias(name, CHAMPION if take_champion else CHALLENGER, version)
    return Registration(name, str(version), take_champion, reason)


def version_description(variant_name: str, metrics: dict[str, float], reason: str) -> str:
    """Markdown for the model version page: the variant, its metrics table, the alias decision."""
    rows = "\n".join(f"| {key} | {metrics[key]:.6g} |" for key in sorted(metrics))
    return f"**Variant** `{variant_name}`\n\n| metric | value |\n|---|---|\n{rows}\n\n**Alias**: {reason}\n"


def promote_logged_model(model_uri: str, name: str) -> Registration:
    """Register any logged ``tflite`` model and apply the alias guard (the ``promote`` command).

    The metrics, the variant name and the evaluation data digest are read from the run that
    logged the model.

    Args:
        model_uri: ``runs:/<run_id>/model`` or ``models:/m-<id>`` of a logged model.
        name: registered model name.

    Raises:
        TFLiteError: the URI does not name a logged model of a run.
    """
    from mlflow_tflite.errors import TFLiteError

    try:
        info = mlflow.models.get_model_info(model_uri)
    except Exception:
        raise TFLiteError(f"model URI {model_uri!r} does not name a logged model; pass runs:/<run_id>/model") from None
    if info.run_id is None:
        raise TFLiteError(f"model {model_uri!r} was not logged by a run, so it has no metrics to compare")
    if "tflite" not in info.flavors:
        raise TFLiteError(f"model {model_uri!r} is not of flavor tflite (it has {sorted(info.flavors)})")
    from mlflow_tflite.tracking import evaluation_digest

    run = MlflowClient().get_run(info.run_id)
    variant = run.data.tags.get(VARIANT_TAG, "unknown")
    return register_and_promote(model_uri, name, run.data.metrics, evaluation_digest(run), variant)


def qualifies(metrics: dict[str, float], max_accuracy_drop: float, max_size_bytes: float | None = None,
              max_latency_ms: float | None = None) -> bool:
    """Whether a variant meets the accuracy tolerance and the budgets.

    The tolerance applies to ``accuracy_drop`` (absolute, a fraction), or to
    ``1 - agreement`` for fidelity-only variants without labels.
    """
    drop = metrics.get("accuracy_drop", 1.0 - metrics["agreement"] if "agreement" in metrics else 0.0)
    if drop > max_accuracy_drop + 1e-12:
        return False
    if max_size_bytes is not None and metrics["size_bytes"] > max_size_bytes:
        return False
    return max_latency_ms is None or metrics["latency_ms_p50"] <= max_latency_ms


def objective_key(metrics: dict[str, float], variant_name: str, objective: str) -> tuple:
    """Sort key, smaller is better: the objective first, then accuracy, size, latency, name."""
    accuracy = metrics.get("accuracy", metrics.get("agreement", 0.0))
    primary = {
        "latency": metrics["latency_ms_p50"],
        "size": metrics["size_bytes"],
        "accuracy": -accuracy,
    }[objective]
    return (primary, -accuracy, metrics["size_bytes"], metrics["latency_ms_p50"], variant_name)


def select_best(candidates: list[dict], objective: str, max_accuracy_drop: float,
                max_size_bytes: float | None = None, max_latency_ms: float | None = None) -> dict | None:
    """The best candidate by ``objective`` among those that qualify, or ``None``.

    Args:
        candidates: dicts with ``variant`` (name) and ``metrics`` (run metrics).
        objective: ``latency`` (p50 ms), ``size`` (bytes) or ``accuracy``.
        max_accuracy_drop: absolute tolerance on ``accuracy_drop`` (fraction, >= 0).
        max_size_bytes, max_latency_ms: optional budgets.

    Ties are broken by accuracy, then size, latency and variant name, so the choice is stable.
    """
    eligible = [c for c in candidates if qualifies(c["metrics"], max_accuracy_drop, max_size_bytes, max_latency_ms)]
    if not eligible:
        return None
    return min(eligible, key=lambda c: objective_key(c["metrics"], c["variant"], objective))
