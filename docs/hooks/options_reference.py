"""MkDocs hook: the guide's options reference (``options.md``), generated at build time so it cannot drift.

The page is read off the code the command line itself is built from: the option dataclasses (each
field with :func:`mlflow_tflite.options.option` metadata is a ``--flag`` and a config-file key), the
click commands of ``mlflow-tflite`` (defaults, the commands that take each option, the options that
belong to no group), the quantization mode table (``quant_modes.QUANT_RECIPES``) and the MLproject
entry points (which options are ``-P`` parameters of ``mlflow run``).

``mkdocs.yml`` names this file under ``hooks:``; MkDocs calls :func:`on_files` before it builds the
navigation, so ``options.md`` is a page like any other. :func:`render` is plain Python (no MkDocs)
and is what ``tests/test_docs_options.py`` checks.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import re
from pathlib import Path

PAGE = "options.md"
# The section of a --config file that holds SweepConfig's fields (the CLI reads it beside CONFIG_SECTIONS).
SWEEP_SECTION = "sweep"
# What the click types' names mean to a reader.
TYPE_WORDS = {"int": "integer", "float": "number", "text": "text", "TEXT": "text", "INT": "integer",
              "FLOAT": "number", "names": "comma-separated names", "floats": "comma-separated numbers",
              "shapes": "`name:d1,d2,...;name2:...`"}


def on_files(files, config):
    """MkDocs event: add the generated ``options.md`` to the site's files."""
    from mkdocs.structure.files import File

    root = Path(config["config_file_path"]).parent
    files.append(File.generated(config, PAGE, content=render(root / "MLproject")))
    return files


def render(mlproject: Path) -> str:
    """The options reference page as Markdown.

    Args:
        mlproject: the project's ``MLproject`` file (its entry points' ``-P`` parameters).

    Returns:
        The page text: commands, the options outside any group, quantization modes, then one
        section per option group.
    """
    from mlflow_tflite import cli

    commands = dict(cli.cli.commands)
    parameters = mlproject_parameters(mlproject)
    groups = {**cli.CONFIG_SECTIONS, SWEEP_SECTION: cli.SweepConfig}
    grouped = {f.name for cls in groups.values() for f in option_fields(cls)}
    parts = [INTRO, commands_table(commands), ungrouped_table(commands, parameters, grouped),
             quant_modes_table()]
    parts += [group_section(section, cls, commands, parameters) for section, cls in groups.items()]
    return "\n\n".join(parts) + "\n"


INTRO = """# Options reference

!!! note "Generated from the code"
    This page is built from the option dataclasses and the `mlflow-tflite` commands each time the
    guide is built (`docs/hooks/options_reference.py`), so it always matches `mlflow-tflite <command> --help`.

An option can be given three ways:

- **On the command line**: `mlflow-tflite convert --max-accuracy-drop 0.005`.
- **As an `mlflow run` parameter**: `mlflow run . -P max_accuracy_drop=0.005`, for the options the
  *MLproject* column lists (each entry point keeps a short parameter list).
- **In a config file**: every option of a group below is also a key of that group's section in a
  YAML file, passed as `--config options.yaml` or `-P config=options.yaml`. Unknown sections or keys
  are refused with the list of valid ones; an option typed on the command line wins over the file.

The words `none`, `auto` and `native` mean "not set" wherever a value may be left unset."""


def option_fields(cls) -> list[dataclasses.Field]:
    """The fields of an option dataclass that are command-line options (those with help text)."""
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def mlproject_parameters(mlproject: Path) -> dict[str, list[str]]:
    """``{option name: ["`main`", "`sweep`", ...]}``: the entry points that pass each option as ``-P``.

    Read from each entry point's command (``--flag-name {parameter}``), so a parameter counts only
    where it reaches the command line; a parameter named unlike its option is shown as ``-P name``.
    """
    import yaml

    project = yaml.safe_load(mlproject.read_text())
    found: dict[str, list[str]] = {}
    for entry, spec in project["entry_points"].items():
        for flag, parameter in re.findall(r"--([\w-]+) \{(\w+)\}", spec["command"]):
            option = flag.replace("-", "_")
            renamed = "" if parameter == option else f" (`-P {parameter}`)"
            found.setdefault(option, []).append(f"`{entry}`{renamed}")
    return found


def known_enums() -> dict[str, type[enum.Enum]]:
    """Every option enum of the package by class name (the names click types carry)."""
    from mlflow_tflite import options, quant_modes

    members = inspect.getmembers(options, inspect.isclass) + inspect.getmembers(quant_modes, inspect.isclass)
    return {name: cls for name, cls in members if issubclass(cls, enum.Enum) and cls is not enum.Enum}


def values_of(param) -> str:
    """What a click option accepts, in words: its enum's members, a kind of number, a list, a flag."""
    if getattr(param, "is_flag", False):
        return "flag"
    name = getattr(param.type, "name", str(param.type))
    enums = known_enums()
    if name in enums:
        return ", ".join(f"`{m.value}`" for m in enums[name])
    return TYPE_WORDS.get(name, name)


def default_of(param) -> str:
    """A click option's default as ``--help`` shows it (``off`` for a flag, ``required``)."""
    if param.required:
        return "required"
    if getattr(param, "is_flag", False):
        return "off"
    value = param.default
    text = value.value if isinstance(value, enum.Enum) else value
    return f"`{'none' if text is None else text}`"


def cell(text: str) -> str:
    """Text fit for one Markdown table cell."""
    text = " ".join(str(text).split()).replace("``", "`").replace("|", "\\|")
    return text.replace("<", "&lt;").replace(">", "&gt;")


def find_params(commands: dict, name: str) -> dict[str, object]:
    """``{command name: click option}`` for every command that has the option ``name``."""
    return {command: param for command, cmd in commands.items() for param in cmd.params if param.name == name}


def commands_table(commands: dict) -> str:
    """The commands and the MLproject entry point each one is."""
    entry_points = {"convert": "`main`", "sweep": "`sweep`", "promote": "`promote`"}
    rows = ["## Commands", "", "| command | `mlflow run` entry point | what it does |", "|---|---|---|"]
    for name, command in commands.items():
        summary = cell(inspect.cleandoc(command.help or "").split("\n\n")[0])
        rows.append(f"| `mlflow-tflite {name}` | {entry_points.get(name, '-')} | {summary} |")
    return "\n".join(rows)


def per_command(values: dict[str, str]) -> str:
    """One value when every command agrees, else ``command: value`` lines."""
    if len(set(values.values())) == 1:
        return next(iter(values.values()))
    return "<br>".join(f"{command}: {value}" for command, value in values.items())


def option_row(name: str, commands: dict, parameters: dict) -> str:
    """One table row for the option ``name``: flag, default, values, commands, MLproject, help.

    Defaults and help texts that differ between commands (``quant``: one mode, or a list) are
    shown per command.
    """
    params = find_params(commands, name)
    first = next(iter(params.values()))
    default = per_command({command: default_of(param) for command, param in params.items()})
    help_text = per_command({command: cell(param.help or "") for command, param in params.items()})
    where = ", ".join(f"`{c}`" for c in params)
    mlproject = ", ".join(parameters.get(name, [])) or "-"
    return f"| `{name}` | `{first.opts[0]}` | {default} | {values_of(first)} | {where} | {mlproject} | {help_text} |"


def ungrouped_table(commands: dict, parameters: dict, grouped: set[str]) -> str:
    """The options of the commands that belong to no option group (model, data, the variant grid...)."""
    import click

    names = []
    for command in commands.values():
        names += [p.name for p in command.params
                  if isinstance(p, click.Option) and p.name not in grouped and p.name not in names]
    header = ["## Model, data and variants", "",
              "These options are not in a config-file section: give them on the command line or as `-P` parameters.",
              "", "| option | flag | default | values | commands | MLproject | description |",
              "|---|---|---|---|---|---|---|"]
    return "\n".join(header + [option_row(name, commands, parameters) for name in names])


def quant_modes_table() -> str:
    """The quantization modes: backends, calibration, integer I/O, LiteRT recipe (``QUANT_RECIPES``)."""
    from mlflow_tflite.quant_modes import QUANT_RECIPES

    rows = ["## Quantization modes", "",
            "The values of `quant`. *Calibrated* modes need data for the representative dataset "
            "(`calibration_samples` examples of the train split).", "",
            "| mode | backends | calibrated | integer I/O | LiteRT Quantizer recipe | how it is recognised |",
            "|---|---|---|---|---|---|"]
    for mode, recipe in QUANT_RECIPES.items():
        backends = ", ".join(f"`{b.value}`" for b in recipe.backends())
        litert = f"`{recipe.litert_recipe}`" if recipe.litert_recipe else "-"
        rows.append(f"| `{mode.value}` | {backends} | {'yes' if recipe.calibrated else 'no'} | "
                    f"{'yes' if recipe.integer_io else 'no'} | {litert} | {cell(recipe.recognised_by)} |")
    return "\n".join(rows)


def group_section(section: str, cls, commands: dict, parameters: dict) -> str:
    """One option group: its config-file section, the dataclass it is, and a row per option."""
    summary = inspect.cleandoc(cls.__doc__ or "").split("\n\n")[0]
    fields = option_fields(cls)
    example = fields[0].name
    rows = [f"## `{section}`", "", cell(summary), "",
            f"Config-file section `{section}` (`{section}: {{{example}: ...}}`), read into "
            f"`{cls.__module__}.{cls.__name__}`.", "",
            "| key | flag | default | values | commands | MLproject | description |",
            "|---|---|---|---|---|---|---|"]
    rows += [option_row(f.name, commands, parameters) for f in fields]
    return "\n".join(rows)
