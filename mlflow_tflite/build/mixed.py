"""Accuracy-guided mixed precision (``quant=int8_mixed``): int8, with the worst layers kept in float.

The search (:func:`search`): quantize fully; while the variant is outside the tolerance
(``accuracy_drop`` > ``max_accuracy_drop``, or the fidelity bound without labels), keep more of
the layers that add the most quantization error in float and quantize again. The float set
grows geometrically (1, 2, 4, ... layers) so a large model needs few trials; once a size meets
the tolerance, the remaining trials bisect between the last size that failed and it, so the
result is the fewest float layers found within ``max_trials``. This is the accuracy-driven
fallback of Intel Neural Compressor and OpenVINO NNCF, applied to a TFLite model.

Layers are ranked by the per-tensor error of the fully quantized model against the float model
(``measure.tensors.tensor_errors``): for each op, the SNR of its output below the SNR of its inputs,
i.e. the error the op itself adds rather than the error it inherits (:func:`rank_layers`).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Callable

from mlflow_tflite.flavor import flatbuffer
from mlflow_tflite.errors import TFLiteError
from mlflow_tflite.checks import check_number, names_tuple
from mlflow_tflite.options import names_list, number, option

# SNR (dB) given to a model input, which quantization does not change: an op reading only model
# inputs is charged with its whole output error.
_INPUT_SNR_DB = 200.0


@dataclass(frozen=True)
class MixedPrecision:
    """How ``int8_mixed`` searches for the layers to keep in float.

    Attributes:
        max_trials: quantizations tried at most (>= 1); the first is full int8.
        float_layers: layers to keep in float, given by the user (no search): Keras layer
            names (``conv2d_1``), layer paths or the float model's tensor names; ``None`` to search.

    ``float_layers`` may be given as comma-separated text (``"conv2d,dense"``) or a list of names.

    Raises:
        TFLiteError: ``max_trials`` not a whole number >= 1, or ``float_layers`` not names.
    """

    max_trials: int = option(8, "int8_mixed: quantizations tried at most (the first is full int8).",
                             number(int, 1, optional=True, example=8))
    float_layers: tuple[str, ...] | None = option(
        None, "int8_mixed: comma-separated layers to keep in float instead of searching, or none.",
        names_list("conv2d,dense"))

    def __post_init__(self):
        object.__setattr__(self, "max_trials", check_number(self.max_trials, "max_trials", int, 1, example=8,
                                                            hint=" (the first trial is full int8)"))
        object.__setattr__(self, "float_layers", names_tuple(self.float_layers, "float_layers", "conv2d,dense"))


@dataclass(frozen=True)
class Layer:
    """An op of the float model that can be kept in float.

    Attributes:
        tensor: its output tensor name in the float .tflite (what both backends' skip rules name).
        op: its builtin op name, e.g. ``CONV_2D``.
        index: its position in execution order.
    """

    tensor: str
    op: str
    index: int

    @property
    def path(self) -> str:
        """The layer path: for Keras the tensor's first name without its TF op (``digits-cnn/conv2d_1``);
        for litert-torch, whose scopes end in the module itself, the whole first name
        (``torch_nets.ONet/torch.nn.modules.conv.Conv2d_conv1``)."""
        first = self.tensor.split(";")[0]
        if _torch_attributes(first):
            return first
        return first.rsplit("/", 1)[0] if "/" in first else first

    @property
    def name(self) -> str:
        """The layer name: Keras's (``conv2d_1``), or PyTorch's dotted module name (``conv1``, ``features.0``)."""
        attributes = _torch_attributes(self.path)
        return ".".join(attributes) if attributes else self.path.rsplit("/", 1)[-1]


# litert-torch names a tensor by its module scopes, each "<module class path>_<attribute>"
# (``torch.nn.modules.conv.Conv2d_conv1``) under the root module's class path.
_TORCH_SCOPE = re.compile(r"(?:\w+\.)+[A-Za-z]\w*?_(?P<attribute>\w+)")


def _torch_attributes(path: str) -> list[str]:
    """The module attribute names of a litert-torch scope path, outermost first; [] for other names."""
    scopes = path.split("/")[1:]
    matches = [_TORCH_SCOPE.fullmatch(scope) for scope in scopes]
    return [m["attribute"] for m in matches] if scopes and all(matches) else []


def model_layers(float_model: bytes) -> list[Layer]:
    """The ops of a float .tflite's main subgraph, in execution order, named by their first output.

    Raises:
        TFLiteError: the bytes are not a TFLite flatbuffer.
    """
    return [Layer(outputs[0], op, index)
            for index, (op, _, outputs) in enumerate(flatbuffer.op_tensors(float_model)) if outputs]


def resolve_layers(names: tuple[str, ...], layers: list[Layer]) -> list[Layer]:
    """The layers the user named (Keras layer name, layer path or tensor name), in model order.

    Raises:
        TFLiteError: a name that matches no layer; the message lists the nearest names.
    """
    chosen = []
    for name in names:
        matches = [layer for layer in layers if name in (layer.name, layer.path, layer.tensor)]
        if not matches:
            known = sorted({layer.name for layer in layers})
            near = difflib.get_close_matches(name, known, n=3, cutoff=0.4) or known[:5]
            raise TFLiteError(f"float_layers names {name!r}, which is not a layer of this model; nearest: "
                              f"{', '.join(near)}")
        chosen.extend(m for m in matches if m not in chosen)
    return sorted(chosen, key=lambda layer: layer.index)


def rank_layers(tensor_errors: list[dict], float_model: bytes) -> list[Layer]:
    """Layers ordered by the quantization error each adds, most first.

    Args:
        tensor_errors: rows of ``measure.tensors.tensor_errors`` for the fully quantized model
            (``tensor``, ``snr_db``).
        float_model: the float .tflite the rows were measured against.

    Returns:
        The layers whose output was compared, by ``min(input SNR) - output SNR`` (dB) descending,
        then by output SNR ascending; inputs that are model inputs or constants count as exact.
    """
    snr = {row["tensor"]: row["snr_db"] for row in tensor_errors}
    added = {}
    for layer, (_, inputs, _) in zip(model_layers(float_model), flatbuffer.op_tensors(float_model)):
        if layer.tensor in snr:
            inherited = min((snr[name] for name in inputs if name in snr), default=_INPUT_SNR_DB)
            added[layer] = inherited - snr[layer.tensor]
    return sorted(added, key=lambda layer: (-added[layer], snr[layer.tensor], layer.index))


@dataclass(frozen=True)
class Trial:
    """One quantization of the search.

    Attributes:
        number: 1 for full int8, then 2, 3, ...
        float_layers: output tensor names of the ops kept in float.
        tflite_model: its flatbuffer bytes.
        metrics: its evaluation (``accuracy_drop`` or fidelity metrics, ``size_bytes``,
            ``gzip_size_bytes``, ``float_ops``).
        violation: why it is outside the tolerance (``Tolerance.violation``), or ``None``.
    """

    number: int
    float_layers: tuple[str, ...]
    tflite_model: bytes = field(repr=False)
    metrics: dict[str, float]
    violation: str | None


@dataclass(frozen=True)
class SearchResult:
    """The trials and the one chosen.

    Attributes:
        trials: every trial, in the order tried.
        chosen: the trial within tolerance with the fewest float layers, or, when none is, the
            one with the smallest accuracy drop (largest cosine similarity without labels).
        tolerance_met: ``chosen`` is within the tolerance.
        layers: every layer of the float model (``Layer``), for names in the report.
        message: one line on the outcome.
        max_trials: the bound the search ran under.
    """

    trials: list[Trial]
    chosen: Trial
    tolerance_met: bool
    layers: list[Layer]
    message: str
    max_trials: int

    def _chosen_layers(self) -> list[Layer]:
        by_tensor = {layer.tensor: layer for layer in self.layers}
        return [by_tensor[tensor] for tensor in self.chosen.float_layers]

    def report(self) -> dict:
        """JSON-able summary: the float layers of the chosen trial (name, path, op, tensor) and every trial."""
        describe = lambda layer: {"name": layer.name, "path": layer.path, "op": layer.op,  # noqa: E731
                                  "tensor": layer.tensor}
        return {
            "tolerance_met": self.tolerance_met, "message": self.message, "chosen_trial": self.chosen.number,
            "float_layers": [describe(layer) for layer in self._chosen_layers()],
            "trials": [{"trial": t.number, "float_layers": len(t.float_layers), "violation": t.violation,
                        **t.metrics} for t in self.trials],
        }

    def short_layer_list(self, limit: int = 250) -> str:
        """The chosen float layers' Keras names, comma-separated, cut to ``limit`` characters (a run param)."""
        text = ",".join(layer.name for layer in self._chosen_layers()) or "none"
        return text if len(text) <= limit else text[: limit - 20].rsplit(",", 1)[0] + f",...({len(self.chosen.float_layers)})"


def _sizes(ranked: int):
    """Float-set sizes after full int8: 1, 2, 4, ... capped at ``ranked`` (generator; bisection is in search)."""
    size = 1
    while size < ranked:
        yield size
        size *= 2
    yield ranked


def search(quantize: Callable[[tuple[str, ...]], bytes], measure: Callable[[bytes], dict],
           violation: Callable[[dict], str | None], rank: Callable[[bytes], list[Layer]],
           layers: list[Layer], options: MixedPrecision) -> SearchResult:
    """Find the fewest layers to keep in float for the tolerance (see module doc).

    Args:
        quantize: float-layer tensor names -> the model's flatbuffer bytes (backend specific).
        measure: flatbuffer -> metrics (as ``Trial.metrics``).
        violation: metrics -> why they are outside the tolerance, or ``None``.
        rank: the fully quantized flatbuffer -> layers, most harmful first (:func:`rank_layers`).
        layers: the float model's layers (:func:`model_layers`).
        options: ``max_trials`` and the user's ``float_layers`` (then one trial, no search).

    Returns:
        :class:`SearchResult`.

    Raises:
        TFLiteError: a float layer name that is not in the model, or a quantization failure.
    """
    trials: list[Trial] = []

    def attempt(float_layers: tuple[str, ...]) -> Trial:
        model = quantize(float_layers)
        metrics = measure(model)
        trial = Trial(len(trials) + 1, float_layers, model, metrics, violation(metrics))
        trials.append(trial)
        return trial

    if options.float_layers is not None:
        attempt(tuple(layer.tensor for layer in resolve_layers(options.float_layers, layers)))
        return _result(trials, layers, options.max_trials, searched=False)
    first = attempt(())
    if first.violation is None or options.max_trials == 1:
        return _result(trials, layers, options.max_trials)
    ranked = [layer.tensor for layer in rank(first.tflite_model)]
    failed, passed = 0, None
    for size in _sizes(len(ranked)):
        if len(trials) >= options.max_trials:
            break
        if attempt(tuple(ranked[:size])).violation is None:
            passed = size
            break
        failed = size
    while passed is not None and passed - failed > 1 and len(trials) < options.max_trials:
        middle = (failed + passed) // 2
        if attempt(tuple(ranked[:middle])).violation is None:
            passed = middle
        else:
            failed = middle
    return _result(trials, layers, options.max_trials)


def _quality(trial: Trial) -> float:
    metrics = trial.metrics
    return -metrics["accuracy_drop"] if "accuracy_drop" in metrics else metrics.get("cosine_similarity", 0.0)


def _result(trials: list[Trial], layers: list[Layer], max_trials: int, searched: bool = True) -> SearchResult:
    within = [t for t in trials if t.violation is None]
    if within:
        chosen = min(within, key=lambda t: (len(t.float_layers), t.number))
        what = "full int8" if not chosen.float_layers else f"{len(chosen.float_layers)} layer(s) in float"
        return SearchResult(trials, chosen, True, layers,
                            f"within tolerance with {what} after {len(trials)} trial(s)", max_trials)
    chosen = max(trials, key=lambda t: (_quality(t), -t.number))
    how = "with the given float_layers" if not searched else f"after {len(trials)} trial(s)"
    return SearchResult(trials, chosen, False, layers,
                        f"tolerance not met {how} ({chosen.violation}); raise max_trials, name float_layers, "
                        "or try qat_int8 or float16; this variant is never selected or promoted", max_trials)
