"""A sweep worker: what it opens once (:class:`Job`), its state (:class:`Worker`) and its tasks.

A worker process (local) or Ray actor holds one :class:`Worker`: the context (source, data,
reference outputs) opened once and the source's build graph (``build.graph.Builds``). Tasks are
picklable values the driver sends; each returns a value (``Description``, ``.h5`` bytes, a
``FloatModel``, an ``Outcome``). Models a task needs that another worker built travel inside
the task (``shipped``: by model key, ``.h5`` bytes; by ``(key, ops)``, float flatbuffers), so no
worker reads another's files.
"""

from __future__ import annotations

import io
import logging
import os
import tarfile
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from mlflow_tflite.build.data import Dataset
from mlflow_tflite.build.graph import Builds, FloatModel, ModelKey
from mlflow_tflite.errors import TFLiteError, first_line
from mlflow_tflite.options import OpsSet
from mlflow_tflite.quiet import start_tensorflow
from mlflow_tflite.sweep.context import Context, prepare
from mlflow_tflite.sweep.outcome import Outcome
from mlflow_tflite.sweep.record import SourceDescription, describe
from mlflow_tflite.sweep.work import variant_work
from mlflow_tflite.variants import Variant

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShippedSource:
    """A local model file or directory as bytes, for workers on other machines (Ray).

    Attributes:
        file_name: the file's (or directory's) name.
        content: the file's bytes, or a tar of the directory.
        is_dir: ``content`` is a tar of a directory.
        uri: what the runs record as ``source`` (the original path).
        name: the source's name (the original file's stem or directory name).
    """

    file_name: str
    content: bytes
    is_dir: bool
    uri: str
    name: str

    @classmethod
    def of(cls, model) -> ShippedSource | None:
        """A local path's model as bytes; ``None`` for anything else (the demo, an MLflow URI, an object)."""
        if not isinstance(model, (str, Path)) or not Path(model).exists():
            return None
        path = Path(model).resolve()
        if not path.is_dir():
            return cls(path.name, path.read_bytes(), False, str(path), path.stem)
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            tar.add(path, arcname=path.name)
        return cls(path.name, buffer.getvalue(), True, str(path), path.name)

    def unpack(self, folder: Path) -> Path:
        """Write the model into ``folder``; return its path there."""
        if self.is_dir:
            with tarfile.open(fileobj=io.BytesIO(self.content)) as tar:
                tar.extractall(folder, filter="data")
        else:
            (folder / self.file_name).write_bytes(self.content)
        return folder / self.file_name


@dataclass(frozen=True)
class Job:
    """What every worker opens once.

    Attributes:
        open_args: ``context.prepare`` keyword arguments (``model``, ``data``, task, settings,
            source options); ``dataset`` is given separately.
        dataset: the data, loaded once by the driver (``None`` without data).
        shipped_source: the model as bytes for workers that cannot read the driver's disk.
    """

    open_args: dict
    dataset: Dataset | None = None
    shipped_source: ShippedSource | None = None


class Worker:
    """One worker's state: its :class:`Job`'s context, opened on first use, and its build graph."""

    def __init__(self, job: Job):
        self.job = job
        self._folder = None  # where a shipped source is unpacked; lives as long as the worker
        self._state: tuple[Context, Builds] | None = None

    def state(self) -> tuple[Context, Builds]:
        """``(context, builds)``, opened on the first call.

        Raises:
            TFLiteError: the source or data cannot be opened (see ``context.prepare``).
        """
        if self._state is None:
            args = dict(self.job.open_args)
            shipped = self.job.shipped_source
            if shipped is not None:
                self._folder = tempfile.TemporaryDirectory(prefix="mlflow-tflite-worker-")
                args["model"] = str(shipped.unpack(Path(self._folder.name)))
            context = prepare(**args, dataset=self.job.dataset)
            if shipped is not None:  # the runs record the original path and name
                context.source.uri, context.source.name = shipped.uri, shipped.name
            self._state = context, Builds(context.build_inputs())
        return self._state

    def warm_up(self) -> None:
        """Start TensorFlow quietly and open the context now (a failure is reported by the first task instead)."""
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        try:
            start_tensorflow()
            self.state()
        except Exception as error:  # reported with the first task, where it is attributed
            logger.debug("worker could not open its source yet: %s", first_line(error))

    def run(self, task) -> tuple[str, object]:
        """``("ok", task(self))``, or ``("error", one-line message)`` when it raises.

        Any failure of a task is reported as its variant's error (a FAILED child run), not
        raised: one bad variant must not stop the sweep.
        """
        try:
            return "ok", task(self)
        except TFLiteError as error:
            return "error", error.message
        except Exception as error:  # a converter's or TensorFlow's own error: the variant fails, the sweep goes on
            return "error", f"{type(error).__name__}: {first_line(error)}"

    def close(self) -> None:
        """Delete the unpacked copy of a shipped source (a worker on another machine leaves nothing behind)."""
        if self._folder is not None:
            self._folder.cleanup()
            self._folder, self._state = None, None

    def builds(self, shipped: dict) -> Builds:
        """The build graph with the ``shipped`` models and float flatbuffers added."""
        builds = self.state()[1]
        for key, value in shipped.items():
            if isinstance(key, ModelKey):
                builds.add_model(key, value)
            else:
                builds.add_float(*key, value)
        return builds


@dataclass(frozen=True)
class Describe:
    """Task: the source's description (``record.describe``)."""

    shipped: dict = field(default_factory=dict)

    def __call__(self, worker: Worker) -> SourceDescription:
        return describe(worker.state()[0])


@dataclass(frozen=True)
class BuildModel:
    """Task: the model of ``key`` (resized, pruned or QAT-trained) as ``.h5`` bytes."""

    key: ModelKey
    shipped: dict = field(default_factory=dict)

    def __call__(self, worker: Worker) -> bytes:
        return worker.builds(self.shipped).model_bytes(self.key)


@dataclass(frozen=True)
class BuildFloat:
    """Task: the float flatbuffer of ``(key, ops)`` (``build.graph.FloatModel``)."""

    key: ModelKey
    ops: OpsSet
    shipped: dict = field(default_factory=dict)

    def __call__(self, worker: Worker) -> FloatModel:
        return worker.builds(self.shipped).float_model(self.key, self.ops)


@dataclass(frozen=True)
class RunVariant:
    """Task: one variant's work (``work.variant_work``) -> ``Outcome``."""

    variant: Variant
    shipped: dict = field(default_factory=dict)

    def __call__(self, worker: Worker) -> Outcome:
        return variant_work(worker.state()[0], worker.builds(self.shipped), self.variant)


def variant_task(variant: Variant, shipped: dict) -> RunVariant:
    """The task that runs ``variant`` (the sweep makes its tasks through here)."""
    return RunVariant(variant, shipped)


def with_shipped(task, shipped: dict):
    """``task`` carrying ``shipped`` instead of its own (executors swap bytes for object references)."""
    return replace(task, shipped=shipped)


def task_name(task) -> str:
    """The variant a task runs, or what it builds, for messages."""
    if hasattr(task, "variant"):
        return task.variant.name
    if hasattr(task, "key"):
        return f"the model at {task.key}"
    return "the source"
