"""Options as data: option enums, option groups, and their command-line edge.

The quantization modes and their one table live in ``quant_modes.py``.

Every option lives once, as a field of a frozen dataclass (``Variant``, ``SourceOptions``,
``data.Preprocessing``, ``selection.Tolerance``, ``RunSettings``, ...) whose ``metadata``
(:func:`option`) holds its help text and its :class:`click.ParamType`. :func:`click_options`
makes the click options from those fields, so values are parsed and checked once, at the edge,
with this project's one-line errors; the placeholder words (``none``, ``native``, ``auto``,
``demo``) are read in one place, :func:`given`. Expert options can also come from a YAML file
(``--config``), read by ``config_file.load_config`` into the same dataclasses. Value checks
shared with the dataclasses' ``__post_init__`` (the Python API) are in ``checks.py``.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass
from typing import Any

import click

from mlflow_tflite.checks import (
    MODEL_NAME_EXAMPLE, check_flag, check_model_name, check_number, example_for, names_tuple,
)
from mlflow_tflite.errors import TFLiteError
from mlflow_tflite.quant_modes import Algorithm

# Words that mean "not set" for a path, a name, a size or a budget; MLproject parameters need a
# word (MLflow logs an empty string as "''").
PLACEHOLDERS = ("", "none", "native", "auto", "demo")


def given(value: Any) -> Any:
    """``None`` for an unset value (``None`` or one of :data:`PLACEHOLDERS`), else the value."""
    return None if value is None or (isinstance(value, str) and value.strip().lower() in PLACEHOLDERS) else value


# ------------------------------------------------------------------------------------------------
# Enumerations (the quantization modes and their table: quant_modes.py)
# ------------------------------------------------------------------------------------------------


class OpsSet(enum.StrEnum):
    """Op sets a conversion may use: TFLite builtins, or builtins plus SELECT_TF_OPS (Flex)."""

    BUILTINS = "builtins"
    SELECT_TF = "select_tf"


class IoType(enum.StrEnum):
    """Integer I/O type of ``int8_full`` models (``uint8`` for Coral Edge TPU)."""

    INT8 = "int8"
    UINT8 = "uint8"


class Task(enum.StrEnum):
    """What the metrics judge: class accuracy, output fidelity, or chosen from data and model."""

    AUTO = "auto"
    CLASSIFICATION = "classification"
    FIDELITY = "fidelity"


class Objective(enum.StrEnum):
    """What "best" means among variants (a sweep) and model versions (the champion) within tolerance."""

    LATENCY = "latency"
    SIZE = "size"
    GZIP_SIZE = "gzip_size"  # size after gzip: for pruned models shipped compressed
    ACCURACY = "accuracy"


class Executor(enum.StrEnum):
    """Where a sweep's variants run: local worker processes, or Ray actors on a cluster."""

    LOCAL = "local"
    RAY = "ray"


class SourceFormat(enum.StrEnum):
    """Model source formats (``auto`` detects from the path)."""

    KERAS = "keras"
    H5 = "h5"
    SAVED_MODEL = "saved_model"
    FROZEN_GRAPH = "frozen_graph"
    MLFLOW = "mlflow"
    PT2 = "pt2"
    FACTORY = "factory"


class Layout(enum.StrEnum):
    """A PyTorch source's input layout: PyTorch's own (``nchw``), or channel-last I/O (``nhwc``)."""

    NCHW = "nchw"
    NHWC = "nhwc"


def parse_enum(enum_type: type[enum.StrEnum], value: Any, name: str):
    """``value`` (a member or its string) as a member of ``enum_type``.

    Raises:
        TFLiteError: ``"<name> '<value>' is unknown; use one of ..."``.
    """
    try:
        return enum_type(str(value).strip())
    except ValueError:
        raise TFLiteError(f"{name} {value!r} is unknown; use one of {', '.join(m.value for m in enum_type)}") from None


# ------------------------------------------------------------------------------------------------
# Parameter types: parse once, at the edge, with one-line errors
# ------------------------------------------------------------------------------------------------


class _Type(click.ParamType):
    """A click type whose errors are this project's one-line ``TFLiteError`` (exit status 1).

    Attributes:
        example: a value (as typed) that passes, for messages.
        kind: what a config file may give: ``scalar``, ``list`` (a YAML list or comma-separated
            text) or ``map`` (a YAML mapping or ``name:dims;...`` text).
        parses_values: also check values that are not strings (numbers from Python or YAML).
    """

    def __init__(self, parse, name: str, optional: bool = False, example: Any = None, kind: str = "scalar",
                 parses_values: bool = False):
        self.parse, self.name, self.optional = parse, name, optional
        self.example, self.kind, self.parses_values = example, kind, parses_values

    def convert(self, value, param, ctx):
        return self.parse_as(value, param.name if param else self.name)

    def parse_as(self, value, name: str):
        """``value`` parsed for the option ``name`` (non-strings pass through as already parsed,
        except for types that check values, e.g. :func:`number`)."""
        if self.optional and (value is None or given(value) is None):
            return None
        return self.parse(value, name) if isinstance(value, str) or self.parses_values else value


def choice(enum_type: type[enum.StrEnum], optional: bool = False) -> click.ParamType:
    """A member of ``enum_type`` (``auto``/``none`` -> ``None`` when ``optional``)."""
    return _Type(lambda v, name: parse_enum(enum_type, v, name), enum_type.__name__, optional,
                 example=next(iter(enum_type)).value)


def choices_list(enum_type: type[enum.StrEnum]) -> click.ParamType:
    """Comma-separated members of ``enum_type`` (or a list of them) -> a de-duplicated tuple of members."""

    def parse(value, name: str):
        items = value.split(",") if isinstance(value, str) else list(value)
        parsed = tuple(dict.fromkeys(parse_enum(enum_type, item, name) for item in items if str(item).strip()))
        if not parsed:
            raise TFLiteError(f"{name} is an empty list; give at least one value, e.g. {name}={next(iter(enum_type))}")
        return parsed

    return _Type(parse, enum_type.__name__, example=next(iter(enum_type)).value, kind="list", parses_values=True)


def number(cast=float, low: float | None = None, high: float | None = None, low_open: bool = False,
           high_open: bool = False, optional: bool = False, example: Any = None, hint: str = "") -> click.ParamType:
    """A finite number in a range, e.g. ``number(int, 1)`` for a whole number >= 1; ``none`` -> ``None``
    when ``optional``. Messages show ``example`` (default: a value inside the range) then ``hint``."""
    example = example_for(cast, low, high, low_open, high_open) if example is None else example
    hint = hint or (", or none" if optional else "")
    bounds = {"low": low, "high": high, "low_open": low_open, "high_open": high_open, "example": example, "hint": hint}

    def parse(value, name: str):
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise TFLiteError(f"{name} {value!r} is not a number; pass e.g. {example}{hint}") from None
        return check_number(value, name, cast, **bounds)

    return _Type(parse, cast.__name__, optional, example, parses_values=True)


def text(optional: bool = True, example: str = "") -> click.ParamType:
    """Free text, e.g. a name or a run id (``none``/``auto`` -> ``None`` when ``optional``)."""
    return _Type(lambda v, name: str(v).strip(), "text", optional, example)


def model_name(optional: bool = True) -> click.ParamType:
    """A registered model name MLflow accepts (``checks.check_model_name``); ``auto``/``none`` ->
    ``None`` when ``optional``, but an empty name is an error, not a placeholder."""

    def parse(value, name: str):
        if optional and (value is None or isinstance(value, str) and value.strip() and given(value) is None):
            return None
        return check_model_name(value, name)

    return _Type(parse, "name", example=MODEL_NAME_EXAMPLE)


def names_list(example: str = "a,b") -> click.ParamType:
    """Comma-separated names (or a list of names) -> a tuple of names (``none`` -> ``None``)."""
    return _Type(lambda v, name: names_tuple(v, name, example), "names", True, example, "list", parses_values=True)


def floats_list() -> click.ParamType:
    """Comma-separated finite numbers, e.g. ``0.485,0.456,0.406`` -> a tuple of floats (``none`` -> ``None``)."""
    example = "0.485,0.456,0.406"

    def parse(value: str, name: str):
        try:
            parsed = tuple(float(v) for v in value.split(","))
        except ValueError:
            raise TFLiteError(f"{name} {value!r} is not a comma-separated list of numbers; pass e.g. {example}") from None
        if not all(math.isfinite(v) for v in parsed):
            raise TFLiteError(f"{name} {value!r} has a value that is not a finite number; pass e.g. {example}")
        return parsed

    return _Type(parse, "floats", True, example, "list")


def shape() -> click.ParamType:
    """``1,3,48,48`` (or a list) -> ``(1, 3, 48, 48)``, positive whole numbers (``none`` -> ``None``)."""
    example = "1,3,224,224"

    def parse(value, name: str):
        parts = value.split(",") if isinstance(value, str) else list(value)
        try:
            dims = tuple(int(str(d).strip()) for d in parts)
        except ValueError:
            raise TFLiteError(f"{name} {value!r} is not a comma-separated list of whole numbers; pass e.g. {example}") from None
        if not dims or min(dims) < 1:
            raise TFLiteError(f"{name} {value!r} must have positive dimensions; pass e.g. {example}")
        return dims

    return _Type(parse, "shape", True, example, "list", parses_values=True)


def shapes_map() -> click.ParamType:
    """``a:1,8,8,1;b:1,4`` -> ``{"a": (1, 8, 8, 1), "b": (1, 4)}`` (``none`` -> ``None``)."""
    example = "input:1,224,224,3"

    def parse(value: str, name: str):
        shapes = {}
        for part in value.split(";"):
            key, _, dims = part.partition(":")
            try:
                shapes[key.strip()] = tuple(int(d) for d in dims.split(","))
            except ValueError:
                raise TFLiteError(f"{name} part {part!r} is not name:d1,d2,...; pass e.g. {example}") from None
        return shapes

    return _Type(parse, "shapes", True, example, "map")


# ------------------------------------------------------------------------------------------------
# Dataclass fields as click options
# ------------------------------------------------------------------------------------------------


def option(default: Any, help: str, type: click.ParamType | None = None, flag: bool = False, **field_args):
    """A dataclass field that is also a command-line option (``--field-name``).

    Args:
        default: the field's default (shown in ``--help``).
        help: one line for ``--help``.
        type: how the command line's text is parsed (:func:`number`, :func:`choice`, ...).
        flag: a boolean ``--field-name`` switch.
    """
    metadata = {"help": help, "type": type, "flag": flag}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: default, metadata=metadata, **field_args)
    return dataclasses.field(default=default, metadata=metadata, **field_args)


def _cli_default(value: Any) -> Any:
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return value.value if isinstance(value, enum.Enum) else value


def click_options(cls):
    """Decorator: one click option per :func:`option` field of the dataclass ``cls``."""

    def decorate(command):
        for f in reversed(dataclasses.fields(cls)):
            meta = f.metadata
            if "help" not in meta:
                continue
            name = "--" + f.name.replace("_", "-")
            if meta["flag"]:
                command = click.option(name, is_flag=True, default=f.default, help=meta["help"])(command)
                continue
            command = click.option(name, default=_cli_default(f.default), type=meta["type"], show_default=True,
                                   help=meta["help"])(command)
        return command

    return decorate


def from_kwargs(cls, kwargs: dict, overrides: dict | None = None):
    """An instance of ``cls`` from the command's keyword arguments (see :func:`pop_fields`)."""
    return cls(**pop_fields(cls, kwargs, overrides))


def pop_fields(cls, kwargs: dict, overrides: dict | None = None) -> dict:
    """Pop the values of ``cls``'s fields from a command's keyword arguments.

    ``overrides`` (from a config file) replace defaults but not values typed on the command line.
    A typed placeholder (``auto``/``none``, as ``mlflow run`` passes every MLproject default)
    counts as not typed, and a field that is not optional then keeps its dataclass default.
    """
    ctx = click.get_current_context(silent=True)
    overrides = overrides or {}
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in kwargs:
            continue
        value = kwargs.pop(f.name)
        typed = value is not None and (
            ctx is None or ctx.get_parameter_source(f.name) == click.core.ParameterSource.COMMANDLINE)
        if not typed and f.name in overrides:
            value = overrides[f.name]
        if value is None and f.default is not None and f.default is not dataclasses.MISSING:
            value = f.default
        values[f.name] = value
    return values


# ------------------------------------------------------------------------------------------------
# Option groups that belong to no single stage
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSettings:
    """How a job runs and records its result (not what it converts).

    Attributes:
        registered_model_name: registry name, or ``None`` to derive it from the source
            (``digits-cnn`` for the demo).
        num_threads: LiteRT interpreter threads for latency and the pyfunc (>= 1).
        task: :class:`Task`: what the metrics judge.
        no_register: log the run(s) without registering a model.
        no_tensor_errors: skip the per-tensor error table of quantized variants.
    """

    registered_model_name: str | None = option(
        None, "Registry name; auto derives it from the source (digits-cnn for the demo).",
        model_name())
    num_threads: int = option(1, "LiteRT threads for latency/pyfunc.", number(int, 1))
    task: Task = option(Task.AUTO, "classification, fidelity (regression/embeddings/detection), or auto.",
                        choice(Task))
    no_register: bool = option(False, "Log the run(s) but do not register a model.", flag=True)
    no_tensor_errors: bool = option(False, "Skip the per-tensor comparison with the float model (with the "
                                           "converter backend it costs one float conversion per model).", flag=True)

    def __post_init__(self):
        if self.registered_model_name is not None:
            object.__setattr__(self, "registered_model_name", check_model_name(self.registered_model_name))
        object.__setattr__(self, "num_threads", check_number(self.num_threads, "num_threads", int, 1))
        object.__setattr__(self, "task", parse_enum(Task, self.task, "task"))
        for name in ("no_register", "no_tensor_errors"):
            check_flag(getattr(self, name), name)


@dataclass(frozen=True)
class QuantizerOptions:
    """LiteRT Quantizer options (``backend=litert``); config file section ``quantizer``.

    Attributes:
        algorithm: :class:`quant_modes.Algorithm` members overlaid on each mode's recipe (a sweep
            crosses them with its modes; ``convert`` takes one). Given as comma-separated text
            (``"min_max,octav"``) or a list.

    Raises:
        TFLiteError: an unknown algorithm or an empty list.
    """

    algorithm: tuple[Algorithm, ...] = option(
        (Algorithm.MIN_MAX,), "backend=litert: quantizer algorithm(s), comma-separated in a sweep: "
        + ", ".join(Algorithm) + ".", choices_list(Algorithm))

    def __post_init__(self):
        object.__setattr__(self, "algorithm", choices_list(Algorithm).parse_as(self.algorithm, "algorithm"))
