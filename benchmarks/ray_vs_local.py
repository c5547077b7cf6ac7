"""Benchmark: the default 12-variant demo sweep with executor=ray on a 2-worker local Ray cluster
against executor=local with 1 worker (and, for reference, local with 2 workers).

    python benchmarks/ray_vs_local.py            # ~10 minutes on 2 cores

The cluster is two raylets on this machine (a head node and a second worker node, one CPU
each, ``ray.cluster_utils.Cluster``), started before timing, as a user's cluster would already
be running; the Ray sweep joins it with ``--ray-address``. Each sweep runs as a fresh CLI
process into its own temporary sqlite store (quant none,dynamic,float16,int8 x sparsity
0,0.5,0.8; the demo CNN comes from its on-disk cache). Prints the wall times and the ratio
ray(2 workers) / local(1 worker). The workers import this checkout: run it from the repository
root (or with ``PYTHONPATH`` set to it).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(args: list[str]) -> float:
    """Wall time in seconds of one sweep CLI process in a fresh store (fails loudly on an error)."""
    with tempfile.TemporaryDirectory() as workdir:
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{workdir}/mlflow.db", "MLFLOW_DISABLE_TELEMETRY": "true"}
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "mlflow_tflite.cli", "sweep", "--no-register", *args], cwd=workdir,
                              env=env, capture_output=True, text=True)
        elapsed = time.perf_counter() - started
        if done.returncode != 0 or done.stdout.count("FINISHED") != 12:
            sys.exit(f"sweep {args} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return elapsed


def main() -> None:
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                             "object_store_memory": 200 * 2**20})
    try:
        cluster.add_node(num_cpus=1, object_store_memory=200 * 2**20)
        cluster.wait_for_nodes()
        ray_2 = timed(["--executor", "ray", "--ray-address", cluster.address, "--workers", "2"])
        print(f"sweep, executor=ray, 2 workers (2 nodes): {ray_2:.1f} s", flush=True)
    finally:
        cluster.shutdown()
    local_1 = timed(["--workers", "1"])
    print(f"sweep, executor=local, workers=1:          {local_1:.1f} s", flush=True)
    local_2 = timed(["--workers", "2"])
    print(f"sweep, executor=local, workers=2:          {local_2:.1f} s", flush=True)
    print(f"ratio ray(2 workers) / local(workers=1):   {ray_2 / local_1:.3f}")
    print(f"ratio ray(2 workers) / local(workers=2):   {ray_2 / local_2:.3f}")


if __name__ == "__main__":
    main()
