"""The champion rule: which ready model version holds ``champion``, as a pure function of the versions.

One rule decides "best" everywhere: the sweep's choice among its variants (``selection.select_best``)
and the registry's champion. A version outside the tolerance never takes ``champion``; the first
version within it does; a later one takes it from the champion when both were evaluated on the same
data (same MLflow dataset digest) and ``selection.rank_best`` ranks it first by the registered
model's objective (ties by quality, size, latency within noise, then variant name; on a full tie
the champion stays). The fold (:func:`fold_champion`) applies that step in version order, so every
promoter that reads the same versions computes the same champion (see ``registry``).

Pure: no MLflow calls. The reasons are plain sentences for the terminal and the registry page,
e.g. ``version 3 is champion: 18% faster than version 1 at the same accuracy``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mlflow_tflite.options import Objective
from mlflow_tflite.track.rows import Row
from mlflow_tflite.track.selection import OBJECTIVE_METRIC, latency_tied, quality, quality_metric, rank_best


@dataclass(frozen=True)
class VersionRecord:
    """What the champion rule reads from a ready model version's tags.

    Attributes:
        version: the model version number.
        violation: why it is outside the tolerance its promoter judged it with; ``None`` within.
        eval_digest: MLflow dataset digest of its evaluation data, or ``None``.
        metrics: metric name -> value (``tags.VERSION_METRIC_TAGS``: fractions, bytes, ms).
        variant: its variant name (the last tie-break), e.g. ``int8-s0-8px``.
    """

    version: int
    violation: str | None
    eval_digest: str | None
    metrics: dict[str, float]
    variant: str = ""


@dataclass
class Outcome:
    """The aliases :func:`fold_champion` computes, a one-line reason per version and the objective used."""

    champion: int | None = None
    challenger: int | None = None
    reasons: dict[int, str] = field(default_factory=dict)
    objective: Objective = Objective.LATENCY


def _percent(new: float, old: float) -> float:
    return abs(new - old) / old * 100 if old else 0.0


def _objective_phrase(a: dict[str, float], b: dict[str, float], objective: Objective, other: str) -> str:
    """How ``a`` compares with ``b`` (named ``other``) on the objective, e.g. ``18% faster than version 1``."""
    if objective == Objective.LATENCY:
        new, old = a["latency_ms_p50"], b["latency_ms_p50"]
        if latency_tied(a, b):
            return f"as fast as {other} (p50 {new:.3g} vs {old:.3g} ms, within noise)"
        return f"{_percent(new, old):.0f}% {'faster' if new < old else 'slower'} than {other}"
    if objective in (Objective.SIZE, Objective.GZIP_SIZE):
        key = OBJECTIVE_METRIC[objective]
        new, old = a[key], b[key]
        what = "compressed " if objective == Objective.GZIP_SIZE else ""
        if new == old:
            return f"the same {what}size as {other}"
        return f"{_percent(new, old):.0f}% {'smaller' if new < old else 'larger'} {what}than {other}"
    new, old = quality(a), quality(b)
    if new == old:
        return f"as accurate as {other} ({quality_metric(a)} {new:.4f})"
    return f"{'more' if new > old else 'less'} accurate than {other} ({quality_metric(a)} {new:.4f} vs {old:.4f})"


def _quality_phrase(a: dict[str, float], b: dict[str, float], objective: Objective) -> str:
    if objective == Objective.ACCURACY:
        return ""
    new, old = quality(a), quality(b)
    if new == old:
        return f" at the same {quality_metric(a)}"
    return f" at {quality_metric(a)} {new:.4f} vs {old:.4f}"


def comparison(a: dict[str, float], b: dict[str, float], objective: Objective, other: str) -> str:
    """``a`` against ``b`` in words: the objective first, then quality, e.g.
    ``18% faster than version 1 at the same accuracy``."""
    return _objective_phrase(a, b, objective, other) + _quality_phrase(a, b, objective)


def beats(candidate: VersionRecord, champion: VersionRecord | None, objective: Objective) -> tuple[bool, str]:
    """The champion rule for one step: does ``candidate`` take ``champion`` from ``champion``?

    Args:
        candidate: the next version in version order.
        champion: the champion of the lower versions, or ``None``.
        objective: the registered model's objective.

    Returns:
        (takes ``champion``, one-line reason in words).
    """
    new = candidate.version
    if candidate.violation:
        stays = f"; version {champion.version} stays champion" if champion else ""
        return False, f"version {new} is outside the tolerance ({candidate.violation}){stays}"
    if champion is None:
        return True, f"version {new} is champion: the first version within the tolerance"
    current = champion.version
    if quality(candidate.metrics) is None or candidate.eval_digest is None:
        return False, f"version {current} stays champion: version {new} was not evaluated on data"
    if champion.eval_digest != candidate.eval_digest:
        return False, f"version {current} stays champion: version {new} was evaluated on other data"
    needed = OBJECTIVE_METRIC[objective]
    if needed and (needed not in candidate.metrics or needed not in champion.metrics):
        return False, f"version {current} stays champion: {needed} is not recorded on both versions"
    rows = [Row(champion.variant, metrics=champion.metrics), Row(candidate.variant, metrics=candidate.metrics)]
    if rank_best(rows, objective) is rows[1]:  # on a full tie the champion, listed first, stays
        return True, f"version {new} is champion: {comparison(candidate.metrics, champion.metrics, objective, f'version {current}')}"
    return False, f"version {current} stays champion: version {new} is {comparison(candidate.metrics, champion.metrics, objective, 'it')}"


def fold_champion(records: list[VersionRecord], objective: Objective = Objective.LATENCY) -> Outcome:
    """``champion`` and ``challenger`` as a function of the ready versions: :func:`beats` in version order.

    Args:
        records: the ready versions of one registered model, in any order.
        objective: the registered model's objective (tag ``mlflow_tflite.objective``).

    Returns:
        :class:`Outcome`: the champion (``None`` when no version is within the tolerance), the
        latest version that did not take champion (or ``None``), and per version why it holds
        ``champion``, lost it or never took it; a reason naming a champion that lost it later
        ends with ``; version N is champion now``.
    """
    outcome, champion, named = Outcome(objective=objective), None, {}
    for record in sorted(records, key=lambda r: r.version):
        takes, reason = beats(record, champion, objective)
        if takes:
            if champion is not None:
                named[champion.version] = record.version
                outcome.reasons[champion.version] = f"version {record.version} took champion from it"
            champion = record
        else:
            outcome.challenger = record.version
            if champion is not None and not record.violation:
                named[record.version] = champion.version
        outcome.reasons[record.version] = reason
    outcome.champion = champion.version if champion else None
    for version, holder in named.items():
        if holder != outcome.champion:
            outcome.reasons[version] += f"; version {outcome.champion} is champion now"
    return outcome
