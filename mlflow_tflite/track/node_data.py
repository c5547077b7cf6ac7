"""The per-tensor SNR as Model Explorer node data: an overlay that colours the .tflite graph.

Model Explorer (``ai-edge-model-explorer``) colours a graph's nodes from a "node data" JSON
keyed by output tensor name: ``{"name", "results": {tensor: {"value"}}, "thresholds": [...]}``,
the fields of its ``node_data_builder.GraphNodeData`` / ``NodeDataResult`` / ``ThresholdItem``
(the LiteRT Quantizer's ``ComparisonResult.save`` writes the same shape). The dict is built here
as plain data: importing ``model_explorer`` costs seconds (it imports torch when installed) and
is an optional extra, while every variant with a per-tensor table logs this overlay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# The artifact (a contract name, docs/design.md).
TENSOR_SNR_ARTIFACT = "model_explorer/tensor_snr.json"
NODE_DATA_NAME = "SNR vs float (dB)"


@dataclass(frozen=True)
class SnrBand:
    """One colour band: tensors with SNR (dB) at most ``upper_db`` and above the band below it.

    Attributes:
        label: what the band means and its colour, e.g. ``bad (red)``.
        upper_db: the band's upper bound in dB (Model Explorer's threshold ``value``: a node
            whose value is <= it, and above the previous band's, takes this band's colours).
        background: CSS colour of the node.
        text: CSS colour of the node's label.
    """

    label: str
    upper_db: float
    background: str
    text: str


# Why these bounds: uniform b-bit quantization of a full-range signal gives about 6.02 b + 1.76 dB,
# 50 dB at 8 bits and 26 dB at 4 bits. Real int8 activations lose some of that (a shared scale,
# outliers, accumulated error): on the digits demo every int8 variant's worst tensor is 29.5-39 dB
# with no accuracy lost, and the 4-bit variants' worst is 16.6-22.7 dB with up to 1.1 points lost
# (docs/algorithms.md). So above 30 dB (noise RMS under 3.2% of the signal's) is healthy int8;
# 20-30 dB is int4-like noise, worth a look; at most 20 dB (noise RMS 10% of the signal's or more)
# is where accuracy goes. The top band's bound only needs to be above any finite SNR the
# comparison gives (its epsilon caps it near 10 log10(signal power / 1e-9)).
SNR_BANDS = (
    SnrBand("bad (red)", 20.0, "#d73027", "#ffffff"),
    SnrBand("doubtful (orange)", 30.0, "#fdae61", "#000000"),
    SnrBand("good (green)", 1000.0, "#1a9850", "#ffffff"),
)


def tensor_snr_node_data(rows: list[dict]) -> dict:
    """Model Explorer node data of a per-tensor table: each output tensor's SNR and the colour bands.

    Args:
        rows: dicts with ``tensor`` (str, the quantized model's tensor name) and ``snr_db``
            (float, dB), as from ``measure.tensors.tensor_errors``. Rows with a non-finite SNR
            are left out (JSON has no Infinity; the comparison's epsilon keeps SNRs finite).

    Returns:
        ``{"name": str, "results": {tensor: {"value": snr_db}}, "thresholds": [{"value": dB,
        "bgColor": css, "textColor": css}, ...]}`` (JSON-ready; ``GraphNodeData`` fields).
    """
    results = {row["tensor"]: {"value": float(row["snr_db"])} for row in rows if math.isfinite(row["snr_db"])}
    thresholds = [{"value": band.upper_db, "bgColor": band.background, "textColor": band.text} for band in SNR_BANDS]
    return {"name": NODE_DATA_NAME, "results": results, "thresholds": thresholds}



def bands_legend() -> str:
    """The colour bands in words: ``bad (red) <= 20 dB, doubtful (orange) 20-30 dB, good (green) > 30 dB``."""
    lower = [None] + [band.upper_db for band in SNR_BANDS[:-1]]
    parts = []
    for low, band in zip(lower, SNR_BANDS):
        if low is None:
            parts.append(f"{band.label} <= {band.upper_db:g} dB")
        elif band is SNR_BANDS[-1]:
            parts.append(f"{band.label} > {low:g} dB")
        else:
            parts.append(f"{band.label} {low:g}-{band.upper_db:g} dB")
    return ", ".join(parts)
