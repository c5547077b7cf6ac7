"""Benchmark: thread-safe pyfunc serving, one interpreter per thread vs one interpreter behind a lock.

    python benchmarks/serving_concurrency.py             # ~2 minutes on 2 cores
    python benchmarks/serving_concurrency.py --quick     # fewer calls, for a smoke run

MLflow's scoring server calls ``predict`` from a thread pool, so the pyfunc wrapper must be
safe under concurrent calls. Two ways are measured on the same real converted models (float32,
``num_threads=1`` as the flavor's default):

- ``per-thread``: the shipped ``TFLiteModelWrapper`` (each calling thread gets its own interpreter);
- ``lock``: the same wrapper with one shared interpreter and a lock around resize + set + invoke + get.

Models: the demo digits CNN (8x8x1, tiny: Python overhead dominates) and a MobileNetV2
(tf_keras, random weights, 128x128x3: compute dominates). For 1, 2, 4, 8 client threads, every
thread makes the same number of ``predict`` calls; the throughput is predictions (rows) per
second of wall time, best of ``--repeats`` interleaved runs. Prints one table per model with the
ratio per-thread / lock (> 1: per-thread is faster). The machine's load (other processes) shows
up as noise, so compare ratios, not absolute numbers, between machines.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import numpy as np  # noqa: E402

from mlflow_tflite import flavor
from mlflow_tflite.flavor import pyfunc
from mlflow_tflite.flavor import runtime# noqa: E402

THREADS = (1, 2, 4, 8)


class LockedWrapper(pyfunc.TFLiteModelWrapper):
    """The alternative: one interpreter shared by every thread, used under a lock."""

    def __init__(self, tflite_model: bytes, num_threads: int = 1):
        super().__init__(tflite_model, num_threads)
        self._shared = runtime.make_interpreter(tflite_model, num_threads)
        self._lock = threading.Lock()

    def _run(self, arrays: list[np.ndarray], batch_size: int) -> list[np.ndarray]:
        with self._lock:
            return runtime.run(self._shared, arrays, batch_size)


def digits_cnn() -> tuple[bytes, np.ndarray]:
    """The demo CNN converted without quantization, and its test images."""
    from mlflow_tflite.build.convert import convert
    from mlflow_tflite.sweep.context import prepare
    from mlflow_tflite.variants import Variant

    prepared = prepare()
    return convert(prepared.source, Variant("none")).tflite_model, prepared.dataset.x_test


def mobilenet_v2(size: int = 128) -> tuple[bytes, np.ndarray]:
    """A MobileNetV2 with random weights (no download) converted without quantization, and random images."""
    import tf_keras

    from mlflow_tflite.build.convert import convert
    from mlflow_tflite.build.sources import from_tf_keras
    from mlflow_tflite.variants import Variant

    tf_keras.utils.set_random_seed(0)
    model = tf_keras.applications.MobileNetV2(input_shape=(size, size, 3), weights=None, classes=100)
    images = np.random.default_rng(0).uniform(-1, 1, (64, size, size, 3)).astype(np.float32)
    return convert(from_tf_keras(model), Variant("none")).tflite_model, images


def throughput(wrapper, x: np.ndarray, threads: int, calls: int, rows: int) -> float:
    """Predictions per second when ``threads`` threads each make ``calls`` predict calls of ``rows`` rows."""
    errors: list[str] = []
    barrier = threading.Barrier(threads + 1)

    def work(index: int):
        wrapper.predict(x[:rows])  # untimed: a serving pool's threads are long-lived, their interpreters warm
        barrier.wait()
        for call in range(calls):
            start = (index * calls + call) * rows % (len(x) - rows)
            try:
                wrapper.predict(x[start : start + rows])
            except Exception as error:  # reported below; a correct wrapper has none
                errors.append(str(error))

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait()
    started = time.perf_counter()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{len(errors)} predict calls failed, e.g. {errors[0]}")
    return threads * calls * rows / elapsed


def compare(name: str, tflite_model: bytes, x: np.ndarray, calls: int, rows: int, repeats: int) -> None:
    """Print per-thread vs lock throughput for each thread count."""
    with tempfile.TemporaryDirectory() as tmp:
        flavor.save_model(tflite_model, os.path.join(tmp, "m"))
        per_thread = flavor._load_pyfunc(os.path.join(tmp, "m"))  # what mlflow.pyfunc.load_model wraps
    locked = LockedWrapper(tflite_model)
    print(f"\n{name}: {len(tflite_model) / 1e6:.2f} MB, {rows} rows per predict call, {calls} calls per thread")
    print(f"{'threads':>7} {'per-thread pred/s':>18} {'lock pred/s':>12} {'per-thread/lock':>16}")
    for threads in THREADS:
        best = {"per-thread": 0.0, "lock": 0.0}
        for _ in range(repeats):  # interleaved, so drifts in machine load hit both alike
            best["per-thread"] = max(best["per-thread"], throughput(per_thread, x, threads, calls, rows))
            best["lock"] = max(best["lock"], throughput(locked, x, threads, calls, rows))
        ratio = best["per-thread"] / best["lock"]
        print(f"{threads:>7} {best['per-thread']:>18.0f} {best['lock']:>12.0f} {ratio:>16.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the calls")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per configuration (best kept)")
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    print(f"os.cpu_count() = {os.cpu_count()}, load average {os.getloadavg()[0]:.2f} at start")
    compare("digits CNN (8x8x1)", *digits_cnn(), calls=400 // scale, rows=16, repeats=args.repeats)
    compare("MobileNetV2 (128x128x3, random weights)", *mobilenet_v2(), calls=40 // scale, rows=4,
            repeats=args.repeats)
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
