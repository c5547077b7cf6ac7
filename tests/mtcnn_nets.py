"""Test helper: build MTCNN PNet/RNet/ONet as *functional* models (Keras 3 or tf_keras) with the weights
shipped in the `mtcnn` wheel (mtcnn/assets/weights/{pnet,rnet,onet}.lz4, joblib+lz4 pickles
of a list of float32 numpy arrays). Does not import the mtcnn package (its __init__ imports TF)."""
import os, importlib.util
import joblib

def mtcnn_weights(name):
    """name in {'pnet','rnet','onet'} -> list of numpy arrays (Keras get_weights() order)."""
    pkg_dir = importlib.util.find_spec("mtcnn").submodule_search_locations[0]
    return joblib.load(os.path.join(pkg_dir, "assets", "weights", f"{name}.lz4"))

def _conv_stack(L, x, stages):
    """Conv2D + PReLU per stage (``conv{i}``, ``prelu{i}``), each optionally followed by max
    pooling ``(size, stride, padding)``; weights are consumed in this layer order."""
    for i, (filters, kernel, pool) in enumerate(stages, start=1):
        x = L.Conv2D(filters, kernel, name=f"conv{i}")(x)
        x = L.PReLU(shared_axes=[1, 2], name=f"prelu{i}")(x)
        if pool:
            x = L.MaxPooling2D(pool[0], pool[1], padding=pool[2], name=f"pool{i}")(x)
    return x


def _dense_trunk(L, x, units, index):
    """MTCNN's fully connected trunk (Caffe layout: transpose H and W before flattening)."""
    x = L.Permute((2, 1, 3), name="permute")(x)
    x = L.Flatten(name="flatten")(x)
    x = L.Dense(units, name=f"fc{index}")(x)
    return L.PReLU(name=f"prelu{index}")(x)


def _pnet(K, x):
    L = K.layers
    x = _conv_stack(L, x, [(10, 3, (2, 2, "same")), (16, 3, None), (32, 3, None)])
    return [L.Conv2D(4, 1, name="conv4_1")(x), L.Conv2D(2, 1, activation="softmax", name="conv4_2")(x)]


def _rnet(K, x):
    L = K.layers
    x = _conv_stack(L, x, [(28, 3, (3, 2, "same")), (48, 3, (3, 2, "valid")), (64, 2, None)])
    x = _dense_trunk(L, x, 128, 4)
    return [L.Dense(4, name="fc5_1")(x), L.Dense(2, activation="softmax", name="fc5_2")(x)]


def _onet(K, x):
    L = K.layers
    x = _conv_stack(L, x, [(32, 3, (3, 2, "same")), (64, 3, (3, 2, "valid")), (64, 3, (2, 2, "same")),
                           (128, 2, None)])
    x = _dense_trunk(L, x, 256, 5)
    return [L.Dense(4, name="fc6_1")(x), L.Dense(10, name="fc6_2")(x),
            L.Dense(2, activation="softmax", name="fc6_3")(x)]


_SPECS = {"pnet": (_pnet, (12, 12, 3)), "rnet": (_rnet, (24, 24, 3)), "onet": (_onet, (48, 48, 3))}

def build_mtcnn_net(name, keras_module, input_shape=None):
    """keras_module: `import keras` (Keras 3) or `import tf_keras` (Keras 2).
    input_shape: HWC; PNet is fully convolutional, so (None, None, 3) also works."""
    fn, default_shape = _SPECS[name]
    K = keras_module
    inp = K.Input(shape=input_shape or default_shape, name="image")
    model = K.Model(inp, fn(K, inp), name=f"mtcnn_{name}")
    weights = list(mtcnn_weights(name))
    for layer in model.layers:                      # functional layer order == creation order here
        n = len(layer.get_weights())
        if n:
            layer.set_weights(weights[:n]); weights = weights[n:]
    assert not weights, f"{len(weights)} arrays left over"
    return model
