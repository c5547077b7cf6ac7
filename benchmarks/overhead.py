"""Benchmark: what mlflow-tflite costs over doing the same conversions by hand (issue 15).

    python benchmarks/overhead.py                       # all four cases, ~13 minutes on 2 busy cores
    python benchmarks/overhead.py --cases 1,3 --repeat 3

What is measured. Whole wall time of fresh processes, so importing TensorFlow, MLflow and the
LiteRT packages counts on both sides; each side of a pair runs back to back with the other, in
its own fresh temporary sqlite store (``MLFLOW_TRACKING_URI``) and working directory. The
project is driven only through its command line (``python -m mlflow_tflite.cli convert|sweep``,
the stable flag contract of ``MLproject``), with default settings unless named below: tracking,
evaluation, the per-tensor error table and registration all included. The model is tf_keras'
MobileNetV2 at 96x96x3 with random weights and 10 classes, saved as .h5; the data a .npz of
deterministic random images in [-1, 1] (200 train rows, all of them the representative dataset;
100 test rows) with random labels. The "plain" side is a seed-style script in this file
(``--child plain-converter`` / ``--child plain-litert``, run as a subprocess): load the .h5, convert,
write the .tflite, and time latency with ``ai_edge_litert.interpreter.Interpreter`` (one thread)
with the project's invocation count (one input-load call, 10 warm-up calls, 10 rounds of one
re-warm call and 20 timed calls); no evaluation, no tracking.

Cases (``--cases``, by number or name):

1. ``main-int8``: ``convert --model m.h5 --data d.npz --quant int8`` (converter backend,
   per-tensor table on: the defaults) / the plain script converting to int8 (float I/O,
   ``TFLITE_BUILTINS_INT8``, same 200 calibration rows). Target <= 1.15.
2. ``converter-sweep``: ``sweep --quant none,dynamic,float16,int8 --sparsity 0`` / the plain
   script doing the same 4 conversions, each timed. Target <= 1.10.
3. ``litert-sweep``: ``sweep --backend litert --quant none,dynamic,weight_only_int8,int8
   --sparsity 0`` / the plain script converting once to float, then applying the LiteRT
   Quantizer recipes ``dynamic_wi8_afp32``, ``weight_only_wi8_afp32`` and ``static_wi8_ai8``
   (calibrated on the same rows, one calibration thread as the project does), each timed.
   Target <= 1.15.
4. ``demo-sweep``: the default 12-variant ``sweep`` of the built-in digits demo / 12 separate
   ``convert`` runs of the same variants into one store (here the "plain" column is those 12
   runs). Target <= 0.15.

How to read it. One table: case, project seconds, plain seconds, ratio (project / plain) and
the target; with ``--repeat N`` the seconds are medians over N back-to-back pairs (the order
within a pair alternates) and the ratio is the median of the per-pair ratios. The demo CNN is
trained once, untimed, into a temporary cache (``MLFLOW_TFLITE_CACHE_DIR``) before any case, so
neither side of case 4 pays for training; that warm-up also loads the libraries into the OS
file cache. A fresh sqlite store costs the project side ~5 s of table creation and migrations
(once per store: a user's existing ``mlflow.db`` does not pay it; the 12 runs of case 4 share
one store). The machine should be quiet: other load inflates both sides, not always alike.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve()
INPUT_SIZE = 96
CLASSES = 10
TRAIN_ROWS, TEST_ROWS = 200, 100
CALIBRATION_SAMPLES = 200
# The project's latency plan (mlflow_tflite/latency.py LatencyPlan and _ready_for_timing).
WARMUP, ROUNDS, RUNS_PER_ROUND = 10, 10, 20
CONVERTER_MODES = ["none", "dynamic", "float16", "int8"]
LITERT_MODES = ["none", "dynamic", "weight_only_int8", "int8"]
# Mode -> LiteRT Quantizer recipe (mlflow_tflite/quant_modes.py QUANT_RECIPES).
LITERT_RECIPES = {"dynamic": "dynamic_wi8_afp32", "weight_only_int8": "weight_only_wi8_afp32", "int8": "static_wi8_ai8"}
DEMO_QUANTS = ["none", "dynamic", "float16", "int8"]
DEMO_SPARSITIES = ["0", "0.5", "0.8"]


# ---------------------------------------------------------------------------------------------
# Plain side: seed-style scripts, each run as `python overhead.py --child <name> ...`.
# ---------------------------------------------------------------------------------------------

def child_fixtures(folder: str) -> None:
    """Write the MobileNetV2-96 .h5 (random weights) and the .npz data set into ``folder``."""
    import numpy as np
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    model = tf_keras.applications.MobileNetV2(input_shape=(INPUT_SIZE, INPUT_SIZE, 3), weights=None, classes=CLASSES)
    model.save(Path(folder) / "mobilenet_v2_96.h5")
    rng = np.random.default_rng(0)
    images = lambda n: rng.uniform(-1, 1, (n, INPUT_SIZE, INPUT_SIZE, 3)).astype(np.float32)  # noqa: E731
    np.savez(Path(folder) / "images.npz", x_train=images(TRAIN_ROWS), y_train=rng.integers(0, CLASSES, TRAIN_ROWS),
             x_test=images(TEST_ROWS), y_test=rng.integers(0, CLASSES, TEST_ROWS))
    print(f"MobileNetV2-96: {model.count_params() / 1e6:.2f} M parameters")


def _plain_inputs(data: str):
    """(calibration rows, one test example) as a seed script would draw them."""
    import numpy as np

    arrays = np.load(data)
    x_train = arrays["x_train"]
    rows = np.random.default_rng(0).choice(len(x_train), min(CALIBRATION_SAMPLES, len(x_train)), replace=False)
    return x_train[np.sort(rows)], arrays["x_test"][:1]


def _plain_latency(tflite_model: bytes, example) -> float:
    """p50 in ms of single-example invoke(), with the project's number of invocations."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=tflite_model, num_threads=1)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    if detail["dtype"] != np.float32:  # integer input (the LiteRT Quantizer's static_wi8_ai8): quantize
        scale, zero_point = detail["quantization"]
        info = np.iinfo(detail["dtype"])
        example = np.clip(np.round(example / scale + zero_point), info.min, info.max).astype(detail["dtype"])
    interpreter.set_tensor(detail["index"], example)
    interpreter.invoke()
    for _ in range(WARMUP):
        interpreter.invoke()
    times = []
    for _ in range(ROUNDS):
        interpreter.invoke()
        for _ in range(RUNS_PER_ROUND):
            started = time.perf_counter()
            interpreter.invoke()
            times.append(time.perf_counter() - started)
    return float(np.median(times)) * 1000


def _plain_convert(model, mode: str, calibration=None) -> bytes:
    """One TFLiteConverter conversion in the post-training quantization guide's recipe for ``mode``."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if mode != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if mode == "int8":
        converter.representative_dataset = lambda: ([row[None]] for row in calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()


def _plain_finish(models: dict[str, bytes], example, out: str) -> None:
    """Write each model and time its latency (after every conversion, as the project does)."""
    for mode, tflite_model in models.items():
        Path(out, f"{mode}.tflite").write_bytes(tflite_model)
    for mode, tflite_model in models.items():
        print(f"{mode}: {len(tflite_model)} bytes, p50 {_plain_latency(tflite_model, example):.2f} ms")


def child_plain_converter(model_path: str, data: str, modes: str, out: str) -> None:
    """Load the .h5, convert once per mode with TFLiteConverter, time each."""
    import tf_keras

    model = tf_keras.models.load_model(model_path, compile=False)
    calibration, example = _plain_inputs(data)
    _plain_finish({mode: _plain_convert(model, mode, calibration) for mode in modes.split(",")}, example, out)


def child_plain_litert(model_path: str, data: str, modes: str, out: str) -> None:
    """Load the .h5, convert to float once, apply the LiteRT Quantizer recipes, time each."""
    import tf_keras
    from ai_edge_quantizer import quantizer, recipe
    from ai_edge_litert.interpreter import Interpreter

    model = tf_keras.models.load_model(model_path, compile=False)
    calibration, example = _plain_inputs(data)
    float_model = _plain_convert(model, "none")
    signature = Interpreter(model_content=float_model).get_signature_list()["serving_default"]
    samples = {"serving_default": [{signature["inputs"][0]: row[None]} for row in calibration]}
    models = {}
    for mode in modes.split(","):
        if mode == "none":
            models[mode] = float_model
            continue
        engine = quantizer.Quantizer(bytearray(float_model), getattr(recipe, LITERT_RECIPES[mode])())
        qsvs = engine.calibrate(samples, num_threads=1) if engine.need_calibration else None
        models[mode] = bytes(engine.quantize(qsvs, enable_progress_report=False).quantized_model)
    _plain_finish(models, example, out)


CHILDREN = {"fixtures": child_fixtures, "plain-converter": child_plain_converter, "plain-litert": child_plain_litert}


# ---------------------------------------------------------------------------------------------
# Driver: never imports TensorFlow or the project; every timed side is a fresh subprocess.
# ---------------------------------------------------------------------------------------------

def cli(*args: str) -> list[str]:
    """The project's public entry point."""
    return [sys.executable, "-m", "mlflow_tflite.cli", *args]


def child(name: str, *args: str) -> list[str]:
    return [sys.executable, str(HERE), "--child", name, *args]


class Bench:
    """Runs commands in fresh stores under one temporary folder; the demo cache is shared."""

    def __init__(self, root: Path):
        self.root = root
        self.counter = 0
        self.env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "TF_CPP_MIN_LOG_LEVEL": "2",
                    "MLFLOW_TFLITE_CACHE_DIR": str(root / "demo-cache")}

    def timed(self, label: str, commands: list[list[str]]) -> float:
        """Wall time in seconds of ``commands`` run one after another in one fresh store and folder."""
        self.counter += 1
        workdir = self.root / f"{self.counter:02d}-{label}"
        workdir.mkdir()
        env = {**self.env, "MLFLOW_TRACKING_URI": f"sqlite:///{workdir}/mlflow.db"}
        started = time.perf_counter()
        for command in commands:
            done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
        seconds = time.perf_counter() - started
        print(f"  {label:<40} {seconds:7.1f} s", file=sys.stderr, flush=True)
        return seconds


@dataclass(frozen=True)
class Case:
    number: int
    name: str
    target: float
    project: list[list[str]]
    plain: list[list[str]]


def cases(model: str, data: str, out: Path) -> list[Case]:
    job = ["--model", model, "--data", data]
    plain = [model, data]
    return [
        Case(1, "main-int8", 1.15, [cli("convert", *job, "--quant", "int8")],
             [child("plain-converter", *plain, "int8", str(out))]),
        Case(2, "converter-sweep", 1.10, [cli("sweep", *job, "--quant", ",".join(CONVERTER_MODES), "--sparsity", "0")],
             [child("plain-converter", *plain, ",".join(CONVERTER_MODES), str(out))]),
        Case(3, "litert-sweep", 1.15,
             [cli("sweep", *job, "--backend", "litert", "--quant", ",".join(LITERT_MODES), "--sparsity", "0")],
             [child("plain-litert", *plain, ",".join(LITERT_MODES), str(out))]),
        Case(4, "demo-sweep", 0.15, [cli("sweep")],
             [cli("convert", "--quant", q, "--sparsity", s) for s in DEMO_SPARSITIES for q in DEMO_QUANTS]),
    ]


def chosen(all_cases: list[Case], spec: str) -> list[Case]:
    wanted = {w.strip() for w in spec.split(",") if w.strip()}
    unknown = wanted - {str(c.number) for c in all_cases} - {c.name for c in all_cases}
    if unknown:
        sys.exit(f"unknown case(s) {sorted(unknown)}; choose from " + ", ".join(f"{c.number}={c.name}" for c in all_cases))
    return [c for c in all_cases if str(c.number) in wanted or c.name in wanted]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="1,2,3,4", help="Comma-separated case numbers or names (default all).")
    parser.add_argument("--repeat", type=int, default=1, help="Back-to-back pairs per case (default 1).")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        return CHILDREN[options.child](*options.args)
    if options.repeat < 1:
        sys.exit("--repeat must be >= 1")

    started = time.perf_counter()
    spec = importlib.util.find_spec("mlflow_tflite")
    print(f"mlflow_tflite: {spec.origin if spec else 'not importable'}; python {sys.executable}", flush=True)
    with tempfile.TemporaryDirectory(prefix="overhead-") as tmp:
        root = Path(tmp)
        bench = Bench(root)
        selected = chosen(cases(str(root / "mobilenet_v2_96.h5"), str(root / "images.npz"), root / "plain-out"), options.cases)
        (root / "plain-out").mkdir()
        print("untimed set-up:", file=sys.stderr)
        bench.timed("fixtures (MobileNetV2-96 .h5, .npz)", [child("fixtures", str(root))])
        if any(c.number == 4 for c in selected):
            bench.timed("demo CNN into the cache", [cli("convert", "--quant", "none", "--no-register")])
        rows = []
        for case in selected:
            print(f"case {case.number} {case.name}:", file=sys.stderr)
            project, plain, ratios = [], [], []
            for r in range(options.repeat):
                sides = [("project", case.project, project), ("plain", case.plain, plain)]
                for side, commands, times in sides if r % 2 == 0 else sides[::-1]:
                    times.append(bench.timed(f"{case.name} {side}", commands))
                ratios.append(project[-1] / plain[-1])
            rows.append((f"{case.number} {case.name}", statistics.median(project), statistics.median(plain),
                         statistics.median(ratios), case.target))
    print(f"\n{'case':<20} {'project s':>10} {'plain s':>10} {'ratio':>7}  target")
    for name, project_s, plain_s, ratio, target in rows:
        print(f"{name:<20} {project_s:>10.1f} {plain_s:>10.1f} {ratio:>7.3f}  <= {target:.2f}")
    print(f"\nwhole run: {time.perf_counter() - started:.0f} s (repeat {options.repeat}; case 4's plain side is "
          f"12 separate convert runs)")


if __name__ == "__main__":
    main()
