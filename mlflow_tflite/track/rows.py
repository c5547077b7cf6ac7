"""A sweep's row per variant (:class:`Row`): its child run and what it measured, as the parent
compares, reports and registers it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Row:
    """One variant of a sweep as the parent sees it: its child run and what it measured.

    Attributes:
        variant: the variant name (tag ``mlflow_tflite.variant``).
        run_id: its child run, or ``None`` when none could be opened.
        status: ``FINISHED`` or ``FAILED`` (the child run's status).
        metrics: run metrics (latency added in the quiet phase).
        model_uri: the logged model's URI, or ``None``.
        error: the one-line error of a FAILED variant, else ``""``.
        eval_digest: digest of the evaluation data set (MLflow dataset digest), or ``None``.
        evaluated: the model ran here (no Flex ops): it has accuracy/fidelity and latency.
        tolerance_met: ``False`` for an ``int8_mixed`` search that missed the tolerance.
        final_step: the metric step of the run's final values (see ``Outcome.final_step``).
        size_warning: why the quantized model is larger than the float model, or ``None``.
    """

    variant: str
    run_id: str | None = None
    status: str = "FINISHED"
    metrics: dict[str, float] = field(default_factory=dict)
    model_uri: str | None = None
    error: str = ""
    eval_digest: str | None = None
    evaluated: bool = False
    tolerance_met: bool = True
    final_step: int = 0
    size_warning: str | None = None

    @property
    def candidate(self) -> bool:
        """Finished, timed and within an ``int8_mixed`` search's tolerance: it may be chosen."""
        return self.status == "FINISHED" and "latency_ms_p50" in self.metrics and self.tolerance_met
