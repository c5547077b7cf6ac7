"""Fashion-MNIST example: small models from architecture families known to quantize badly to int8.

    python examples/fashion_mnist/prepare.py --out /tmp/fashion               # ViT (default)
    python examples/fashion_mnist/prepare.py --out /tmp/fashion --arch mobilenetv3

Reads Debian's ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``; no download),
keeps a fixed subset (10,000 training / 2,000 test images by default, drawn with a fixed seed so
evaluation stays fast), trains the chosen tf_keras model with fixed seeds, writes fashion.npz and
model.h5 and prints the float test accuracy. See README.md in this folder for why these families are
known-bad cases for int8, and for what was actually measured (so far neither loses > 1 point).
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format, gzip-compressed): big-endian header, then uint8 data."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    if data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (magic {data[:4].hex()})")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist(data_dir: Path, n_train: int, n_test: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Fixed random subsets of the official train / test splits: x float32 (N, 28, 28, 1) in [0, 1], y int64."""
    missing = [name for name in FILES.values() if not (data_dir / name).is_file()]
    if missing:
        sys.exit(f"Error: Fashion-MNIST not found in {data_dir} (missing {', '.join(missing)}); it comes from the "
                 f"Debian package dataset-fashion-mnist: sudo apt-get install dataset-fashion-mnist")
    raw = {key: read_idx(data_dir / name) for key, name in FILES.items()}
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x, y = raw[f"x_{split}"], raw[f"y_{split}"]
        if not 0 < n <= len(x):
            sys.exit(f"Error: --{split} {n} must be between 1 and {len(x)}")
        rows = np.sort(rng.permutation(len(x))[:n])
        arrays[f"x_{split}"] = (x[rows, :, :, None] / 255.0).astype(np.float32)
        arrays[f"y_{split}"] = y[rows].astype(np.int64)
    return arrays


def hard_sigmoid(x, keras):
    """MobileNetV3's hard sigmoid, relu6(x + 3) / 6, written as clip(x / 6 + 0.5, 0, 1) with plain layers."""
    return keras.layers.ReLU(max_value=1.0)(keras.layers.Rescaling(1 / 6, offset=0.5)(x))


def hard_swish(x, keras):
    """MobileNetV3's hard swish, x * relu6(x + 3) / 6."""
    return keras.layers.Multiply()([x, hard_sigmoid(x, keras)])


def squeeze_excite(x, keras, ratio: int = 4):
    """Squeeze-and-excite as in MobileNetV3: global pool, 1x1 reduce + ReLU, 1x1 expand + hard sigmoid, scale."""
    layers = keras.layers
    channels = x.shape[-1]
    s = layers.GlobalAveragePooling2D(keepdims=True)(x)
    s = layers.Conv2D(max(8, channels // ratio), 1, activation="relu")(s)
    s = hard_sigmoid(layers.Conv2D(channels, 1)(s), keras)
    return layers.Multiply()([x, s])


# (pointwise filters, depthwise stride) of each depthwise-separable block.
BLOCKS = ((32, 1), (64, 2), (64, 1), (128, 2), (128, 1))


def build_model(num_classes: int = 10):
    """A small MobileNetV3-style CNN (tf_keras): 3x3 conv stem, then depthwise-separable blocks
    (3x3 depthwise + BN + hard-swish, squeeze-and-excite, 1x1 pointwise + BN + hard-swish),
    global average pooling and a softmax classifier. ~52k parameters.
    """
    import tf_keras as keras

    layers = keras.layers
    image = keras.Input((28, 28, 1), name="image")
    x = layers.Conv2D(16, 3, padding="same", use_bias=False)(image)
    x = hard_swish(layers.BatchNormalization()(x), keras)
    for filters, stride in BLOCKS:
        x = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False)(x)
        x = hard_swish(layers.BatchNormalization()(x), keras)
        x = squeeze_excite(x, keras)
        x = layers.Conv2D(filters, 1, use_bias=False)(x)
        x = hard_swish(layers.BatchNormalization()(x), keras)
    x = layers.GlobalAveragePooling2D()(x)
    probabilities = layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(image, probabilities, name="fashion-mobilenet-v3ish")


def build_vit(num_classes: int = 10, patch: int = 4, dim: int = 64, heads: int = 4, depth: int = 4,
              mlp_ratio: int = 2):
    """A small Vision Transformer (tf_keras), ViT/DeiT layout at toy scale. ~139k parameters.

    Patch embedding: a ``patch`` x ``patch`` Conv2D with stride ``patch`` (7x7 = 49 tokens of ``dim``);
    a learned position embedding added to the tokens; ``depth`` pre-LayerNorm encoder blocks
    (LayerNorm, ``MultiHeadAttention`` with ``heads`` heads of ``dim // heads``, residual; LayerNorm,
    GELU MLP of ``mlp_ratio * dim``, residual); final LayerNorm, global average pooling over the
    tokens, Dense softmax.

    The position embedding is a ``(tokens, dim)`` learned table. To keep the .h5 loadable without
    custom objects it is a bias-free Dense layer applied to a constant 1 (``Rescaling(0, offset=1)``
    of the pooled image), i.e. its kernel *is* the table, reshaped and added with ``Add``.
    """
    import tf_keras as keras

    layers = keras.layers
    tokens = (28 // patch) ** 2
    image = keras.Input((28, 28, 1), name="image")
    x = layers.Conv2D(dim, patch, strides=patch, name="patch_embed")(image)
    x = layers.Reshape((tokens, dim), name="tokens")(x)
    one = layers.Rescaling(0.0, offset=1.0, name="one")(layers.GlobalAveragePooling2D(name="gap_in")(image))
    pos = layers.Dense(tokens * dim, use_bias=False, name="pos_embed_table",
                       kernel_initializer=keras.initializers.RandomNormal(stddev=0.02))(one)
    x = layers.Add(name="add_pos")([x, layers.Reshape((tokens, dim), name="pos_embed")(pos)])
    for i in range(depth):
        h = layers.LayerNormalization(epsilon=1e-6, name=f"block{i}_ln1")(x)
        h = layers.MultiHeadAttention(heads, dim // heads, name=f"block{i}_attn")(h, h)
        x = layers.Add(name=f"block{i}_add1")([x, h])
        h = layers.LayerNormalization(epsilon=1e-6, name=f"block{i}_ln2")(x)
        h = layers.Dense(mlp_ratio * dim, activation="gelu", name=f"block{i}_mlp1")(h)
        h = layers.Dense(dim, name=f"block{i}_mlp2")(h)
        x = layers.Add(name=f"block{i}_add2")([x, h])
    x = layers.LayerNormalization(epsilon=1e-6, name="final_ln")(x)
    x = layers.GlobalAveragePooling1D(name="gap")(x)
    probabilities = layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(image, probabilities, name="fashion-vit")


# Training recipe of each architecture: epochs, batch size, peak learning rate, AdamW weight decay
# (0: plain Adam), warm-up fraction of the steps (then cosine decay to 0).
RECIPES = {
    "vit": dict(epochs=12, batch_size=64, learning_rate=1e-3, weight_decay=0.05, warmup=0.05),
    "mobilenetv3": dict(epochs=10, batch_size=64, learning_rate=2e-3, weight_decay=0.0, warmup=0.0),
}
BUILDERS = {"vit": build_vit, "mobilenetv3": build_model}


def train(arrays: dict[str, np.ndarray], arch: str = "vit", epochs: int | None = None, seed: int = 0):
    """The architecture's recipe (``RECIPES``): Adam / AdamW, linear warm-up then cosine decay,
    sparse cross-entropy, fixed seeds (Python, NumPy, TF) and deterministic ops."""
    import tensorflow as tf
    import tf_keras as keras

    recipe = dict(RECIPES[arch], **({"epochs": epochs} if epochs else {}))
    epochs, batch_size, learning_rate = recipe["epochs"], recipe["batch_size"], recipe["learning_rate"]
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    model = BUILDERS[arch]()
    steps = epochs * -(-len(arrays["x_train"]) // batch_size)
    if recipe["warmup"]:
        warm = max(1, int(steps * recipe["warmup"]))
        schedule = keras.optimizers.schedules.CosineDecay(0.0, steps - warm, warmup_target=learning_rate,
                                                          warmup_steps=warm)
    else:
        schedule = keras.optimizers.schedules.CosineDecay(learning_rate, steps)
    optimizer = (keras.optimizers.AdamW(schedule, weight_decay=recipe["weight_decay"]) if recipe["weight_decay"]
                 else keras.optimizers.Adam(schedule))
    model.compile(optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(arrays["x_train"], arrays["y_train"], epochs=epochs, batch_size=batch_size, shuffle=True, verbose=2)
    return model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=".", help="output directory for fashion.npz and model.h5 (default: .)")
    parser.add_argument("--data-dir", default=str(DATA_DIR), help=f"the IDX .gz files (default: {DATA_DIR})")
    parser.add_argument("--train", type=int, default=10_000, help="training images kept (default 10000 of 60000)")
    parser.add_argument("--test", type=int, default=2_000, help="test images kept (default 2000 of 10000)")
    parser.add_argument("--arch", choices=sorted(RECIPES), default="vit",
                        help="vit (small Vision Transformer, default) or mobilenetv3 (the earlier attempt)")
    parser.add_argument("--epochs", type=int, default=None, help="default: the architecture's recipe (vit 12, mobilenetv3 10)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    arrays = load_fashion_mnist(Path(args.data_dir), args.train, args.test, args.seed)
    np.savez_compressed(out / "fashion.npz", **arrays)
    print(f"wrote {out / 'fashion.npz'}: {len(arrays['x_train'])} train / {len(arrays['x_test'])} test images")

    start = time.perf_counter()
    model = train(arrays, args.arch, epochs=args.epochs, seed=args.seed)
    seconds = time.perf_counter() - start
    model.save(out / "model.h5")
    _, accuracy = model.evaluate(arrays["x_test"], arrays["y_test"], verbose=0)
    print(f"wrote {out / 'model.h5'}: {model.count_params()} parameters, trained in {seconds:.0f} s, "
          f"float test accuracy {accuracy:.4f}")


if __name__ == "__main__":
    main()
