"""The Ray sweep executor (``executor=ray``): the sweep's worker tasks as tasks of Ray actors.

``RayExecutor`` runs the same guarded task functions as the local executor (``sweep.describe``,
``build_variant_model``, ``run_variant_task``) in a pool of ``workers`` Ray actors, one CPU
each, on the cluster at ``ray_address`` (``None``: the running cluster Ray finds, else a local
one it starts). Each actor is a worker process holding its ``pipeline.Prepared`` (the opened
source, data and reference outputs) in ``sweep._WORKER``, as a local worker does; each task
is one actor call, so the variants are spread over the cluster's nodes.

What goes through the object store, once each (all objects are owned by the driver, so they
outlive any actor):

- the data set arrays, loaded once by the driver (``ray.put``) and given to every actor;
- the source: a model file (or a SavedModel directory, as a tar) is read once by the driver;
  the demo CNN is opened (trained or read from its cache) by the first actor, which returns
  its ``.h5`` bytes; an MLflow model URI is opened by each actor from the tracking server;
- each pruned / resized / QAT model, once per ``Variant.model_key``: the actor that built it
  in phase 2 returns its ``.h5`` bytes as a second return value that stays in the object store.

These travel as files of the worker directory (``sweep._WORKER["workdir"]``): a file a task
writes there is returned as an object, and an actor fetches the objects it has not seen before
its next task, so a model crosses machines without a shared disk, and each actor loads it once.

Only the driver writes to MLflow. Workers return ``pipeline.Outcome`` values (the .tflite bytes
and metrics, a few hundred KB) and the driver logs them, exactly as with the local executor:
one code path for both executors, one writer to the tracking store (a sqlite file works, no
tracking server is needed), and no tracking URI or credentials on the cluster's workers. The
cost, one copy of each outcome to the driver, is small next to a conversion.

A task whose actor process dies (``RayActorError``: a native crash, an OOM kill, a lost node) is
run once more on a restarted actor (actors have ``max_restarts=-1``); if it dies again, its
variant is reported as an error (a FAILED child run naming the variant) and the sweep goes on.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import tarfile
import tempfile
from collections import Counter, deque
from pathlib import Path
from urllib.parse import urlparse

from mlflow_tflite.errors import TFLiteError, first_line

SOURCE_DIR = "source"  # worker-directory folder of the shipped source
IDENTITY_FILE = f"{SOURCE_DIR}/identity.json"  # {"model": path to open, "uri": ..., "name": ...}
ATTEMPTS = 2  # a task whose worker dies runs at most this often


def _import_ray():
    try:
        import ray
    except ImportError:
        raise TFLiteError("executor=ray needs Ray; pip install 'mlflow-tflite[ray]', or use executor=local") from None
    return ray


def check_address(address: str | None, timeout: float = 5.0) -> None:
    """Fail fast on a ``host:port`` / ``ray://host:port`` that does not answer (``ray.init`` would
    retry for minutes).

    Raises:
        TFLiteError: the address has no port or nothing listens there.
    """
    if address is None or address in ("auto", "local"):
        return
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    try:
        host, port = parsed.hostname, parsed.port
    except ValueError:
        host, port = None, None
    if not host or not port:
        raise TFLiteError(f"ray_address {address!r} is not host:port or ray://host:port; e.g. 127.0.0.1:6379, "
                          "or auto to join a running cluster or start a local one")
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as error:
        raise TFLiteError(f"ray_address {address!r} does not answer ({first_line(error)}); start the cluster "
                          "(ray start --head) or pass its address, or auto") from None


class _SweepActor:
    """One Ray worker: the local worker's state (``sweep._WORKER``) plus a synced worker directory."""

    def __init__(self, open_args: dict):
        from mlflow_tflite import sweep

        self.workdir = Path(tempfile.mkdtemp(prefix="mlflow-tflite-ray-"))
        (self.workdir / SOURCE_DIR).mkdir()
        sweep._worker_init(dict(open_args), str(self.workdir))
        sweep._warm_up()
        self.known: set[str] = set()
        self.bundles_seen: set[int] = set()

    def _files(self) -> set[str]:
        return {str(p.relative_to(self.workdir)) for p in self.workdir.rglob("*") if p.is_file()}

    def _sync(self, dataset: list, bundles: list) -> None:
        """Fetch the data set (once) and write the shared files this worker has not seen yet (one
        ``ray.get`` per bundle). The references come nested in lists, so Ray passes them as they
        are and each object is fetched only when this worker lacks it."""
        import ray

        from mlflow_tflite import sweep

        if "dataset" not in sweep._WORKER["open_args"]:
            sweep._WORKER["open_args"]["dataset"] = ray.get(dataset[0])
        for index, ref in bundles:
            if index in self.bundles_seen:
                continue
            for name, content in ray.get(ref).items():
                path = self.workdir / name
                if not path.exists():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(content)
                    if name.endswith(".tar"):
                        with tarfile.open(path) as tar:
                            tar.extractall(path.parent, filter="data")
            self.bundles_seen.add(index)
        identity = self.workdir / IDENTITY_FILE
        if identity.exists() and "prepared" not in sweep._WORKER and "source_identity" not in sweep._WORKER:
            shipped = json.loads(identity.read_text())
            sweep._WORKER["open_args"]["model"] = str(self.workdir / shipped["model"])
            sweep._WORKER["source_identity"] = (shipped["uri"], shipped["name"])
        self.known = self._files()

    def _export_demo(self) -> None:
        """After the demo CNN is opened here: write it (and its identity) for the other workers."""
        from mlflow_tflite import sweep

        prepared = sweep._WORKER.get("prepared")
        if prepared is None or sweep._WORKER["open_args"].get("model") is not None \
                or (self.workdir / IDENTITY_FILE).exists() or prepared.source.keras_model is None:
            return
        file = f"{SOURCE_DIR}/{prepared.source.name}.h5"
        prepared.source.keras_model.save(self.workdir / file)
        (self.workdir / IDENTITY_FILE).write_text(
            json.dumps({"model": file, "uri": prepared.source.uri, "name": prepared.source.name}))

    def run(self, task, item, dataset: list, bundles: list):
        """``task(item)`` -> ``((status, value, new file names), {new file: bytes})`` (two return objects)."""
        self._sync(dataset, bundles)
        status, value = task(item)
        self._export_demo()
        new = sorted(self._files() - self.known)
        self.known |= set(new)
        if status == "ok" and isinstance(value, str) and value.startswith(str(self.workdir)):
            value = os.path.relpath(value, self.workdir)  # a path here means nothing to the driver
        return (status, value, new), {name: (self.workdir / name).read_bytes() for name in new}

    def ping(self) -> bool:
        """Answers once this worker (restarted after a crash) is ready for work."""
        return True

    def cleanup(self) -> None:
        """Delete this worker's directory (``close`` calls it before killing the actor)."""
        shutil.rmtree(self.workdir, ignore_errors=True)


def _source_bundle(model) -> dict[str, bytes] | None:
    """A local model file or directory as worker-directory files, with its identity; else ``None``
    (the demo, an MLflow model URI, a model object)."""
    if not isinstance(model, (str, Path)) or not Path(model).exists():
        return None
    path = Path(model).resolve()
    if path.is_dir():
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            tar.add(path, arcname=path.name)
        files = {f"{SOURCE_DIR}/{path.name}.tar": buffer.getvalue()}
    else:
        files = {f"{SOURCE_DIR}/{path.name}": path.read_bytes()}
    # The run records the original path as its source and its stem (or directory name) as the model name.
    name = path.name if path.is_dir() else path.stem
    identity = {"model": f"{SOURCE_DIR}/{path.name}", "uri": str(path), "name": name}
    return {**files, IDENTITY_FILE: json.dumps(identity).encode()}


class RayExecutor:
    """``workers`` Ray actors (one CPU each) running the sweep's tasks; see the module docstring."""

    def __init__(self, count: int, open_args: dict, dataset, address: str | None = None):
        """Join (or start) the cluster, put the data and source into the object store, start the actors.

        Raises:
            TFLiteError: Ray is not installed, or ``address`` does not answer.
        """
        ray = _import_ray()
        self.ray, self.owns_ray, self.actors, self.running = ray, False, [], {}
        if not ray.is_initialized():
            check_address(address)
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                         configure_logging=True)
            except (ConnectionError, RuntimeError, ValueError) as error:
                raise TFLiteError(f"Ray could not start or join a cluster at ray_address={address or 'auto'} "
                                  f"({first_line(error, 300)})") from None
            self.owns_ray = True
        cpus = int(ray.cluster_resources().get("CPU", 0))
        if cpus < 1:
            raise TFLiteError(f"the Ray cluster at {address or 'auto'} has no CPUs for workers; add a node")
        self.count = min(count, cpus)  # more actors than CPUs would wait forever for one
        self.bundles: list[tuple[int, object]] = []
        source = _source_bundle(open_args.get("model"))
        if source is not None:
            self.bundles.append((0, ray.put(source)))
        self.dataset = ray.put(dataset)
        actor_class = ray.remote(num_cpus=1, max_restarts=-1, max_task_retries=0)(_SweepActor)
        self.actors = [actor_class.remote(open_args) for _ in range(self.count)]

    def run(self, task, items: list):
        """Yield ``(item, status, value)`` as tasks finish; a worker death is retried once, then an error.

        An actor whose process died gets new work only after it answers a ``ping`` again (a call
        sent while Ray restarts it could fail without running); one that never does is dropped.
        """
        from ray.exceptions import RayActorError, RayError

        ray = self.ray
        pending, attempts, idle = deque(items), Counter(), list(self.actors)
        running, reviving = {}, {}  # ref -> (actor, item, files ref); ping ref -> (actor, failed pings)
        self.running = running
        while pending or running:
            while pending and idle:
                actor, item = idle.pop(0), pending.popleft()
                result, files = actor.run.options(num_returns=2).remote(task, item, [self.dataset], list(self.bundles))
                running[result] = (actor, item, files)
            if pending and not (running or reviving):
                for item in pending:
                    yield item, "error", f"no Ray worker is left to run {_name(item)} (they died and did not restart)"
                return
            done, _ = ray.wait([*running, *reviving], num_returns=1)
            if done[0] in reviving:
                actor, failures = reviving.pop(done[0])
                try:
                    ray.get(done[0])
                    idle.append(actor)
                except RayActorError:
                    if failures < 10:
                        reviving[actor.ping.remote()] = (actor, failures + 1)
                continue
            actor, item, files = running.pop(done[0])
            try:
                status, value, new_files = ray.get(done[0])
            except RayActorError as error:
                reviving[actor.ping.remote()] = (actor, 0)
                attempts[item] += 1
                if attempts[item] < ATTEMPTS:
                    pending.appendleft(item)
                    continue
                yield item, "error", (f"Ray worker died while running {_name(item)} ({attempts[item]} attempts): "
                                      f"{_death_reason(error)}")
                continue
            except RayError as error:
                idle.append(actor)
                yield item, "error", f"Ray task for {_name(item)} failed: {type(error).__name__}: {first_line(error, 300)}"
                continue
            idle.append(actor)
            if new_files:  # the other actors fetch them before their next task
                self.bundles.append((len(self.bundles) + 1, files))
            yield item, status, value

    def close(self) -> None:
        """Kill the actors and free the objects; leave the cluster (stop it if this executor started it)."""
        ray = self.ray
        if not ray.is_initialized():  # closed already (any Ray call now would start a new local Ray)
            return
        if self.actors and not self.running:  # (after Ctrl-C the actors are busy: they are killed at once)
            try:
                ray.get([actor.cleanup.remote() for actor in self.actors], timeout=10)
            except Exception:  # a dead actor's directory stays behind in its node's temp dir
                pass
        for actor in self.actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # an actor already gone
                pass
        self.actors, self.bundles, self.dataset = [], [], None
        if self.owns_ray and ray.is_initialized():
            ray.shutdown()
            self.owns_ray = False


def _name(item) -> str:
    return getattr(item, "name", None) or "the source"


def _death_reason(error) -> str:
    """One line on why an actor died (Ray's message is many lines)."""
    text = str(error)
    for marker in ("The actor died unexpectedly", "The actor is dead because", "exit_detail", "Worker exit"):
        line = next((l.strip() for l in text.splitlines() if marker in l), None)
        if line:
            return line[:300]
    return first_line(error, 300)
