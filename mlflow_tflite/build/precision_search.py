"""The ``int8_mixed`` search schedule over layer groups and precisions (see ``mixed``'s module doc).

The top-k ranked groups leave static int8, k = 1, 2, 4, ... up to every group. At each size the
groups first go to their cheapest fallback (each op to the first precision above static int8 it
has: ``dynamic_int8``, ``weight_only_int8`` or ``float``), and only if that misses the tolerance to
float; a size whose groups have no fallback below float gets the float trial alone. Once a size
meets the tolerance, the remaining trials bisect: at the fallback, between the last size that failed
and the first that passed; in float after the fallback of the same size failed, on how many of
those top groups must be float, the others staying at their fallback. A trial is one quantization;
there are at most ``max_trials`` (the first is full int8).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from mlflow_tflite.build.mixed import Group, Layer, MixedPrecision, Plan, Precision, float_tensors, resolve_layers


@dataclass(frozen=True)
class Trial:
    """One quantization of the search.

    Attributes:
        number: 1 for full int8, then 2, 3, ...
        plan: ``(tensor, precision)`` of each op not in static int8 (``mixed.Plan``).
        tflite_model: its flatbuffer bytes.
        metrics: its evaluation (``accuracy_drop`` or fidelity metrics, ``size_bytes``,
            ``gzip_size_bytes``, ``float_ops``).
        violation: why it is outside the tolerance (``Tolerance.violation``), or ``None``.
    """

    number: int
    plan: Plan
    tflite_model: bytes = field(repr=False)
    metrics: dict[str, float]
    violation: str | None

    @property
    def float_layers(self) -> tuple[str, ...]:
        """Output tensor names of the ops kept in float."""
        return float_tensors(self.plan)

    def cost(self) -> tuple[int, int]:
        """(ops in float, ops out of static int8): lower is cheaper."""
        return len(self.float_layers), len(self.plan)


@dataclass(frozen=True)
class SearchResult:
    """The trials and the one chosen.

    Attributes:
        trials: every trial, in the order tried.
        chosen: the cheapest trial within tolerance (:meth:`Trial.cost`, then the earliest), or,
            when none is, the one with the smallest accuracy drop (largest cosine similarity).
        tolerance_met: ``chosen`` is within the tolerance.
        layers: every layer of the float model (``Layer``), for names in the report.
        message: one line on the outcome.
        max_trials: the bound the search ran under.
        groups: the ranked groups (``mixed.Group``), most harmful first; empty without a search.
    """

    trials: list[Trial]
    chosen: Trial
    tolerance_met: bool
    layers: list[Layer]
    message: str
    max_trials: int
    groups: list[Group] = field(default_factory=list)

    def _chosen_layers(self) -> list[tuple[Layer, Precision]]:
        by_tensor = {layer.tensor: layer for layer in self.layers}
        return [(by_tensor[tensor], precision) for tensor, precision in self.chosen.plan]

    def report(self) -> dict:
        """JSON-able summary (``mixed_precision.json``): each op of the chosen trial not in static int8
        (``layers``: name, path, op, tensor, precision), each ranked group (``groups``: name, rank,
        added_db, ops, precision, op count per precision) and every trial."""
        chosen = dict(self.chosen.plan)
        groups = []
        for rank, group in enumerate(self.groups, 1):
            counts = Counter(chosen.get(layer.tensor, Precision.INT8).value for layer in group.layers)
            groups.append({"name": group.name, "rank": rank, "added_db": group.added_db, "ops": len(group.layers),
                           "precision": _group_precision(counts), "op_precisions": dict(counts)})
        return {
            "tolerance_met": self.tolerance_met, "message": self.message, "chosen_trial": self.chosen.number,
            "layers": [{"name": layer.name, "path": layer.path, "op": layer.op, "tensor": layer.tensor,
                        "precision": precision.value} for layer, precision in self._chosen_layers()],
            "groups": groups,
            "trials": [{"trial": t.number, "float_layers": len(t.float_layers), "non_int8_layers": len(t.plan),
                        "violation": t.violation, **t.metrics} for t in self.trials],
        }

    def short_layer_list(self, limit: int = 250) -> str:
        """The chosen float layers' names, once each, comma-separated, cut to ``limit`` characters (a run param)."""
        names = list(dict.fromkeys(layer.name for layer, precision in self._chosen_layers()
                                   if precision == Precision.FLOAT))
        text = ",".join(names) or "none"
        return text if len(text) <= limit else text[: limit - 20].rsplit(",", 1)[0] + f",...({len(names)})"


def _group_precision(counts: Counter) -> str:
    """A group's precision in the report: ``int8`` when all its ops are, else the cheapest precision
    above int8 one of its ops has (a group at ``dynamic_int8`` runs its other ops in float)."""
    for precision in (Precision.INT8, Precision.DYNAMIC_INT8, Precision.WEIGHT_ONLY_INT8):
        if counts.get(precision.value) and (precision != Precision.INT8 or len(counts) == 1):
            return precision.value
    return Precision.FLOAT.value


def _sizes(limit: int):
    """Sizes 1, 2, 4, ... capped at ``limit`` (generator; bisection is in :func:`_grow_then_bisect`)."""
    size = 1
    while size < limit:
        yield size
        size *= 2
    if limit:
        yield limit


def _moves(groups: list[Group], cheapest: dict[str, Precision], in_float: bool) -> dict[str, Precision]:
    """Each op of ``groups`` in float, or at its cheapest fallback."""
    return {layer.tensor: Precision.FLOAT if in_float else cheapest[layer.tensor]
            for group in groups for layer in group.layers}


def _grow_then_bisect(passes: Callable[[dict[str, Precision]], bool], groups: list[Group],
                      cheapest: dict[str, Precision], budget_left: Callable[[], bool]) -> None:
    """The schedule of the module doc: sizes 1, 2, 4, ... of the top groups, each first at the cheapest
    fallback (when one of those groups has one below float), then in float; then bisect."""
    failed, passed, in_float, cheaper = 0, None, True, False
    for size in _sizes(len(groups)):
        cheaper = any(cheapest[layer.tensor] != Precision.FLOAT for group in groups[:size] for layer in group.layers)
        for in_float in ((False,) if cheaper else ()) + (True,):
            if not budget_left():
                return
            if passes(_moves(groups[:size], cheapest, in_float)):
                passed = size
                break
        if passed is not None:
            break
        failed = size
    if passed is None:
        return
    if in_float and cheaper:  # all at their fallback failed, all float passed: the fewest top ones in float
        moved = _moves(groups[:passed], cheapest, False)
        _bisect(lambda j: passes({**moved, **_moves(groups[:j], cheapest, True)}), 0, passed, budget_left)
    else:
        _bisect(lambda k: passes(_moves(groups[:k], cheapest, in_float)), failed, passed, budget_left)


def _bisect(passes_at: Callable[[int], bool], failed: int, passed: int, budget_left: Callable[[], bool]) -> None:
    """Halve the gap between a failing and a passing count while trials are left."""
    while passed - failed > 1 and budget_left():
        middle = (failed + passed) // 2
        if passes_at(middle):
            passed = middle
        else:
            failed = middle


def _plan(moves: dict[str, Precision], layers: list[Layer]) -> Plan:
    return tuple((layer.tensor, moves[layer.tensor]) for layer in layers if layer.tensor in moves)


def search(quantize: Callable[[Plan], bytes], measure: Callable[[bytes], dict],
           violation: Callable[[dict], str | None], rank: Callable[[bytes], list[Group]],
           layers: list[Layer], options: MixedPrecision,
           fallback: Callable[[Layer], Precision] = lambda layer: Precision.FLOAT) -> SearchResult:
    """Find the fewest groups to take out of static int8 for the tolerance, cheapest precision first.

    Args:
        quantize: plan (``mixed.Plan``) -> the model's flatbuffer bytes (backend specific).
        measure: flatbuffer -> metrics (as ``Trial.metrics``).
        violation: metrics -> why they are outside the tolerance, or ``None``.
        rank: the fully quantized flatbuffer -> groups, most harmful first (``mixed.rank_groups``).
        layers: the float model's layers (``mixed.model_layers``).
        options: ``max_trials`` and the user's ``float_layers`` (then one trial, no search).
        fallback: an op's cheapest precision above static int8 on the backend (float by default,
            the converter's only one).

    Returns:
        :class:`SearchResult`.

    Raises:
        TFLiteError: a float layer name that is not in the model, or a quantization failure.
    """
    trials: list[Trial] = []

    def passes(moves: dict[str, Precision]) -> bool:
        plan = _plan(moves, layers)
        model = quantize(plan)
        metrics = measure(model)
        trials.append(Trial(len(trials) + 1, plan, model, metrics, violation(metrics)))
        return trials[-1].violation is None

    if options.float_layers is not None:
        passes({layer.tensor: Precision.FLOAT for layer in resolve_layers(options.float_layers, layers)})
        return _result(trials, layers, options.max_trials, [], searched=False)
    if passes({}) or options.max_trials == 1:
        return _result(trials, layers, options.max_trials, [])
    groups = rank(trials[0].tflite_model)
    cheapest = {layer.tensor: fallback(layer) for group in groups for layer in group.layers}
    _grow_then_bisect(passes, groups, cheapest, lambda: len(trials) < options.max_trials)
    return _result(trials, layers, options.max_trials, groups)


def _quality(trial: Trial) -> float:
    metrics = trial.metrics
    return -metrics["accuracy_drop"] if "accuracy_drop" in metrics else metrics.get("cosine_similarity", 0.0)


def _result(trials: list[Trial], layers: list[Layer], max_trials: int, groups: list[Group],
            searched: bool = True) -> SearchResult:
    within = [t for t in trials if t.violation is None]
    if within:
        chosen = min(within, key=lambda t: (t.cost(), t.number))
        return SearchResult(trials, chosen, True, layers,
                            f"within tolerance with {_describe(chosen)} after {len(trials)} trial(s)", max_trials, groups)
    chosen = max(trials, key=lambda t: (_quality(t), -t.number))
    how = "with the given float_layers" if not searched else f"after {len(trials)} trial(s)"
    return SearchResult(trials, chosen, False, layers,
                        f"tolerance not met {how} ({chosen.violation}); raise max_trials, name float_layers, "
                        "or try qat_int8 or float16; this variant is never selected or promoted", max_trials, groups)


def _describe(trial: Trial) -> str:
    """``full int8``, or the op count per precision (``12 layer(s) in dynamic_int8, 3 layer(s) in float``)."""
    if not trial.plan:
        return "full int8"
    counts = Counter(precision for _, precision in trial.plan)
    return ", ".join(f"{counts[p]} layer(s) in {p.value}" for p in Precision if counts.get(p))
