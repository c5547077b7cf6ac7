"""Value checks shared by the option types and the option dataclasses: one-line errors that name
the option and show a value that passes.

Every numeric option goes through :func:`check_number` (finite, whole for integer options, in
range), registry names through :func:`check_model_name`, name lists through :func:`names_tuple`.
"""

from __future__ import annotations

import math
import numbers
import posixpath
from typing import Any

from mlflow_tflite.errors import TFLiteError

# MLflow's SQL stores declare registered_models.name as VARCHAR(256) (sqlite does not enforce it,
# MySQL and PostgreSQL do), so a longer name would work on one store and fail on another.
MAX_MODEL_NAME_LENGTH = 256
MODEL_NAME_EXAMPLE = "digits-cnn"


def check_number(value: Any, name: str, cast: type = float, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, example: Any = None, hint: str = ""):
    """``value`` as a finite ``cast`` (``int`` or ``float``) within the bounds, else a one-line error.

    Args:
        value: an int or float (``bool`` is refused; strings are parsed by ``options.number``).
        name: the option's name, e.g. ``workers``.
        cast: ``int`` (a float must be whole: ``96.0`` -> ``96``) or ``float``.
        low, high: bounds, inclusive unless ``low_open`` / ``high_open``.
        example: a value that passes, shown in every message (default: see :func:`example_for`).
        hint: appended after the example, e.g. ``", or none for no budget"``.

    Returns:
        ``value`` as ``cast``.

    Raises:
        TFLiteError: e.g. ``"workers=0 must be >= 1; pass e.g. 1"``, ``"input_size=inf is not a
            finite number; pass e.g. 96, or native"``, ``"max_trials=2.5 is not a whole number; ..."``.
    """
    shown = example_for(cast, low, high, low_open, high_open) if example is None else example
    advice = f"; pass e.g. {shown}{hint}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TFLiteError(f"{name}={value!r} is not a number{advice}")
    if not math.isfinite(value):
        raise TFLiteError(f"{name}={value} is not a finite number{advice}")
    if cast is int and value != int(value):
        raise TFLiteError(f"{name}={value} is not a whole number{advice}")
    value = int(value) if cast is int else float(value)
    if low is not None and (value <= low if low_open else value < low):
        raise TFLiteError(f"{name}={value} must be {'>' if low_open else '>='} {low:g}{advice}")
    if high is not None and (value >= high if high_open else value > high):
        raise TFLiteError(f"{name}={value} must be {'<' if high_open else '<='} {high:g}{advice}")
    return value


def example_for(cast: type, low: float | None, high: float | None, low_open: bool, high_open: bool):
    """A value inside the bounds to show in messages: the lower bound, or just above an open one."""
    if low is None:
        candidate = 1 if high is None or 1 < high or (1 == high and not high_open) else high - 1
    elif not low_open:
        candidate = low
    elif cast is int:
        candidate = math.floor(low) + 1
    else:
        candidate = low + 1 if high is None else (low + high) / 2
    return cast(candidate) if cast is int else float(candidate)


def check_optional_number(value: Any, name: str, cast: type = float, **bounds):
    """``None`` stays ``None``; anything else is :func:`check_number`'s."""
    return None if value is None else check_number(value, name, cast, **bounds)


def check_flag(value: Any, name: str) -> bool:
    """``value`` when it is a ``bool``, else ``TFLiteError("<name>=<value> is not a boolean; pass true or false")``."""
    if not isinstance(value, bool):
        raise TFLiteError(f"{name}={value!r} is not a boolean; pass true or false")
    return value


def check_model_name(name: str, option: str = "registered_model_name") -> str:
    """A registered model name MLflow accepts on every store, else a one-line error.

    MLflow's rules (``mlflow.utils.validation``): not empty, no ``/`` or ``:``, and not a
    name that resolves to another path (``.``, ``..x``); plus at most
    :data:`MAX_MODEL_NAME_LENGTH` characters.

    Args:
        name: the name (surrounding spaces are removed first).
        option: the option it came from, for the message.

    Returns:
        The stripped name.

    Raises:
        TFLiteError: e.g. ``"registered_model_name 'a/b' contains '/', which MLflow model names
            cannot contain; pass e.g. a-b"``.
    """
    if not isinstance(name, str):
        raise TFLiteError(f"{option}={name!r} is not text; pass a name, e.g. {MODEL_NAME_EXAMPLE}")
    stripped = name.strip()
    if not stripped:
        raise TFLiteError(f"{option} is empty; pass a name, e.g. {MODEL_NAME_EXAMPLE}, or auto to name it "
                          "after the source")
    bad = [c for c in ("/", ":") if c in stripped]
    if bad:
        fixed = stripped.replace("/", "-").replace(":", "-")
        raise TFLiteError(f"{option} {stripped!r} contains {' and '.join(map(repr, bad))}, which MLflow model "
                          f"names cannot contain; pass e.g. {fixed}")
    if posixpath.normpath(stripped) != stripped or stripped == "." or stripped.startswith(".."):
        raise TFLiteError(f"{option} {stripped!r} reads as a relative path, which MLflow refuses as a model name; "
                          f"pass e.g. {MODEL_NAME_EXAMPLE}")
    if len(stripped) > MAX_MODEL_NAME_LENGTH:
        raise TFLiteError(f"{option} {stripped[:20] + '...'!r} has {len(stripped)} characters; MLflow stores at "
                          f"most {MAX_MODEL_NAME_LENGTH}, pass a shorter name, e.g. {MODEL_NAME_EXAMPLE}")
    return stripped


def names_tuple(value: Any, name: str, example: str) -> tuple[str, ...] | None:
    """A comma-separated string or a list of strings as a tuple of names (``None`` when empty).

    Raises:
        TFLiteError: ``value`` is neither, or an item is not a string.
    """
    if value is None:
        return None
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise TFLiteError(f"{name}={value!r} is not a list of names; pass e.g. {example}")
    bad = [item for item in items if not isinstance(item, str)]
    if bad:
        raise TFLiteError(f"{name} item {bad[0]!r} is not a name; pass names as text, e.g. {example}")
    return tuple(item.strip() for item in items if item.strip()) or None
