"""Sources and data beyond the demo: Keras 3 files, MLflow model URIs (lineage), multi-input
models, image folders and .npy data, Flex ops, and their bad-input errors."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

import mlflow
from mlflow import MlflowClient
from mlflow_tflite.cli import cli
from mlflow_tflite.build.data import Preprocessing, load_image_folder
from mlflow_tflite.errors import TFLiteError
from mlflow_tflite.sweep.context import prepare
from mlflow_tflite.sweep.main_job import run_variant
from mlflow_tflite.variants import Variant


@pytest.fixture(scope="module")
def keras3_digits(tmp_path_factory, digits):
    """A small Keras 3 CNN trained briefly on digits, saved as .keras, plus the digits .npz."""
    import keras

    folder = tmp_path_factory.mktemp("k3")
    keras.utils.set_random_seed(0)
    layers = keras.layers
    model = keras.Sequential([keras.Input((8, 8, 1), name="pixels"), layers.Conv2D(32, 3, padding="same", activation="relu"),
                              layers.Conv2D(32, 3, padding="same", activation="relu"), layers.Flatten(),
                              layers.Dense(10, activation="softmax")], name="k3-digits")
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    model.fit(digits.x_train, digits.y_train, epochs=15, batch_size=32, verbose=0)
    model.save(folder / "k3-digits.keras")
    np.savez(folder / "digits.npz", x_train=digits.x_train, y_train=digits.y_train,
             x_test=digits.x_test, y_test=digits.y_test)
    return folder / "k3-digits.keras", folder / "digits.npz", model


def test_keras3_file_converts_through_export_and_matches(keras3_digits, tracking):
    path, data, model = keras3_digits
    prepared = prepare(str(path), str(data))
    assert prepared.source.kind == "keras3" and prepared.task == "classification"
    np.testing.assert_allclose(prepared.reference[0], np.asarray(model(prepared.dataset.x_test)), atol=1e-5)
    assert np.mean(prepared.reference[0].argmax(1) == prepared.dataset.y_test) > 0.9
    for quant in ("none", "int8"):
        metrics = run_variant(prepared, Variant(quant, input_size=8), register=False).metrics
        assert metrics["agreement"] >= 0.95, (quant, metrics)


def test_mlflow_model_uri_source_records_lineage(keras3_digits, tracking):
    path, data, model = keras3_digits
    with mlflow.start_run() as source_run:
        mlflow.keras.log_model(model, name="keras-model", registered_model_name="k3-source")
    result = CliRunner().invoke(cli, ["convert", "--model", "models:/k3-source/1", "--data", str(data),
                                      "--quant", "dynamic"])
    assert result.exit_code == 0, result.output
    version = MlflowClient().get_model_version_by_alias("k3-source", "champion")  # named after the source
    run = MlflowClient().get_run(version.run_id)
    assert run.data.tags["mlflow_tflite.source_model_uri"] == "models:/k3-source/1"
    assert run.data.tags["mlflow_tflite.source_run_id"] == source_run.info.run_id
    assert run.data.params["source"] == "models:/k3-source/1"


@pytest.mark.parametrize("uri, message", [
    ("models:/no-such-model/1", "could not be found"),
    ("runs:/0123456789abcdef0123456789abcdef/model", "could not be found"),
])
def test_missing_mlflow_uri_is_one_line(uri, message, tracking):
    result = CliRunner().invoke(cli, ["convert", "--model", uri, "--quant", "dynamic"])
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert result.exit_code == 1 and len(errors) == 1 and message in errors[0], result.output
    assert "Traceback" not in result.output


def test_mlflow_uri_of_another_flavor_is_refused(digits, tracking):
    from sklearn.linear_model import LogisticRegression

    with mlflow.start_run():
        info = mlflow.sklearn.log_model(LogisticRegression(max_iter=50).fit(digits.x_train.reshape(-1, 64)[:200],
                                                                              digits.y_train[:200]), name="m")
    with pytest.raises(TFLiteError, match=r"has flavors \['sklearn'\]; mlflow-tflite converts models of the tensorflow, keras or pytorch"):
        prepare(info.model_uri)


def test_multi_input_multi_output_model_end_to_end(tmp_path, digits, tracking):
    import tf_keras

    layers = tf_keras.layers
    image, extra = tf_keras.Input((8, 8, 1), name="image"), tf_keras.Input((3,), name="extra")
    features = layers.Concatenate()([layers.Flatten()(layers.Conv2D(4, 3, activation="relu")(image)), extra])
    hidden = layers.Dense(16, activation="relu")(features)
    model = tf_keras.Model([image, extra], [layers.Dense(10, activation="softmax", name="classes")(hidden),
                                            layers.Dense(2, name="box")(hidden)], name="two-in-two-out")
    model.save(tmp_path / "multi.h5")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "multi.npz", x_train_0=digits.x_train[:300], x_train_1=rng.random((300, 3), np.float32),
             x_test_0=digits.x_test[:100], x_test_1=rng.random((100, 3), np.float32))
    prepared = prepare(str(tmp_path / "multi.h5"), str(tmp_path / "multi.npz"))
    assert prepared.task == "fidelity" and len(prepared.reference) == 2
    for quant in ("none", "int8"):
        result = run_variant(prepared, Variant(quant, input_size=8), registered_model_name="multi")
        assert {"max_abs_error_classes", "max_abs_error_box", "agreement"} <= result.metrics.keys()
        assert result.metrics["cosine_similarity"] > 0.98, result.metrics
    model_out = mlflow.pyfunc.load_model("models:/multi@champion").predict(
        {"image": digits.x_test[:5], "extra": rng.random((5, 3), np.float32)})
    assert set(model_out) == {"classes", "box"} and model_out["classes"].shape == (5, 10)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory, digits):
    """The digits test images as 16x16 RGB PNG files in one folder per class."""
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    for i, (x, y) in enumerate(zip(digits.x_test[:200], digits.y_test[:200])):
        (root / f"class_{y}").mkdir(exist_ok=True)
        pixels = (x[..., 0] * 255).astype(np.uint8)
        Image.fromarray(pixels).convert("RGB").resize((16, 16), Image.NEAREST).save(root / f"class_{y}" / f"{i}.png")
    return root


def test_image_folder_with_explicit_preprocessing(image_folder, demo_prepared, tmp_path, tracking):
    demo_prepared.source.keras_model.save(tmp_path / "digits.h5")
    preprocessing = Preprocessing(resize=8, scale=1 / 255, channels=1)
    prepared = prepare(str(tmp_path / "digits.h5"), str(image_folder), preprocessing=preprocessing)
    assert prepared.dataset.x_train.shape[1:] == (8, 8, 1) and prepared.dataset.labelled
    result = run_variant(prepared, Variant("int8", input_size=8), register=False)
    run = MlflowClient().get_run(result.run_id)
    assert run.data.params["preprocess_resize"] == "8" and run.data.params["preprocess_channels"] == "1"
    assert result.metrics["accuracy"] > 0.5  # images went through PNG, upscaling and back


def test_image_folder_errors(image_folder, tmp_path, demo_prepared):
    from PIL import Image

    Image.new("RGB", (20, 12)).save(image_folder / "class_0" / "odd.png")
    try:
        with pytest.raises(TFLiteError, match=r"different sizes .* set a resize"):
            load_image_folder(image_folder)
    finally:
        (image_folder / "class_0" / "odd.png").unlink()
    demo_prepared.source.keras_model.save(tmp_path / "digits.h5")
    with pytest.raises(TFLiteError, match=r"has 3 channel\(s\) but the model expects 1; set channels=1"):
        prepare(str(tmp_path / "digits.h5"), str(image_folder), preprocessing=Preprocessing(resize=8))


def test_npy_data_is_fidelity_only(tmp_path, demo_prepared, tracking):
    demo_prepared.source.keras_model.save(tmp_path / "digits.h5")
    np.save(tmp_path / "unlabelled.npy", demo_prepared.dataset.x_test)
    prepared = prepare(str(tmp_path / "digits.h5"), str(tmp_path / "unlabelled.npy"))
    assert prepared.task == "fidelity" and not prepared.dataset.labelled
    metrics = run_variant(prepared, Variant("int8", input_size=8), register=False).metrics
    assert "accuracy" not in metrics and metrics["agreement"] > 0.95


@pytest.fixture(scope="module")
def flex_saved_model(tmp_path_factory):
    """A SavedModel using tf.math.cumprod, which has no TFLite builtin kernel."""
    import tensorflow as tf

    class Flex(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def __call__(self, x):
            return {"y": tf.math.cumprod(x, axis=1) * 2.0}

    folder = tmp_path_factory.mktemp("flex")
    module = Flex()
    tf.saved_model.save(module, str(folder / "flex"), signatures={"serving_default": module.__call__})
    rng = np.random.default_rng(0)
    np.savez(folder / "x.npz", x_train=rng.random((64, 4), np.float32) * 3, x_test=rng.random((32, 4), np.float32) * 3)
    return folder / "flex", folder / "x.npz"


def test_unsupported_op_names_it_and_suggests_select_tf(flex_saved_model, tracking):
    model, data = flex_saved_model
    result = CliRunner().invoke(cli, ["convert", "--model", str(model), "--data", str(data), "--quant", "none"])
    assert result.exit_code == 1
    assert "tf.Cumprod" in result.output and "ops=select_tf" in result.output, result.output
    assert MlflowClient().search_registered_models() == []


def test_flex_model_is_logged_with_its_ops_but_not_run_here(flex_saved_model, tracking):
    """TensorFlow 2.20+ wheels dropped the Python Flex delegate, so the model is converted and logged
    (flex flavor, tensorflow requirement, op inventory) but neither evaluated nor registered."""
    model, data = flex_saved_model
    prepared = prepare(str(model), str(data))
    result = run_variant(prepared, Variant("none", ops="select_tf"), registered_model_name="flex")
    run = MlflowClient().get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert "Flex delegate" in run.data.tags["mlflow_tflite.not_evaluated"]
    assert result.metrics["size_bytes"] > 0 and "latency_ms_p50" not in result.metrics
    assert MlflowClient().search_registered_models() == []
    info = mlflow.models.get_model_info(result.model_uri)
    assert info.flavors["tflite"]["flex_ops"] is True
    assert info.flavors["tflite"]["inputs"][0]["shape"] == [-1, 4]  # parsed from the flatbuffer
    local = mlflow.artifacts.download_artifacts(result.model_uri)
    assert "tensorflow==" in open(f"{local}/requirements.txt").read()
    inventory = mlflow.artifacts.load_dict(f"runs:/{result.run_id}/op_inventory.json")
    assert inventory.get("FlexCumprod") == 1, inventory
    with pytest.raises(TFLiteError, match=r"needs Flex ops \['FlexCumprod'\]"):
        mlflow.pyfunc.load_model(result.model_uri)


def test_npz_missing_keys_lists_what_it_has(tmp_path):
    from mlflow_tflite.build.data import load_npz

    np.savez(tmp_path / "odd.npz", images=np.zeros((4, 8, 8, 1)), labels=np.zeros(4))
    with pytest.raises(TFLiteError, match=r"has keys \['images', 'labels'\]; it needs x_train, x_test"):
        load_npz(tmp_path / "odd.npz")


def test_litert_backend_refuses_a_flex_model_and_suggests_the_converter(flex_saved_model, tracking):
    model, data = flex_saved_model
    result = CliRunner().invoke(cli, ["convert", "--model", str(model), "--data", str(data), "--quant", "dynamic",
                                      "--ops", "select_tf", "--backend", "litert"])
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert result.exit_code == 1 and len(errors) == 1, result.output
    assert "Flex ops ['FlexCumprod']" in errors[0] and "use backend=converter" in errors[0]
    assert MlflowClient().search_registered_models() == []


@pytest.mark.parametrize("name, sparsities", [
    ("net.h5", (0.0, 0.5, 0.8)), ("net.keras", (0.0, 0.5, 0.8)), ("models:/net/1", (0.0, 0.5, 0.8)),
    ("net.pt2", (0.0,)), ("graph.pb", (0.0,)), ("saved", (0.0,)), ("nets:build", (0.0,)),
])
def test_sweep_sparsity_auto_prunes_only_what_tfmot_can(name, sparsities, tmp_path):
    from mlflow_tflite.build.sources import default_sparsities

    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "saved_model.pb").write_bytes(b"")
    for file in ("net.h5", "net.keras", "net.pt2", "graph.pb"):
        (tmp_path / file).write_bytes(b"")
    model = name if ":" in name else str(tmp_path / name)
    assert default_sparsities(model) == sparsities
    assert default_sparsities(None) == (0.0, 0.5, 0.8)  # the demo
