"""Conversion variants: what changes the .tflite artifact, and a stable readable name."""

from __future__ import annotations

from dataclasses import dataclass

from mlflow_tflite.errors import TFLiteError
from mlflow_tflite.checks import check_number
from mlflow_tflite.options import IoType, OpsSet, parse_enum
from mlflow_tflite.quant_modes import QUANT_RECIPES, Algorithm, Backend, QuantMode

QUANT_MODES = tuple(QuantMode)
CONVERTER_MODES = tuple(mode for mode, recipe in QUANT_RECIPES.items() if Backend.CONVERTER in recipe.backends())
CALIBRATED_MODES = tuple(mode for mode, recipe in QUANT_RECIPES.items() if recipe.calibrated)


@dataclass(frozen=True, order=True)
class Variant:
    """One conversion variant.

    Attributes:
        quant: quantization mode (``quant_modes.QuantMode``; its string is accepted).
        sparsity: target fraction of pruned weights in [0, 1).
        input_size: side of the square input image in pixels, or ``None`` for the native size.
        calibration_samples: representative-dataset size (used by :data:`CALIBRATED_MODES`).
        ops: ``options.OpsSet``: builtins, or select_tf (SELECT_TF_OPS).
        io_type: ``options.IoType`` of ``int8_full`` (int8, or uint8 for Edge TPU).
        backend: ``quant_modes.Backend``: TFLiteConverter (default) or the LiteRT Quantizer on the
            float flatbuffer; only a backend that can make ``quant`` is accepted.
        algorithm: ``quant_modes.Algorithm`` the LiteRT Quantizer overlays on the mode's recipe
            for the weight ops it supports (``build.algorithms``); ``min_max`` is the recipe itself.
            Another algorithm needs ``backend=litert`` and a quantized mode, and ``gptq`` a mode
            without calibrated activations (GPTQ over a static int8/int16x8 recipe gives a broken model).

    Raises:
        TFLiteError: an unknown mode, op set, I/O type or algorithm, a value out of range, not
            finite, or not whole for an integer field (``96.0`` is taken as ``96``), or a
            combination the backend or algorithm cannot make.
    """

    quant: QuantMode = QuantMode.NONE
    sparsity: float = 0.0
    input_size: int | None = None
    calibration_samples: int = 200
    ops: OpsSet = OpsSet.BUILTINS
    io_type: IoType = IoType.INT8
    backend: Backend = Backend.CONVERTER
    algorithm: Algorithm = Algorithm.MIN_MAX

    def __post_init__(self):
        # Strings from Python callers become enum members here; the CLI passes members already.
        for name, enum_type in (("quant", QuantMode), ("ops", OpsSet), ("io_type", IoType), ("backend", Backend),
                                ("algorithm", Algorithm)):
            object.__setattr__(self, name, parse_enum(enum_type, getattr(self, name), name))
        sparsity = check_number(self.sparsity, "sparsity", float, example=0.5)
        if not 0.0 <= sparsity < 1.0:
            raise TFLiteError(f"sparsity={sparsity:g} is outside [0, 1); pass e.g. 0, 0.5 or 0.8")
        object.__setattr__(self, "sparsity", sparsity)
        if self.input_size is not None:
            object.__setattr__(self, "input_size", check_number(self.input_size, "input_size", int, 1, example=96,
                                                                hint=", or None for the native size"))
        object.__setattr__(self, "calibration_samples", check_number(
            self.calibration_samples, "calibration_samples", int, 0, low_open=True, example=200,
            hint=" (100-500 is typical)"))
        if self.backend not in self.recipe.backends():
            raise TFLiteError(f"quant={self.quant} cannot be made by backend={self.backend}; use backend="
                              + " or ".join(self.recipe.backends()))
        self._check_algorithm()

    def _check_algorithm(self) -> None:
        """Refuse an algorithm the backend or the mode cannot take (one line naming what can)."""
        algorithm = self.algorithm
        if algorithm == Algorithm.MIN_MAX:
            return
        if self.backend != Backend.LITERT:
            raise TFLiteError(f"algorithm={algorithm} needs backend=litert (TFLiteConverter only calibrates "
                              f"min-max); use backend=litert or algorithm=min_max")
        if self.quant == QuantMode.NONE:
            raise TFLiteError(f"algorithm={algorithm} quantizes weights, but quant=none keeps the float model; "
                              f"use a quantized mode or algorithm=min_max")
        if algorithm == Algorithm.GPTQ and self.recipe.calibrated:
            usable = [m for m, r in QUANT_RECIPES.items() if r.litert_recipe and not r.calibrated]
            raise TFLiteError(f"algorithm=gptq cannot be made with quant={self.quant} (GPTQ over calibrated int8/int16 "
                              f"activations gives a broken model); use quant={', '.join(usable)}, or another algorithm")

    @property
    def recipe(self):
        """The mode's row of ``quant_modes.QUANT_RECIPES``."""
        return QUANT_RECIPES[self.quant]

    @property
    def calibrated(self) -> bool:
        """True when the variant needs a representative dataset: its mode, or GPTQ (a Hessian from activations)."""
        return self.recipe.calibrated or self.algorithm == Algorithm.GPTQ

    @property
    def model_key(self) -> tuple[int | None, float, bool]:
        """``(input_size, sparsity, trained)``: variants with the same key share one adapted model.

        ``trained`` is True for quantization-aware training, whose fine-tuned model only
        ``qat_int8`` uses.
        """
        return self.input_size, self.sparsity, self.recipe.trained

    @property
    def name(self) -> str:
        """Readable name, e.g. ``int8-s0.5-96px``; ``int8_full-uint8-s0-8px`` for uint8 I/O,
        ``int8-s0-8px-litert-octav`` for a LiteRT Quantizer algorithm other than min_max."""
        parts = [self.quant]
        if self.recipe.integer_io and self.io_type != IoType.INT8:
            parts.append(self.io_type)
        parts.append(f"s{self.sparsity:g}")
        if self.input_size:
            parts.append(f"{self.input_size}px")
        if self.backend != Backend.CONVERTER:
            parts.append(self.backend)
        if self.algorithm != Algorithm.MIN_MAX:
            parts.append(self.algorithm)
        if self.ops != "builtins":
            parts.append(self.ops)
        return "-".join(parts)


def parse_list(value: str | list, name: str, cast=str, example: str = "none,int8") -> list:
    """Split a comma-separated parameter (``"none,dynamic"``) into cast, de-duplicated values.

    Args:
        example: a valid value of the parameter, shown in messages (``0,0.5`` for sparsity).

    Raises:
        TFLiteError: the list is empty or an item cannot be cast (the message names the item).
    """
    items = value if isinstance(value, (list, tuple)) else [part.strip() for part in str(value).split(",")]
    items = [item for item in items if item not in ("", None)]
    if not items:
        raise TFLiteError(f"{name} is an empty list; give at least one value, e.g. {name}={example}")
    parsed = []
    for item in items:
        try:
            value = cast(item)
        except (TypeError, ValueError):
            raise TFLiteError(f"{name} item {item!r} is not a valid {cast.__name__}; pass e.g. {example}") from None
        if value not in parsed:
            parsed.append(value)
    return parsed


def expand_grid(
    quants: list[str],
    sparsities: list[float],
    input_sizes: list[int | None],
    calibration_samples: int = 200,
    ops: OpsSet | str = OpsSet.BUILTINS,
    io_type: IoType | str = IoType.INT8,
    backend: Backend | str = Backend.CONVERTER,
    algorithms: list[Algorithm | str] = (Algorithm.MIN_MAX,),
) -> list[Variant]:
    """The cross product of the lists as Variants, in a stable order.

    Order: input size, then sparsity (so variants sharing a resized or pruned model are
    adjacent), then quantization mode, then algorithm, in the order given. The float model
    (``quant=none``) has no weights to quantize: it comes once, with ``min_max``, whatever
    the algorithms.

    Raises:
        TFLiteError: an invalid value in any list, or a combination no variant can make (see
            :class:`Variant`): the whole grid is refused before any run.
    """
    variants = []
    for size in input_sizes:
        for sparsity in sparsities:
            for quant in quants:
                for algorithm in ((Algorithm.MIN_MAX,) if str(quant).strip() == QuantMode.NONE else algorithms):
                    variant = Variant(quant, float(sparsity), size, calibration_samples, ops, io_type, backend,
                                      algorithm)
                    if variant not in variants:
                        variants.append(variant)
    return variants
