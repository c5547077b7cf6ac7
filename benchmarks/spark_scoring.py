"""Benchmark: batch scoring with ``mlflow.pyfunc.spark_udf`` on a ``local[2]`` Spark session against
the in-process pyfunc, on the same rows, in one run.

    python benchmarks/spark_scoring.py                   # ~2 minutes on 2 cores (needs the [spark] extra and Java)
    python benchmarks/spark_scoring.py --rows 2000 --repeats 1

Models: the demo digits CNN (8x8x1) converted by ``run_variant`` as ``int8`` (float I/O, any batch)
and ``int8_full`` (int8 I/O, batch fixed to 1, so the pyfunc invokes it once per row), each
registered in a temporary sqlite store and scored as ``models:/<name>@champion``. Rows: the demo's
test images repeated to ``--rows``, 64 float values each.

- ``spark_udf``: ``spark_udf(spark, uri, env_manager="local", result_type="array<float>")`` over a
  cached DataFrame of one ``array<float>`` column, ``--partitions`` partitions, the result written
  to Spark's ``noop`` sink (computed, not collected). ``cold`` is the model's first job (it loads
  the model in the Python workers; the first model's also starts them and imports MLflow);
  ``warm`` the best of ``--repeats`` later jobs.
- ``no model``: the same job with a pandas UDF that returns 10 zeros a row, i.e. what Spark, Arrow
  and the Python workers cost without a model.
- ``pyfunc``: ``mlflow.pyfunc.load_model(uri).predict(images)`` in this process on the same rows
  (numpy, batch_size 256), best of ``--repeats``.

Prints rows/s for each and the ratio spark_udf(warm) / pyfunc. Spark runs on loopback only
(driver host and bind address 127.0.0.1, no UI). The machine's load shows up as noise.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402  (module level: pandas_udf resolves the type hints in these globals)

MODES = ("int8", "int8_full")


def register_models(folder: str) -> tuple[dict[str, str], np.ndarray]:
    """Register the demo CNN as ``digits-<mode>`` for each mode in a sqlite store in ``folder``.

    Returns:
        ({mode: "models:/digits-<mode>@champion"}, the demo's test images (N, 8, 8, 1) float32).
    """
    import mlflow
    from mlflow_tflite.sweep.context import prepare
    from mlflow_tflite.sweep.main_job import run_variant
    from mlflow_tflite.variants import Variant

    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder}/mlflow.db"
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    prepared = prepare()
    uris = {}
    for mode in MODES:
        run_variant(prepared, Variant(mode, input_size=8), f"digits-{mode}")
        uris[mode] = f"models:/digits-{mode}@champion"
    return uris, prepared.dataset.x_test


def start_spark():
    """A ``local[2]`` session on loopback, no UI, this interpreter as the workers' Python."""
    from pyspark.sql import SparkSession

    return (SparkSession.builder.master("local[2]").appName("spark-scoring-benchmark")
            .config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
            .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
            .config("spark.driver.memory", "1g")
            .config("spark.pyspark.python", sys.executable).getOrCreate())


def image_frame(spark, images: np.ndarray, partitions: int):
    """``images`` (N, 8, 8, 1) as a cached DataFrame of one ``array<float>`` column ``image``."""
    flat = pd.DataFrame({"image": list(images.reshape(len(images), -1))})
    frame = spark.createDataFrame(flat, "image array<float>").repartition(partitions).cache()
    frame.count()  # materialise the cache: the timed jobs score, they do not build the input
    return frame


def job_rate(frame, udf, rows: int) -> float:
    """Rows/s of one job computing ``udf("image")`` for every row into Spark's ``noop`` sink."""
    started = time.perf_counter()
    frame.select(udf("image").alias("scores")).write.format("noop").mode("overwrite").save()
    return rows / (time.perf_counter() - started)


def spark_rates(frame, uri: str, rows: int, repeats: int) -> tuple[float, float]:
    """(first job's rows/s, best later job's rows/s) of spark_udf with the model at ``uri``."""
    import mlflow

    score = mlflow.pyfunc.spark_udf(frame.sparkSession, uri, env_manager="local", result_type="array<float>")
    cold = job_rate(frame, score, rows)
    return cold, max(job_rate(frame, score, rows) for _ in range(repeats))


def no_model_rate(frame, rows: int, repeats: int) -> float:
    """Best rows/s of a pandas UDF that returns 10 zeros a row: Spark's and Arrow's cost without a model."""
    from pyspark.sql.functions import pandas_udf

    @pandas_udf("array<float>")
    def zeros(images: pd.Series) -> pd.Series:
        return pd.Series(list(np.zeros((len(images), 10), np.float32)))

    job_rate(frame, zeros, rows)  # the workers import pandas and pyarrow once
    return max(job_rate(frame, zeros, rows) for _ in range(repeats))


def pyfunc_rate(uri: str, images: np.ndarray, repeats: int) -> float:
    """Best rows/s of the in-process pyfunc's ``predict`` over ``images``."""
    import mlflow

    model = mlflow.pyfunc.load_model(uri)
    model.predict(images[:256])  # first call creates this thread's interpreter

    def timed() -> float:
        started = time.perf_counter()
        model.predict(images)
        return len(images) / (time.perf_counter() - started)

    return max(timed() for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000, help="rows scored per job (default 200000)")
    parser.add_argument("--partitions", type=int, default=2, help="partitions of the Spark DataFrame (default 2)")
    parser.add_argument("--repeats", type=int, default=2, help="warm jobs / pyfunc calls, best kept (default 2)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)
        uris, test_images = register_models(folder)
        images = np.resize(test_images, (args.rows, *test_images.shape[1:])).astype(np.float32)
        spark = start_spark()
        spark.sparkContext.setLogLevel("ERROR")
        try:
            frame = image_frame(spark, images, args.partitions)
            rows = []
            for mode, uri in uris.items():
                cold, warm = spark_rates(frame, uri, args.rows, args.repeats)
                rows.append((mode, cold, warm, pyfunc_rate(uri, images, args.repeats)))
            baseline = no_model_rate(frame, args.rows, args.repeats)
        finally:
            spark.stop()
    print(f"\n{args.rows} rows of 8x8x1 digits, local[2], {args.partitions} partitions; rows/s (best of {args.repeats})")
    print(f"{'model':<10} {'spark_udf cold':>15} {'spark_udf warm':>15} {'pyfunc':>12} {'warm / pyfunc':>14}")
    for mode, cold, warm, local in rows:
        print(f"{mode:<10} {cold:>15,.0f} {warm:>15,.0f} {local:>12,.0f} {warm / local:>14.2f}")
    print(f"{'no model':<10} {'':>15} {baseline:>15,.0f}   (a pandas UDF returning 10 zeros a row)")


if __name__ == "__main__":
    main()
