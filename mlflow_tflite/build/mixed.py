"""Accuracy-guided mixed precision (``quant=int8_mixed``): int8, with the worst layer groups kept out of it.

The search (``precision_search.search``): quantize fully; while the variant is outside the tolerance
(``accuracy_drop`` > ``max_accuracy_drop``, or the fidelity bound without labels), move more of the
layer *groups* that add the most quantization error out of static int8 and quantize again. A group
is every op of one layer (:attr:`Layer.name`): all time steps of an unrolled recurrent layer, all
ops of a Keras layer or PyTorch module. Each op has a ladder of precisions, cheapest first
(:class:`Precision`): static ``int8`` < ``dynamic_int8`` (int8 weights, activations quantized at
run time) or ``weight_only_int8`` where the op has no dynamic-range kernel < ``float``; which of the
middle rungs an op has depends on the backend (the LiteRT Quantizer has them for weight ops, the
converter has none). The number of groups moved grows geometrically (1, 2, 4, ...), first to their
cheapest fallback, then, if every group there still misses the tolerance, to float; once a size
meets the tolerance the remaining trials bisect, so the result is the fewest groups moved found
within ``max_trials``. This is the accuracy-driven fallback of Intel Neural Compressor and OpenVINO
NNCF, applied to a TFLite model.

Groups are ranked by the worst per-tensor error their ops add in the fully quantized model against
the float model (``measure.tensors.tensor_errors``): for each op, the SNR of its output below the SNR
of its inputs, i.e. the error the op itself adds rather than the error it inherits (:func:`rank_groups`).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from enum import Enum

from mlflow_tflite.flavor import flatbuffer
from mlflow_tflite.errors import TFLiteError
from mlflow_tflite.checks import check_number, names_tuple
from mlflow_tflite.options import names_list, number, option

# SNR (dB) given to a model input, which quantization does not change: an op reading only model
# inputs is charged with its whole output error.
_INPUT_SNR_DB = 200.0


@dataclass(frozen=True)
class MixedPrecision:
    """How ``int8_mixed`` searches for the layer groups to take out of int8.

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


class Precision(str, Enum):
    """How one op is computed, cheapest first (the order the search tries them)."""

    INT8 = "int8"  # static int8: int8 weights and activations
    DYNAMIC_INT8 = "dynamic_int8"  # int8 weights, activations quantized at run time
    WEIGHT_ONLY_INT8 = "weight_only_int8"  # int8 weights dequantized to float, float kernel
    FLOAT = "float"


# A trial's precisions: (output tensor name, precision) of each op not in static int8, in model order.
Plan = tuple[tuple[str, Precision], ...]


def float_tensors(plan: Plan) -> tuple[str, ...]:
    """The output tensor names a plan keeps in float."""
    return tuple(tensor for tensor, precision in plan if precision == Precision.FLOAT)


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


def added_errors(tensor_errors: list[dict], float_model: bytes) -> dict[Layer, float]:
    """The quantization error (dB) each op adds: ``min(input SNR) - output SNR``.

    Args:
        tensor_errors: rows of ``measure.tensors.tensor_errors`` for the fully quantized model
            (``tensor``, ``snr_db``).
        float_model: the float .tflite the rows were measured against.

    Returns:
        Layer -> added dB, for the layers whose output was compared; inputs that are model inputs or
        constants count as exact.
    """
    snr = {row["tensor"]: row["snr_db"] for row in tensor_errors}
    added = {}
    for layer, (_, inputs, _) in zip(model_layers(float_model), flatbuffer.op_tensors(float_model)):
        if layer.tensor in snr:
            inherited = min((snr[name] for name in inputs if name in snr), default=_INPUT_SNR_DB)
            added[layer] = inherited - snr[layer.tensor]
    return added


@dataclass(frozen=True)
class Group:
    """The ops of one layer (same :attr:`Layer.name`), moved out of int8 together.

    Attributes:
        name: the layer name shared by its ops.
        layers: its ops, in model order.
        added_db: the most error (dB) one of its ops adds (:func:`added_errors`).
    """

    name: str
    layers: tuple[Layer, ...]
    added_db: float


def rank_groups(tensor_errors: list[dict], float_model: bytes) -> list[Group]:
    """Layer groups ordered by the worst error one of their ops adds, most first.

    Args:
        tensor_errors: rows of ``measure.tensors.tensor_errors`` for the fully quantized model.
        float_model: the float .tflite the rows were measured against.

    Returns:
        A :class:`Group` for each layer name with at least one compared op, holding every op of
        that name (compared or not), by ``added_db`` descending, then by first op index.
    """
    added = added_errors(tensor_errors, float_model)
    members: dict[str, list[Layer]] = {}
    for layer in model_layers(float_model):
        members.setdefault(layer.name, []).append(layer)
    groups = [Group(name, tuple(layers), max(added[layer] for layer in layers if layer in added))
              for name, layers in members.items() if any(layer in added for layer in layers)]
    return sorted(groups, key=lambda group: (-group.added_db, group.layers[0].index))
