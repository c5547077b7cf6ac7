"""Faults injected by the tests, never by production code.

``crash_on_variant`` and ``CrashOn`` replace ``worker.variant_task``: the tasks they make
(picklable: this module is importable in the spawned workers, whose ``sys.path`` is the test
process's) end the worker process, as a native crash in a converter would, for chosen variants.

Run as a script, ``python faults.py exit-after-register <mlflow-tflite args>`` runs the CLI and
kills the process (``os._exit``) right after the registry call returns, as a machine that dies
after registering would.

``hold_promotion_from_env`` makes a promoter process stop mid-promotion, at the stage named by
``HOLD_PROMOTION_ENV`` (``before-ready``: its version registered with its tags but not ready;
``after-ready``: ready, before any alias is read or set), write its version number into the file
named by ``HOLD_MARKER_ENV`` and sleep until the test kills it.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

CRASH_VARIANT_ENV = "TEST_CRASH_VARIANT"
HOLD_PROMOTION_ENV = "TEST_HOLD_PROMOTION"
HOLD_MARKER_ENV = "TEST_HOLD_MARKER"
HOLD_STAGES = ("before-ready", "after-ready")


@dataclass(frozen=True)
class CrashingTask:
    """A sweep's variant task (``worker.RunVariant``) whose worker process exits at once
    (``os._exit``, as a native crash or an OOM kill would end it) when it starts a variant named
    in ``always``, named by ``CRASH_VARIANT_ENV`` (with ``from_env``), or named in ``once`` the
    first time (a marker file in ``marker_dir`` remembers it across processes and nodes of this
    machine). Other variants run normally."""

    variant: object
    shipped: dict = field(default_factory=dict)
    always: tuple = ()
    once: tuple = ()
    marker_dir: str | None = None
    from_env: bool = False

    def __call__(self, worker):
        from mlflow_tflite.sweep.worker import RunVariant

        name = self.variant.name
        marker = Path(self.marker_dir or ".") / f"crashed-{name}"
        if (self.from_env and os.environ.get(CRASH_VARIANT_ENV) == name) or name in self.always \
                or (name in self.once and not marker.exists()):
            if self.marker_dir:
                marker.touch()
            os._exit(13)
        return RunVariant(self.variant, self.shipped)(worker)


def crash_on_variant(variant, shipped):
    """A ``worker.variant_task`` replacement: the variant named by ``CRASH_VARIANT_ENV`` crashes its worker."""
    return CrashingTask(variant, shipped, from_env=True)


class CrashOn:
    """A ``worker.variant_task`` replacement for any executor (Ray workers do not see the test's
    environment variables): see :class:`CrashingTask`."""

    def __init__(self, always=(), once=(), marker_dir=None):
        self.always, self.once, self.marker_dir = tuple(always), tuple(once), str(marker_dir)

    def __call__(self, variant, shipped):
        return CrashingTask(variant, shipped, self.always, self.once, self.marker_dir)


@dataclass(frozen=True)
class ModuleFile:
    """A sweep task that answers where the worker imported ``mlflow_tflite`` from."""

    shipped: dict = field(default_factory=dict)

    def __call__(self, worker):
        import mlflow_tflite

        return mlflow_tflite.__file__


def _exit_after_register() -> None:
    from mlflow_tflite.track import registry

    real = registry.register_and_promote

    def register_then_die(*args, **kwargs):
        registration = real(*args, **kwargs)
        sys.stdout.flush()
        os._exit(9)
        return registration

    registry.register_and_promote = register_then_die


def hold_promotion_from_env() -> None:
    """In a promoter process: hold at ``$TEST_HOLD_PROMOTION`` (see module doc); nothing when unset."""
    import time
    from pathlib import Path

    from mlflow_tflite.track import registry

    stage = os.environ.get(HOLD_PROMOTION_ENV)
    if not stage:
        return
    assert stage in HOLD_STAGES, stage
    real, marker = registry._mark_ready, Path(os.environ[HOLD_MARKER_ENV])

    def mark_ready_and_hold(client, name, version):
        if stage == "after-ready":
            real(client, name, version)
        marker.write_text(str(version))
        while True:
            time.sleep(60)

    registry._mark_ready = mark_ready_and_hold


if __name__ == "__main__":
    fault, *cli_args = sys.argv[1:]
    {"exit-after-register": _exit_after_register}[fault]()
    from mlflow_tflite.cli import cli

    cli(cli_args, prog_name="mlflow-tflite")
