"""Faults injected by the tests, never by production code.

``crash_on_variant`` is a sweep worker task (picklable: this module is importable in the
spawned workers, whose ``sys.path`` is the test process's) that aborts the worker process, as
a native crash in a converter would, when it starts the variant named by ``CRASH_VARIANT_ENV``;
``CrashOn`` does the same for variants it is given (for Ray workers, which do not see the test's
environment variables).

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

CRASH_VARIANT_ENV = "TEST_CRASH_VARIANT"
HOLD_PROMOTION_ENV = "TEST_HOLD_PROMOTION"
HOLD_MARKER_ENV = "TEST_HOLD_MARKER"
HOLD_STAGES = ("before-ready", "after-ready")


def crash_on_variant(variant):
    from mlflow_tflite import sweep

    if os.environ.get(CRASH_VARIANT_ENV) == variant.name:
        os.abort()
    return sweep.run_variant_task(variant)


class CrashOn:
    """A sweep worker task for any executor (picklable; Ray workers import this module through
    ``PYTHONPATH``): the worker process exits at once (``os._exit``, as a native crash or an OOM
    kill would end it) when it starts a variant named in ``always``, or one named in ``once``
    the first time (a marker file in ``marker_dir`` remembers it across processes and nodes of
    this machine). Other variants run normally."""

    def __init__(self, always=(), once=(), marker_dir=None):
        self.always, self.once, self.marker_dir = tuple(always), tuple(once), str(marker_dir)

    def __call__(self, variant):
        from pathlib import Path

        from mlflow_tflite import sweep

        marker = Path(self.marker_dir) / f"crashed-{variant.name}"
        if variant.name in self.always or (variant.name in self.once and not marker.exists()):
            marker.touch()
            os._exit(13)
        return sweep.run_variant_task(variant)


def _exit_after_register() -> None:
    from mlflow_tflite import registry

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

    from mlflow_tflite import registry

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
