"""Options as data: option enums, option groups, and their command-line edge.

The quantization modes and their one table live in ``quant_modes.py``.

Every option lives once, as a field of a frozen dataclass (``Variant``, ``SourceOptions``,
``data.Preprocessing``, ``selection.Tolerance``, ``RunSettings``, ...) whose ``metadata``
(:func:`option`) holds its help text and its :class:`click.ParamType`. :func:`click_options`
makes the click options from those fields, so values are parsed and checked once, at the edge,
with this project's one-line errors; the placeholder words (``none``, ``native``, ``auto``,
``demo``) are read in one place, :func:`given`. Expert options can also come from a YAML file
(``--config``), read by :func:`load_config` into the same dataclasses.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from mlflow_tflite.errors import TFLiteError

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
    """A click type whose errors are this project's one-line ``TFLiteError`` (exit status 1)."""

    def __init__(self, parse, name: str, optional: bool = False):
        self.parse, self.name, self.optional = parse, name, optional

    def convert(self, value, param, ctx):
        return self.parse_as(value, param.name if param else self.name)

    def parse_as(self, value, name: str):
        """``value`` parsed for the option ``name`` (non-strings pass through as already parsed)."""
        if self.optional and given(value) is None:
            return None
        return self.parse(value, name) if isinstance(value, str) else value


def choice(enum_type: type[enum.StrEnum], optional: bool = False) -> click.ParamType:
    """A member of ``enum_type`` (``auto``/``none`` -> ``None`` when ``optional``)."""
    return _Type(lambda v, name: parse_enum(enum_type, v, name), enum_type.__name__, optional)


def number(cast=float, low: float | None = None, high: float | None = None, low_open: bool = False,
           high_open: bool = False, optional: bool = False, hint: str = "") -> click.ParamType:
    """A number in a range, e.g. ``number(int, 1)`` for >= 1; ``none`` -> ``None`` when ``optional``."""

    def parse(value: str, name: str):
        try:
            parsed = cast(float(value)) if cast is int else cast(value)
        except ValueError:
            raise TFLiteError(f"{name} {value!r} is not a number; pass e.g. {low if low is not None else 1}") from None
        check_range(parsed, name, low, high, low_open, high_open, hint)
        return parsed

    return _Type(parse, cast.__name__, optional)


def check_range(value: float, name: str, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False, hint: str = "") -> None:
    """Raise ``TFLiteError("<name>=<value> must be >= low ...")`` when ``value`` is out of range."""
    if low is not None and (value <= low if low_open else value < low):
        raise TFLiteError(f"{name}={value} must be {'>' if low_open else '>='} {low:g}{hint}")
    if high is not None and (value >= high if high_open else value > high):
        raise TFLiteError(f"{name}={value} must be {'<' if high_open else '<='} {high:g}{hint}")


def text(optional: bool = True) -> click.ParamType:
    """Free text, e.g. a name or a run id (``none``/``auto`` -> ``None`` when ``optional``)."""
    return _Type(lambda v, name: v.strip(), "text", optional)


def names_list() -> click.ParamType:
    """Comma-separated names -> a tuple of names (``none`` -> ``None``)."""
    return _Type(lambda v, name: tuple(n.strip() for n in v.split(",") if n.strip()) or None, "names", True)


def floats_list() -> click.ParamType:
    """Comma-separated numbers, e.g. ``0.485,0.456,0.406`` -> a tuple of floats (``none`` -> ``None``)."""

    def parse(value: str, name: str):
        try:
            return tuple(float(v) for v in value.split(","))
        except ValueError:
            raise TFLiteError(f"{name} {value!r} is not a comma-separated list of numbers, e.g. 0.485,0.456,0.406") from None

    return _Type(parse, "floats", True)


def shapes_map() -> click.ParamType:
    """``a:1,8,8,1;b:1,4`` -> ``{"a": (1, 8, 8, 1), "b": (1, 4)}`` (``none`` -> ``None``)."""

    def parse(value: str, name: str):
        shapes = {}
        for part in value.split(";"):
            key, _, dims = part.partition(":")
            try:
                shapes[key.strip()] = tuple(int(d) for d in dims.split(","))
            except ValueError:
                raise TFLiteError(f"{name} part {part!r} is not name:d1,d2,...; e.g. input:1,224,224,3") from None
        return shapes

    return _Type(parse, "shapes", True)


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


def from_mapping(cls, values: dict, section: str):
    """An instance of ``cls`` from a config file section, each value parsed by its field's type.

    Raises:
        TFLiteError: a key that is not a field (the message lists the valid ones) or a bad value.
    """
    fields = {f.name: f for f in dataclasses.fields(cls) if "help" in f.metadata}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise TFLiteError(f"config section {section!r} has unknown keys {unknown}; use {sorted(fields)}")
    parsed = {}
    for key, value in values.items():
        meta = fields[key].metadata
        if meta["flag"]:
            parsed[key] = click.BOOL.convert(value, None, None) if not isinstance(value, bool) else value
            continue
        if value is None:
            raise TFLiteError(f"config section {section!r} key {key!r} is empty; give a value or leave the key out")
        text = ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else value
        if isinstance(value, dict):
            text = ";".join(f"{k}:{','.join(str(d) for d in dims)}" for k, dims in value.items())
        ptype = fields[key].metadata["type"]
        parsed[key] = ptype.parse_as(str(text), key) if ptype is not None and text is not None else value
    return parsed


def load_config(path: str | None, sections: dict[str, type]) -> dict[str, dict]:
    """Read a YAML config file: ``{section: {field: value}}``, validated against ``sections``.

    Args:
        path: the file, or ``None`` / a placeholder word for no file.
        sections: section name -> the dataclass its keys are fields of.

    Returns:
        section -> parsed field values (empty dicts without a file).

    Raises:
        TFLiteError: a missing or unreadable file, not a mapping, an unknown section or key, a bad value.
    """
    result: dict[str, dict] = {name: {} for name in sections}
    if given(path) is None:
        return result
    import yaml

    file = Path(path)
    if not file.is_file():
        raise TFLiteError(f"config file {str(path)!r} does not exist; pass a YAML file or none")
    try:
        content = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as error:
        raise TFLiteError(f"config file {str(path)!r} is not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(content, dict) or not all(isinstance(v, dict) for v in content.values()):
        raise TFLiteError(f"config file {str(path)!r} must map sections {sorted(sections)} to key: value mappings")
    unknown = sorted(set(content) - set(sections))
    if unknown:
        raise TFLiteError(f"config file {str(path)!r} has unknown sections {unknown}; use {sorted(sections)}")
    for name, values in content.items():
        result[name] = from_mapping(sections[name], values, name)
    return result


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
        text())
    num_threads: int = option(1, "LiteRT threads for latency/pyfunc.", number(int, 1))
    task: Task = option(Task.AUTO, "classification, fidelity (regression/embeddings/detection), or auto.",
                        choice(Task))
    no_register: bool = option(False, "Log the run(s) but do not register a model.", flag=True)
    no_tensor_errors: bool = option(False, "Skip the per-tensor comparison with the float model (with the "
                                           "converter backend it costs one float conversion per model).", flag=True)

    def __post_init__(self):
        check_range(self.num_threads, "num_threads", 1)
        object.__setattr__(self, "task", parse_enum(Task, self.task, "task"))
