"""A sweep's work on its executor, as waves of tasks whose values flow one way.

1. Models: every resized / pruned / QAT-trained model the grid needs is built once, in order of
   depth (a pruned model of a resized one waits for the resized one), as ``.h5`` bytes.
2. Float flatbuffers: one float conversion per (model, op set) that some variant converts from
   (``none``, the LiteRT Quantizer, ``int8_mixed``) or compares with (the per-tensor table).
3. Variants: each variant's task carries the models and float flatbuffers it needs.

A failed build fails the variants that need it (and the builds that start from it), each with
that build's one-line error; the other variants go on.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from mlflow_tflite.build.graph import FloatModel, ModelKey
from mlflow_tflite.options import OpsSet
from mlflow_tflite.quant_modes import Backend, QuantMode
from mlflow_tflite.sweep import worker
from mlflow_tflite.sweep.local import SweepExecutor
from mlflow_tflite.variants import Variant


def _charges_float(variant: Variant) -> bool:
    """The variant is made from its key's float flatbuffer (its conversion time is part of it)."""
    return variant.quant == QuantMode.NONE or variant.backend == Backend.LITERT


def float_needs(variant: Variant, key: ModelKey, tensor_table: bool) -> list[tuple[ModelKey, OpsSet]]:
    """The float flatbuffers ``variant`` converts from or compares with.

    Args:
        key: the variant's model key.
        tensor_table: the sweep compares quantized variants tensor by tensor (and has data).
    """
    if _charges_float(variant):
        return [(key, variant.ops)]
    if variant.recipe.trained:
        return [(key.base, variant.ops)] if tensor_table else []
    if variant.recipe.calibrated:  # the converter's calibrate-only conversion is the float model
        return []
    return [(key, variant.ops)] if tensor_table else []


def _ancestors(key: ModelKey) -> list[ModelKey]:
    """The keys ``key`` is built from, itself included, source excluded, nearest last."""
    chain = []
    while not key.is_source:
        chain.insert(0, key)
        key = key.base
    return chain


@dataclass
class Built:
    """What phases 1 and 2 produced: models and float flatbuffers by key, and errors by key."""

    models: dict[ModelKey, bytes] = field(default_factory=dict)
    floats: dict[tuple[ModelKey, OpsSet], FloatModel] = field(default_factory=dict)
    errors: dict[object, str] = field(default_factory=dict)

    def error_for(self, keys: list) -> str | None:
        """The first error among ``keys`` (a failed build of something they need), or ``None``."""
        return next((self.errors[k] for k in keys if k in self.errors), None)

    def models_for(self, key: ModelKey) -> dict:
        """The built ``.h5`` bytes of ``key`` and of the keys it is built from, by key."""
        return {k: self.models[k] for k in _ancestors(key) if k in self.models}


def run_variants(workers: SweepExecutor, variants: list[Variant], native: int | None,
                 tensor_table: bool) -> Iterator[tuple[Variant, str, object]]:
    """Phases 1-3 (module doc): yield ``(variant, status, Outcome or error message)`` as variants finish."""
    keys = {v: ModelKey.of(v, native) for v in variants}
    built = Built()
    _build_models(workers, sorted({k for key in keys.values() for k in _ancestors(key)}), built)
    needs = {v: float_needs(v, keys[v], tensor_table) for v in variants}
    _build_floats(workers, list(dict.fromkeys(n for ns in needs.values() for n in ns)), built)
    tasks, charged = [], set()
    for variant in variants:
        error = built.error_for([*_ancestors(keys[variant]), *(needs[variant] if _charges_float(variant) else [])])
        if error is not None:
            yield variant, "error", error
            continue
        shipped = built.models_for(keys[variant])
        for need in (n for n in needs[variant] if n in built.floats):  # a failed comparison model: the note says why
            shipped.update(built.models_for(need[0]))
            first = _charges_float(variant) and need not in charged
            charged.add(need)
            float_model = built.floats[need]
            shipped[need] = float_model if first else FloatModel(float_model.tflite_model, 0.0)
        tasks.append(worker.variant_task(variant, shipped))
    for task, status, value in workers.run(tasks):
        yield task.variant, status, value


def _build_models(workers: SweepExecutor, keys: list[ModelKey], built: Built) -> None:
    """Phase 1, wave by depth: each model from the ones before it."""
    for depth in sorted({len(_ancestors(k)) for k in keys}):
        wave = []
        for key in (k for k in keys if len(_ancestors(k)) == depth):
            error = built.error_for(_ancestors(key)[:-1])
            if error is not None:
                built.errors[key] = error
            else:
                wave.append(worker.BuildModel(key, built.models_for(key.base)))
        for task, status, value in workers.run(wave):
            if status == "ok":
                built.models[task.key] = value
            else:
                built.errors[task.key] = value


def _build_floats(workers: SweepExecutor, needs: list[tuple[ModelKey, OpsSet]], built: Built) -> None:
    """Phase 2: the float flatbuffers, one task per (key, op set) whose model was built."""
    wave = []
    for key, ops in needs:
        error = built.error_for(_ancestors(key))
        if error is not None:
            built.errors[key, ops] = error
        else:
            wave.append(worker.BuildFloat(key, ops, built.models_for(key)))
    for task, status, value in workers.run(wave):
        if status == "ok":
            built.floats[task.key, task.ops] = value
        else:
            built.errors[task.key, task.ops] = value
