"""Batch scoring with Spark: a registered champion scored by ``mlflow.pyfunc.spark_udf`` on a real
``local[2]`` session (loopback only, no UI) gives every row exactly what the in-process pyfunc gives."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import mlflow
from mlflow_tflite.sweep.main_job import run_variant
from mlflow_tflite.variants import Variant

ROWS = 200
PIXELS = 8 * 8  # the digits demo's 8x8x1 images, flattened in C order


@pytest.fixture(scope="module")
def spark():
    """A ``local[2]`` SparkSession bound to 127.0.0.1 (no network, no UI), stopped after the module."""
    if shutil.which("java") is None:
        pytest.fail("java is not on PATH: PySpark needs a JVM; .ci/run installs Debian's openjdk-17-jre-headless")
    from pyspark.sql import SparkSession

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SPARK_LOCAL_IP", "127.0.0.1")
        session = (SparkSession.builder.master("local[2]").appName("mlflow-tflite-tests")
                   .config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
                   .config("spark.ui.enabled", "false").config("spark.driver.memory", "512m")
                   .config("spark.sql.shuffle.partitions", "2")
                   .config("spark.pyspark.python", sys.executable).getOrCreate())
        yield session
        session.stop()


def _images_from_parquet(spark, images: np.ndarray, folder):
    """The images as a Parquet file with one ``array<float>`` column ``image`` (64 values a row), read by Spark."""
    path = str(folder / "images.parquet")
    pd.DataFrame({"id": np.arange(len(images)), "image": list(images.reshape(len(images), PIXELS))}).to_parquet(path)
    return spark.read.parquet(path)


def _worker_flavor_origins(spark) -> set[tuple[str, bool]]:
    """(file of ``mlflow_tflite``, TensorFlow imported?) in the Python workers that have imported the flavor.

    Asked through a pandas UDF, so the workers are the pool that ran ``spark_udf`` (Spark keeps one
    worker pool per environment, and RDD jobs get another).
    """
    from pyspark.sql.functions import pandas_udf

    @pandas_udf("string")
    def origin(ids: pd.Series) -> pd.Series:
        import sys as worker_sys
        module = worker_sys.modules.get("mlflow_tflite")
        seen = "" if module is None else f"{module.__file__}|{'tensorflow' in worker_sys.modules}"
        return pd.Series([seen] * len(ids))

    rows = spark.range(0, 8, 1, 4).select(origin("id").alias("seen")).collect()
    return {(file, tensorflow == "True") for file, tensorflow in (r.seen.split("|") for r in rows if r.seen)}


@pytest.mark.parametrize("quant, input_dtype, batch", [pytest.param("int8", "float32", -1, id="int8-float-io"),
                                                        pytest.param("int8_full", "int8", 1, id="int8_full-int-io-batch1")])
def test_spark_udf_scores_every_row_like_the_in_process_pyfunc(spark, tracking, demo_prepared, tmp_path,
                                                               quant, input_dtype, batch):
    name = f"digits-{quant}"
    registration = run_variant(demo_prepared, Variant(quant, input_size=8), name).registration
    assert registration.champion, registration
    uri = f"models:/{name}@champion"
    local = mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "model"))
    tensor = yaml.safe_load((Path(local) / "MLmodel").read_text())["flavors"]["tflite"]["inputs"][0]
    assert (tensor["dtype"], tensor["shape"]) == (input_dtype, [batch, 8, 8, 1])

    images = demo_prepared.dataset.x_test[:ROWS]
    frame = _images_from_parquet(spark, images, tmp_path)
    score = mlflow.pyfunc.spark_udf(spark, uri, env_manager="local", result_type="array<float>")
    scored = frame.withColumn("scores", score("image")).orderBy("id").toPandas()
    expected = mlflow.pyfunc.load_model(uri).predict(images)
    assert expected.shape == (ROWS, 10) and expected.dtype == np.float32
    assert scored["id"].tolist() == list(range(ROWS))
    np.testing.assert_array_equal(np.stack(scored["scores"].to_list()), expected)

    # One column per value (p0 .. p63) is the other form the pyfunc takes from a DataFrame.
    columns = spark.createDataFrame(pd.DataFrame(images.reshape(ROWS, PIXELS), columns=[f"p{i}" for i in range(PIXELS)]))
    by_value = columns.select(score(*columns.columns).alias("scores")).toPandas()
    np.testing.assert_array_equal(np.stack(by_value["scores"].to_list()), expected)

    # The Python workers imported the flavor from the model's code/ directory, and no TensorFlow.
    origins = _worker_flavor_origins(spark)
    assert origins, "no Python worker has the flavor imported after scoring"
    for file, tensorflow in origins:
        assert file.endswith("/code/mlflow_tflite/__init__.py") and not tensorflow, (file, tensorflow)
