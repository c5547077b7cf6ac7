"""Benchmark: the default 12-variant sweep against 12 separate `main` runs; workers=2 vs workers=1.

    python benchmarks/sweep_vs_runs.py            # ~10 minutes on 2 cores

Each configuration runs as a fresh process (as a user would run it) into its own temporary
sqlite store, with the demo (digits CNN trained in every `main` run, once per sweep). Prints
the wall times and the ratios; targets: sweep / separate runs <= 0.35, workers=2 / workers=1
<= 0.65.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

QUANTS = ["none", "dynamic", "float16", "int8"]
SPARSITIES = ["0", "0.5", "0.8"]


def timed(commands: list[list[str]]) -> float:
    """Wall time in seconds of running the commands one after another, each in a fresh store."""
    with tempfile.TemporaryDirectory() as workdir:
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{workdir}/mlflow.db", "MLFLOW_DISABLE_TELEMETRY": "true"}
        started = time.perf_counter()
        for command in commands:
            subprocess.run(command, cwd=workdir, env=env, check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        return time.perf_counter() - started


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "mlflow_tflite.cli", *args]


def main() -> None:
    separate = timed([cli("convert", "--quant", q, "--sparsity", s) for s in SPARSITIES for q in QUANTS])
    print(f"12 separate main runs: {separate:.1f} s")
    sweep_1 = timed([cli("sweep", "--workers", "1")])
    print(f"sweep, workers=1:      {sweep_1:.1f} s")
    sweep_2 = timed([cli("sweep", "--workers", "2")])
    print(f"sweep, workers=2:      {sweep_2:.1f} s")
    print(f"ratio sweep(workers=1) / separate runs: {sweep_1 / separate:.3f}  (target <= 0.35)")
    print(f"ratio workers=2 / workers=1:            {sweep_2 / sweep_1:.3f}  (target <= 0.65)")


if __name__ == "__main__":
    main()
