"""A sweep's settings as one validated value (:class:`SweepConfig`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from mlflow_tflite.errors import TFLiteError
from mlflow_tflite.checks import check_flag, check_model_name, check_number, check_optional_number
from mlflow_tflite.measure import tflm
from mlflow_tflite.options import Executor, Objective, choice, given, number, option, parse_enum, text
from mlflow_tflite.track.selection import Tolerance
from mlflow_tflite.variants import Variant


@dataclass(frozen=True)
class SweepConfig:
    """What to sweep and how to choose.

    Attributes:
        variants: the grid (``variants.expand_grid``); ``input_size=None`` means native.
        model, data: the ``model`` / ``data`` parameters (``None`` and ``None`` for the demo).
        open_options: further ``context.prepare`` arguments (task, preprocessing, source options).
        objective: ``latency``, ``size``, ``gzip_size`` or ``accuracy`` (see ``selection.select_best``).
        tolerance: accuracy / fidelity bounds a variant must meet (``selection.Tolerance``).
        max_size_bytes, max_latency_ms: optional budgets (bytes, ms).
        max_arena_bytes: optional TensorFlow Lite Micro tensor arena budget (bytes, a microcontroller's
            RAM for tensors): a variant qualifies only when TFLM ran it and ``tflm_arena_bytes`` is
            within it (``selection.within_budgets``).
        registered_model_name: registry name (default from the source).
        workers: worker processes (>= 1); with ``executor=ray`` the number of Ray actors (one CPU each).
        executor: ``local`` (worker processes on this machine) or ``ray`` (Ray actors on a cluster).
        ray_address: the Ray cluster to join (``host:port`` or ``ray://host:port``); ``None``
            (``auto``/``none``) joins the running cluster Ray finds or starts a local one.
        num_threads: LiteRT threads per interpreter.
        resume: parent run id of an earlier sweep to continue (FINISHED variants are kept; the
            settings must be the same).
        register: register the best variant.

    Raises:
        TFLiteError: no variants, an unknown objective or executor, a budget, ``workers`` or
            ``num_threads`` out of range, not finite or not whole, a registered model name MLflow
            refuses (``checks.check_model_name``), or ``ray_address`` without ``executor=ray``.
    """

    variants: list[Variant]
    model: str | None = None
    data: str | None = None
    open_options: dict = field(default_factory=dict)
    objective: Objective = option(Objective.LATENCY, "latency, size, gzip_size or accuracy.", choice(Objective))
    tolerance: Tolerance = Tolerance()
    max_size_bytes: float | None = option(None, "Size budget in bytes, or none.", number(
        float, 0, low_open=True, optional=True, example=1000000, hint=", or none for no budget"))
    max_latency_ms: float | None = option(None, "Latency p50 budget in ms, or none.", number(
        float, 0, low_open=True, optional=True, example=5, hint=", or none for no budget"))
    max_arena_bytes: float | None = option(None, "TFLite Micro tensor arena budget in bytes (tflm_arena_bytes), or none.",
                                           number(float, 0, low_open=True, optional=True, example=65536,
                                                  hint=", or none for no budget"))
    registered_model_name: str | None = None
    workers: int = option(1, "Worker processes (executor=ray: Ray actors).", number(int, 1, example=2))
    executor: Executor = option(Executor.LOCAL, "local (worker processes) or ray (Ray actors; see ray_address).",
                                choice(Executor))
    ray_address: str | None = option(None, "Ray cluster address host:port or ray://host:port; auto joins a running "
                                           "cluster or starts a local one.", text(example="127.0.0.1:6379"))
    num_threads: int = 1
    resume: str | None = option(None, "Parent run id of an interrupted sweep: FINISHED variants are kept.",
                                text(example="<parent run id>"))
    register: bool = True

    def __post_init__(self):
        if not self.variants:
            raise TFLiteError("the sweep has no variants; give at least one quant, sparsity and input_size")
        object.__setattr__(self, "objective", parse_enum(Objective, self.objective, "objective"))
        for name, example in (("max_size_bytes", 1000000), ("max_latency_ms", 5), ("max_arena_bytes", 65536)):
            object.__setattr__(self, name, check_optional_number(
                getattr(self, name), name, float, low=0, low_open=True, example=example, hint=", or none for no budget"))
        if self.max_arena_bytes is not None and not tflm.available():
            raise TFLiteError(f"max_arena_bytes={self.max_arena_bytes:g} needs TensorFlow Lite Micro, but "
                              f"{tflm.NOT_INSTALLED}; or leave max_arena_bytes out")
        for name in ("workers", "num_threads"):
            object.__setattr__(self, name, check_number(getattr(self, name), name, int, 1, example=2))
        if self.registered_model_name is not None:
            object.__setattr__(self, "registered_model_name", check_model_name(self.registered_model_name))
        check_flag(self.register, "register")
        object.__setattr__(self, "executor", parse_enum(Executor, self.executor, "executor"))
        object.__setattr__(self, "ray_address", given(self.ray_address))
        if self.ray_address is not None and self.executor != Executor.RAY:
            raise TFLiteError(f"ray_address={self.ray_address!r} only applies to executor=ray, but executor is "
                              f"{self.executor}; add executor=ray or leave ray_address out")

    @property
    def worker_count(self) -> int:
        """Workers to start: ``workers``, but no more than there are variants (an idle worker
        still imports TensorFlow and opens the source)."""
        return min(self.workers, len(self.variants))

    def record(self, variants: list[Variant]) -> dict:
        """Everything that changes a sweep's results, as JSON-able data (checked on resume).

        ``workers``, ``executor`` and ``ray_address`` are not in it: they change where and how fast
        the variants run, not their results (every task is deterministic and the same code runs
        either way; latency is always timed in the parent), so a sweep may resume on another one.
        """
        return {
            "variants": [v.name for v in variants],
            "calibration_samples": sorted({v.calibration_samples for v in variants}),
            "model": self.model, "data": self.data,
            "open_options": {k: str(v) for k, v in sorted(self.open_options.items())},
            "objective": self.objective, "tolerance": asdict(self.tolerance),
            "max_size_bytes": self.max_size_bytes, "max_latency_ms": self.max_latency_ms,
            "max_arena_bytes": self.max_arena_bytes,
            "num_threads": self.num_threads, "registered_model_name": self.registered_model_name,
            "register": self.register,
        }
