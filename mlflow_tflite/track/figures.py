"""The PNG figures runs carry: the sweep's Pareto plot and a variant's per-tensor error bars.

Pure presentation: the functions take plain data and return a ``matplotlib.figure.Figure``
drawn on an Agg canvas of its own. Pyplot is never used, so no figure is registered in (or
leaks into) pyplot's global list and the caller's backend is left alone; a figure is freed
with its last reference once logged.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass

logger = logging.getLogger(__name__)

LABEL_FONT_SIZE = 8  # points
MAX_MARKER_AREA = 600.0  # points², the largest model's marker
MIN_MARKER_AREA = 30.0
SAME_POINT_RADIUS = 4.0  # points: markers whose centres are closer share one label
LABEL_WIDTH = 34  # characters per line of a combined label
ADJUST_ITERATIONS = 300  # per adjustText pass (about 0.4 s for 10 labels); it stops earlier once nothing overlaps
ADJUST_PASSES = 3
TENSOR_NAME_WIDTH = 48  # characters per line of a wrapped tensor name


@dataclass(frozen=True)
class ParetoPoint:
    """One plotted variant.

    Attributes:
        variant: the variant name (its label).
        latency_ms: latency p50 in milliseconds (x).
        quality: the quality score in the y axis' unit (e.g. percent).
        size_bytes: the .tflite size in bytes (marker area).
        on_front: on the Pareto front (marker outlined).
    """

    variant: str
    latency_ms: float
    quality: float
    size_bytes: float
    on_front: bool


@dataclass(frozen=True)
class ParetoChart:
    """What the Pareto plot shows.

    Attributes:
        points: the variants to plot (finite values only).
        quality_label: the y axis label, with its unit.
        chosen: the chosen variant's name (starred, in the legend), or ``None``.
        tolerance: the y value of the tolerance bound in the y axis' unit, or ``None``.
        tolerance_label: the legend entry of the tolerance line.
    """

    points: tuple[ParetoPoint, ...]
    quality_label: str
    chosen: str | None = None
    tolerance: float | None = None
    tolerance_label: str = ""


def _new_figure(width: float, height: float):
    """A figure (inches) with its own Agg canvas, outside pyplot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def pareto_plot(chart: ParetoChart):
    """Quality vs latency p50, marker area by model size, front outlined, chosen starred.

    Variants drawn on the same spot share one label ("a, b"); labels are moved apart by
    adjustText (connected to their point by a thin line) and kept inside the axes; the legend
    (chosen variant, tolerance, front, marker sizes) sits right of the axes.

    Returns:
        ``matplotlib.figure.Figure`` (Agg canvas), laid out and ready to save.
    """
    figure = _new_figure(10.0, 6.0)
    ax = figure.add_subplot()
    ax.set_xlabel("latency p50 (ms per single-example inference)")
    ax.set_ylabel(chart.quality_label)
    ax.set_title("Variants: marker area ∝ model size; outlined = Pareto front")
    if not chart.points:
        ax.text(0.5, 0.5, "no variant was timed and evaluated here", ha="center", transform=ax.transAxes)
        figure.tight_layout()
        return figure
    largest = max(p.size_bytes for p in chart.points)
    # Biggest first so that a small model's marker is not hidden under a big one at the same spot.
    points = sorted(chart.points, key=lambda p: (-p.size_bytes, p.variant))
    markers = ax.scatter([p.latency_ms for p in points], [p.quality for p in points],
                         s=[_marker_area(p.size_bytes, largest) for p in points], alpha=0.55, color="tab:blue",
                         edgecolors=["black" if p.on_front else "none" for p in points], linewidths=1.5)
    handles = _decorate(ax, chart, largest)
    ax.margins(0.12, 0.15)  # room for labels around the outermost points
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=LABEL_FONT_SIZE,
              borderaxespad=0.0)
    figure.tight_layout()
    _place_labels(ax, points, chart.chosen, markers)
    return figure


def _marker_area(size_bytes: float, largest: float) -> float:
    return max(MIN_MARKER_AREA, MAX_MARKER_AREA * size_bytes / largest)


def _decorate(ax, chart: ParetoChart, largest: float) -> list:
    """The chosen star, the tolerance line and the legend's proxies; returns the legend handles."""
    from matplotlib.lines import Line2D

    handles = []
    chosen = [p for p in chart.points if p.variant == chart.chosen]
    if chosen:
        handles.append(ax.scatter([chosen[0].latency_ms], [chosen[0].quality], marker="*", s=300, color="red",
                                  zorder=3, label=f"chosen: {chart.chosen}"))
    if chart.tolerance is not None:
        handles.append(ax.axhline(chart.tolerance, color="grey", linestyle="--", label=chart.tolerance_label))
    handles.append(Line2D([], [], linestyle="none", marker="o", markersize=9, markerfacecolor="tab:blue",
                          alpha=0.55, markeredgecolor="black", markeredgewidth=1.5, label="Pareto front"))
    smallest = min(p.size_bytes for p in chart.points)
    for size in sorted({smallest, largest}):
        handles.append(Line2D([], [], linestyle="none", marker="o", color="tab:blue", alpha=0.55,
                              markersize=math.sqrt(_marker_area(size, largest)), label=f"{_kilobytes(size)} model"))
    return handles


def _kilobytes(size_bytes: float) -> str:
    return f"{size_bytes / 1000:.3g} kB"


def _place_labels(ax, points: list[ParetoPoint], chosen: str | None, markers) -> None:
    """One label per spot, moved apart by adjustText, kept inside the axes, tied to its spot by a line.

    adjustText runs without a time limit (its random shifts are seeded), so a plot repeats
    exactly; a pass that leaves labels overlapping is followed by one that starts from there.
    """
    from adjustText import adjust_text

    texts, spots = [], []
    for group in _same_spot_groups(ax, points):
        names = sorted(p.variant for p in group)
        spots.append((group[0].latency_ms, group[0].quality))
        texts.append(ax.text(*spots[-1], _wrap(", ".join(names), LABEL_WIDTH), fontsize=LABEL_FONT_SIZE,
                             fontweight="bold" if chosen in names else "normal"))
    xs, ys = [p.latency_ms for p in points], [p.quality for p in points]
    for attempt in range(ADJUST_PASSES):
        adjust_text(texts, x=xs, y=ys, objects=markers, target_x=[x for x, _ in spots],
                    target_y=[y for _, y in spots], avoid_self=False, ax=ax, iter_lim=ADJUST_ITERATIONS,
                    force_explode=(0.1, 0.5) if attempt == 0 else 0.0, ensure_inside_axes=True)
        _keep_inside(ax, texts)
        crowded = overlapping_pairs([t.get_window_extent() for t in texts])
        if not crowded:
            break
    else:
        logger.warning("Pareto plot: %d pairs of labels still overlap (%s)", len(crowded),
                       "; ".join(f"{texts[i].get_text()!r} / {texts[j].get_text()!r}" for i, j in crowded))
    _tie(ax, texts, spots)


def _keep_inside(ax, texts, pad: float = 3.0) -> None:
    """Shift any label that touches or crosses the axes' edge ``pad`` points back inside."""
    inset = pad * ax.figure.dpi / 72.0
    frame = ax.bbox
    for text in texts:
        box = text.get_window_extent()
        dx = max(0.0, frame.x0 + inset - box.x0) - max(0.0, box.x1 - (frame.x1 - inset))
        dy = max(0.0, frame.y0 + inset - box.y0) - max(0.0, box.y1 - (frame.y1 - inset))
        if dx or dy:
            x, y = ax.transData.transform(text.get_position())
            text.set_position(ax.transData.inverted().transform((x + dx, y + dy)))


def _tie(ax, texts, spots: list[tuple[float, float]], min_length: float = 6.0) -> None:
    """A thin grey line from each label that stands away from its spot (> ``min_length`` points)."""
    from matplotlib.patches import FancyArrowPatch

    for text, spot in zip(texts, spots):
        box = text.get_window_extent()
        x, y = ax.transData.transform(spot)
        gap = math.hypot(max(box.x0 - x, 0.0, x - box.x1), max(box.y0 - y, 0.0, y - box.y1))
        if gap > min_length * ax.figure.dpi / 72.0:
            ax.add_patch(FancyArrowPatch(posA=text.get_position(), posB=spot, patchA=text, arrowstyle="-",
                                         color="grey", linewidth=0.6, shrinkB=2.0))


def _same_spot_groups(ax, points: list[ParetoPoint]) -> list[list[ParetoPoint]]:
    """Points whose marker centres lie within :data:`SAME_POINT_RADIUS` of a group's first point."""
    radius = SAME_POINT_RADIUS * ax.figure.dpi / 72.0
    groups: list[tuple[tuple[float, float], list[ParetoPoint]]] = []
    for point in sorted(points, key=lambda p: (p.latency_ms, -p.quality, p.variant)):
        x, y = ax.transData.transform((point.latency_ms, point.quality))
        home = next((members for (gx, gy), members in groups if math.hypot(x - gx, y - gy) <= radius), None)
        if home is None:
            groups.append(((x, y), [point]))
        else:
            home.append(point)
    return [members for _, members in groups]


def overlapping_pairs(boxes: list) -> list[tuple[int, int]]:
    """Index pairs ``(i, j)``, ``i < j``, of ``matplotlib.transforms.Bbox`` es whose interiors overlap."""
    return [(i, j) for i in range(len(boxes)) for j in range(i + 1, len(boxes))
            if min(boxes[i].x1, boxes[j].x1) > max(boxes[i].x0, boxes[j].x0)
            and min(boxes[i].y1, boxes[j].y1) > max(boxes[i].y0, boxes[j].y0)]


def _wrap(text: str, width: int) -> str:
    """``text`` in lines of at most ``width`` characters, broken after a space."""
    import textwrap

    return "\n".join(textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False)) or text


def wrap_name(name: str, width: int = TENSOR_NAME_WIDTH) -> list[str]:
    """A tensor name cut into lines of at most ``width`` characters, nothing dropped.

    Lines break after ``/``, ``;``, ``:`` or ``,`` where possible, then after ``_``, ``-`` or
    ``.`` inside a longer part, and only then inside a word. ``"".join(wrap_name(name)) == name``.
    """
    pieces = [piece for part in _split_after(name, "/;:,")
              for word in (_split_after(part, "_-.") if len(part) > width else [part])
              for piece in (_chunks(word, width) if len(word) > width else [word])]
    lines = [""]
    for piece in pieces:
        if lines[-1] and len(lines[-1]) + len(piece) > width:
            lines.append("")
        lines[-1] += piece
    return lines


def _split_after(text: str, separators: str) -> list[str]:
    return [part for part in re.split(f"(?<=[{re.escape(separators)}])", text) if part]


def _chunks(text: str, width: int) -> list[str]:
    return [text[i:i + width] for i in range(0, len(text), width)]


def tensor_error_figure(rows: list[dict], worst: int = 20):
    """Horizontal bars of the ``worst`` tensors' SNR in dB, the worst at the top.

    The left axis names each tensor in full (wrapped by :func:`wrap_name`), the right axis
    gives the op that writes it and the SNR; the figure grows with the number of name lines.

    Args:
        rows: dicts with ``tensor`` (str), ``op`` (str) and ``snr_db`` (float, dB), worst SNR
            first, as from ``measure.tensors.tensor_errors``.
        worst: how many rows to show (the first ``worst``).

    Returns:
        ``matplotlib.figure.Figure`` (Agg canvas), laid out and ready to save.
    """
    shown = rows[:worst]
    names = ["\n".join(wrap_name(r["tensor"])) for r in shown]
    line = LABEL_FONT_SIZE * 1.25 / 72.0  # inches per text line
    slots = [(max(n.count("\n") + 1, 2) + 0.8) * line for n in names]
    centres = [sum(slots[:i]) + slots[i] / 2 for i in range(len(slots))]
    figure = _new_figure(11.0, sum(slots) + 1.4)  # + title, x axis and its label
    ax = figure.add_subplot()
    snrs = [float(r["snr_db"]) for r in shown]
    ax.barh(centres, [v if math.isfinite(v) else 0.0 for v in snrs], height=1.5 * line, color="tab:red", alpha=0.7)
    ax.axvline(0.0, color="black", linewidth=0.6)
    ax.set_ylim(sum(slots), 0.0)  # first row (worst) at the top
    ax.set_yticks(centres, names, fontsize=LABEL_FONT_SIZE)
    for label in ax.get_yticklabels():
        label.set_multialignment("left")  # a wrapped name reads as a left-aligned paragraph
    ops = ax.secondary_yaxis("right")
    ops.set_yticks(centres, [f"{r['op']}  {v:.1f} dB" for r, v in zip(shown, snrs)], fontsize=LABEL_FONT_SIZE)
    ax.set_xlabel("SNR (dB)")
    ax.set_title(f"The {len(shown)} tensors with the lowest SNR against the float model (higher is better)",
                 fontsize=LABEL_FONT_SIZE + 2)
    figure.tight_layout()
    return figure
