"""Numbers as people read them in the terminal: sizes in KB/MB, times in ms to 3 significant digits."""

from __future__ import annotations

import math

# Metrics shown in the one-line summaries, in this order.
SUMMARY_METRICS = ("accuracy", "accuracy_drop", "agreement", "size_bytes", "latency_ms_p50")


def human_bytes(value: float) -> str:
    """``229234`` -> ``'229 KB'``; decimal units (1 KB = 1000 bytes), 3 significant digits."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.0f} bytes"


def human_metric(key: str, value: float) -> str:
    """One metric for the terminal: ``size_bytes=229 KB``, ``latency_ms_p50=0.781 ms``, ``accuracy=0.9694``.

    Args:
        key: the metric's name; its suffix chooses the unit (``_bytes``, ``_ms`` / ``latency_ms_*``).
        value: the metric (bytes, ms or a fraction).
    """
    if not math.isfinite(value):
        return f"{key}={value}"
    if key.endswith("_bytes"):
        return f"{key}={human_bytes(value)}"
    if key.startswith("latency_ms") or key.endswith("_ms"):
        return f"{key}={value:.3g} ms"
    return f"{key}={value:.4g}"


def summary(metrics: dict[str, float], keys: tuple[str, ...] = SUMMARY_METRICS) -> str:
    """The metrics among ``keys`` that ``metrics`` has, comma-separated in human units."""
    return ", ".join(human_metric(key, metrics[key]) for key in keys if key in metrics)
