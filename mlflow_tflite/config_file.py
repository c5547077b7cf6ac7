"""The ``--config`` YAML file: expert options read into the option dataclasses' fields.

Each value is checked by its field's type (``options.number``, ...), a value of the wrong shape
(a list for one number, a mapping for a list) or a flag that is not a boolean is refused, and a
section whose dataclass needs no other arguments is built once to run its checks; every error is
one line naming the key, the section and the file.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from mlflow_tflite.errors import TFLiteError
from mlflow_tflite.options import given

FLAG_WORDS = {"true": True, "false": False, "yes": True, "no": False}


def load_config(path: str | None, sections: dict[str, type]) -> dict[str, dict]:
    """Read a YAML config file: ``{section: {field: value}}``, validated against ``sections``.

    Args:
        path: the file (UTF-8 YAML), or ``None`` / a placeholder word for no file.
        sections: section name -> the dataclass its keys are fields of.

    Returns:
        section -> parsed field values (empty dicts without a file).

    Raises:
        TFLiteError: a missing, unreadable or non-UTF-8 file, not YAML or not a mapping of
            mappings, an unknown section or key, a value of the wrong type or out of range (the
            message names the key, the section and the file).
    """
    result: dict[str, dict] = {name: {} for name in sections}
    if given(path) is None:
        return result
    content = _read_yaml(str(path))
    if not isinstance(content, dict) or not all(isinstance(v, dict) for v in content.values()):
        raise TFLiteError(f"config file {str(path)!r} must map sections {sorted(sections)} to key: value mappings, "
                          "e.g. run: {num_threads: 2}")
    unknown = sorted(str(name) for name in set(content) - set(sections))
    if unknown:
        raise TFLiteError(f"config file {str(path)!r} has unknown sections {unknown}; use {sorted(sections)}")
    for name, values in content.items():
        try:
            result[name] = from_mapping(sections[name], values, name)
        except TFLiteError as error:
            raise TFLiteError(f"{error.message} (config file {str(path)!r})") from None
    return result


def _read_yaml(path: str) -> Any:
    """The parsed YAML of ``path`` (``{}`` for an empty file)."""
    import yaml

    file = Path(path)
    if not file.is_file():
        what = "is a directory" if file.is_dir() else "does not exist"
        raise TFLiteError(f"config file {path!r} {what}; pass a YAML file or none")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise TFLiteError(f"config file {path!r} is not UTF-8 text (byte 0x{error.object[error.start]:02x} at "
                          f"offset {error.start}); save it as UTF-8 YAML") from None
    except OSError as error:
        raise TFLiteError(f"config file {path!r} cannot be read ({error.strerror}); pass a readable YAML file") from None
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise TFLiteError(f"config file {path!r} is not valid YAML ({str(error).splitlines()[0]})") from None


def from_mapping(cls, values: dict, section: str) -> dict:
    """The values of one config section, each parsed by its field's type, then checked by ``cls``.

    Returns:
        field name -> parsed value.

    Raises:
        TFLiteError: a key that is not a field (the message lists the valid ones) or a bad value;
            the message names the section.
    """
    fields = {f.name: f for f in dataclasses.fields(cls) if "help" in f.metadata}
    unknown = sorted(str(key) for key in set(values) - set(fields))
    if unknown:
        raise TFLiteError(f"config section {section!r} has unknown keys {unknown}; use {sorted(fields)}")
    parsed = {}
    for key, value in values.items():
        try:
            parsed[key] = _parse_value(fields[key], value)
        except TFLiteError as error:
            raise TFLiteError(f"config section {section!r}: {error.message}") from None
    if all(f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
           for f in dataclasses.fields(cls)):
        try:
            cls(**parsed)  # the checks that span fields (and those only __post_init__ makes)
        except TFLiteError as error:
            raise TFLiteError(f"config section {section!r}: {error.message}") from None
    return parsed


def _parse_value(field: dataclasses.Field, value: Any) -> Any:
    """One config value checked for its shape (flag, scalar, list or map), then parsed by the field's type."""
    key, meta = field.name, field.metadata
    if meta["flag"]:
        flag = FLAG_WORDS.get(value.strip().lower()) if isinstance(value, str) else value
        if not isinstance(flag, bool):
            raise TFLiteError(f"{key}={value!r} is not a boolean; pass true or false")
        return flag
    ptype = meta["type"]
    example = getattr(ptype, "example", None) or field.default
    if value is None:
        raise TFLiteError(f"key {key!r} is empty; give a value, e.g. {example}, or leave the key out")
    kind = getattr(ptype, "kind", "scalar")
    value = _as_text(key, value, kind, example)
    if ptype is None:
        return str(value)
    # A number stays a number for the types that check numbers (YAML's .inf and .nan are refused there).
    keep_number = kind == "scalar" and getattr(ptype, "parses_values", False)
    return ptype.parse_as(value if keep_number else str(value), key)


def _is_scalar(item: Any) -> bool:
    return isinstance(item, (str, int, float)) and not isinstance(item, bool)


def _as_text(key: str, value: Any, kind: str, example: Any) -> Any:
    """A YAML value as one scalar (a list joined by commas, a map as ``name:dims;...``); refuses the wrong shape."""
    if _is_scalar(value):
        return value
    if kind == "list" and isinstance(value, list) and all(_is_scalar(item) for item in value):
        return ",".join(str(item) for item in value)
    if kind == "map" and isinstance(value, dict) and all(
            isinstance(dims, list) and all(_is_scalar(d) for d in dims) for dims in value.values()):
        return ";".join(f"{name}:{','.join(str(d) for d in dims)}" for name, dims in value.items())
    shape = {list: "a list", dict: "a mapping", bool: "a boolean"}.get(type(value), type(value).__name__)
    wanted = {"list": "a list or comma-separated text", "map": "a mapping of names to shapes"}.get(kind, "one value")
    raise TFLiteError(f"{key}={value!r} is {shape}; pass {wanted}, e.g. {example}")
