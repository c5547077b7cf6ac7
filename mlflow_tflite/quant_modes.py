"""Quantization modes and their one table: converter settings, LiteRT recipe, how each is recognised.

Every stage asks this table (``QUANT_RECIPES``) instead of interpreting a mode's string.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class QuantMode(enum.StrEnum):
    """Quantization modes (DESIGN.md contract names); equal to their strings."""

    NONE = "none"
    DYNAMIC = "dynamic"
    FLOAT16 = "float16"
    INT8 = "int8"
    INT8_FULL = "int8_full"
    INT16X8 = "int16x8"
    WEIGHT_ONLY_INT8 = "weight_only_int8"
    DYNAMIC_INT4 = "dynamic_int4"
    WEIGHT_ONLY_INT4 = "weight_only_int4"
    INT8_MIXED = "int8_mixed"
    QAT_INT8 = "qat_int8"


class Backend(enum.StrEnum):
    """Quantization backends: TFLiteConverter, or the LiteRT Quantizer on the float flatbuffer."""

    CONVERTER = "converter"
    LITERT = "litert"


class Algorithm(enum.StrEnum):
    """LiteRT Quantizer algorithms (DESIGN.md contract names) overlaid on a mode's recipe; ``min_max`` is the recipe's own.

    ``key`` is the quantizer's ``algorithm_key`` (``ai_edge_quantizer.algorithm_manager.AlgorithmName``).
    """

    MIN_MAX = "min_max"
    MSE = "mse"
    OCTAV = "octav"
    HADAMARD = "hadamard"
    GPTQ = "gptq"
    OSCAR = "oscar"

    @property
    def key(self) -> str:
        """The quantizer's algorithm key, e.g. ``"OCTAV"``."""
        return ALGORITHM_KEYS[self]


ALGORITHM_KEYS: dict[Algorithm, str] = {
    Algorithm.MIN_MAX: "min_max_uniform_quantize", Algorithm.MSE: "MSE", Algorithm.OCTAV: "OCTAV",
    Algorithm.HADAMARD: "HADAMARD_ROTATION", Algorithm.GPTQ: "GPTQ", Algorithm.OSCAR: "OSCAR",
}


class Kernels(enum.StrEnum):
    """The converter op set a mode's kernels come from (``tf.lite.OpsSet``)."""

    BUILTINS = "TFLITE_BUILTINS"
    INT8 = "TFLITE_BUILTINS_INT8"
    INT16X8 = "EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8"


@dataclass(frozen=True)
class QuantRecipe:
    """What one quantization mode is: how the converter makes it and how it is recognised.

    The recipes are TensorFlow Lite's post-training quantization guide
    (https://ai.google.dev/edge/litert/models/post_training_quantization).

    Attributes:
        calibrated: needs a representative dataset.
        optimize: sets ``converter.optimizations = [tf.lite.Optimize.DEFAULT]``.
        float16_weights: sets ``target_spec.supported_types = [tf.float16]``.
        kernels: the op set of its kernels (integer-only modes fail instead of keeping float ops).
        integer_io: the model's inputs/outputs are integers (``io_type``).
        recognised_by: how :func:`recognise` tells the mode from a loaded model.
        litert_recipe: the LiteRT Quantizer's named recipe for the mode (a function of
            ``ai_edge_quantizer.recipe``), or ``None`` when only the converter makes it.
        converter: TFLiteConverter can make the mode.
        mixed: accuracy-guided mixed precision: int8, with the layers that cost the most
            accuracy kept in float until the tolerance is met (``mixed.py``).
        trained: quantization-aware training: the tf_keras model is fine-tuned with fake
            quantization before conversion (``build.qat.qat_model``).
        static_batch: the converted model's open batch dimension is fixed to 1
            (``flavor.flatbuffer.with_batch_one``): integer-only models go to the Edge TPU compiler and
            TensorFlow Lite Micro, which need static shapes.
    """

    calibrated: bool
    optimize: bool
    float16_weights: bool
    kernels: Kernels
    integer_io: bool
    recognised_by: str
    litert_recipe: str | None = None
    converter: bool = True
    mixed: bool = False
    trained: bool = False
    static_batch: bool = False

    def backends(self) -> tuple[Backend, ...]:
        """The backends that can make this mode (the float model, ``none``, needs no recipe)."""
        litert = self.litert_recipe is not None or not self.optimize
        return tuple(b for b, ok in ((Backend.CONVERTER, self.converter), (Backend.LITERT, litert)) if ok)


# LiteRT Quantizer recipes: ai_edge_quantizer.recipe (0.10), named <kind>_wi<bits>_a<activations>.
QUANT_RECIPES: dict[QuantMode, QuantRecipe] = {
    QuantMode.NONE: QuantRecipe(False, False, False, Kernels.BUILTINS, False, "none of the below"),
    QuantMode.DYNAMIC: QuantRecipe(False, True, False, Kernels.BUILTINS, False, "int8 weights, no QUANTIZE op",
                                   "dynamic_wi8_afp32"),
    QuantMode.FLOAT16: QuantRecipe(False, True, True, Kernels.BUILTINS, False, "float16 constants"),
    QuantMode.INT8: QuantRecipe(True, True, False, Kernels.INT8, False, "QUANTIZE ops, int8 activations",
                                "static_wi8_ai8"),
    QuantMode.INT8_FULL: QuantRecipe(True, True, False, Kernels.INT8, True, "integer model inputs",
                                     static_batch=True),
    QuantMode.INT16X8: QuantRecipe(True, True, False, Kernels.INT16X8, False, "QUANTIZE ops, int16 activations",
                                   "static_wi8_ai16"),
    QuantMode.WEIGHT_ONLY_INT8: QuantRecipe(False, True, False, Kernels.BUILTINS, False,
                                            "int8 weights dequantized to float (LiteRT Quantizer)",
                                            "weight_only_wi8_afp32", converter=False),
    QuantMode.DYNAMIC_INT4: QuantRecipe(False, True, False, Kernels.BUILTINS, False,
                                        "int4 weights (LiteRT Quantizer)", "dynamic_wi4_afp32", converter=False),
    QuantMode.WEIGHT_ONLY_INT4: QuantRecipe(False, True, False, Kernels.BUILTINS, False,
                                            "int4 weights dequantized to float (LiteRT Quantizer)",
                                            "weight_only_wi4_afp32", converter=False),
    # Builtin (float-capable) kernels: the layers kept in float run float kernels.
    QuantMode.INT8_MIXED: QuantRecipe(True, True, False, Kernels.BUILTINS, False,
                                      "as int8, with some ops left in float", "static_wi8_ai8", mixed=True),
    QuantMode.QAT_INT8: QuantRecipe(True, True, False, Kernels.INT8, False,
                                    "as int8 (ranges learnt in quantization-aware training)", trained=True),
}


@dataclass(frozen=True)
class ModelTraits:
    """What a loaded .tflite model shows about its quantization (read by ``runtime.quantization_mode``)."""

    integer_inputs: bool
    quantize_op: bool
    int16_tensors: bool
    int8_tensors: bool
    float16_tensors: bool


def recognise(traits: ModelTraits) -> QuantMode:
    """The quantization mode of a model from its traits, most specific first (see ``recognised_by``)."""
    if traits.integer_inputs:
        return QuantMode.INT8_FULL
    if traits.quantize_op:
        return QuantMode.INT16X8 if traits.int16_tensors else QuantMode.INT8
    if traits.int8_tensors:
        return QuantMode.DYNAMIC
    return QuantMode.FLOAT16 if traits.float16_tensors else QuantMode.NONE
