"""PyTorch models for the PyTorch-source tests, as ``tests.torch_nets:<factory>`` references.

Imported only by the converter's child process (``mlflow_tflite.build.torch_worker``) and by
subprocesses a test starts (``python torch_nets.py export ...``), never by the test process
itself (it has TensorFlow loaded). ``onet`` is MTCNN's ONet with the pretrained weights shipped in
the ``mtcnn`` wheel (``mtcnn/assets/weights/onet.lz4``, Keras ``get_weights()`` order): the same
weights as facenet-pytorch's ``onet.pt``, no download.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import torch
from torch import nn


class SmallCNN(nn.Module):
    """(N, 3, 12, 12) -> class scores (N, 4): conv, ReLU, average pool, linear; seeded weights."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return torch.softmax(self.fc(torch.flatten(self.pool(torch.relu(self.conv(x))), 1)), dim=1)


def small_cnn() -> nn.Module:
    """Factory ``tests.torch_nets:small_cnn`` (input ``1,3,12,12``)."""
    return SmallCNN().eval()


class ONet(nn.Module):
    """MTCNN's output network (facenet-pytorch's layer names): (N, 3, 48, 48) RGB scaled
    ``(pixel - 127.5) / 128`` -> box (N, 4), landmarks (N, 10), face probability (N, 2)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1, self.pool1 = nn.Conv2d(3, 32, 3), nn.PReLU(32), nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2, self.pool2 = nn.Conv2d(32, 64, 3), nn.PReLU(64), nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3, self.pool3 = nn.Conv2d(64, 64, 3), nn.PReLU(64), nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1, self.softmax6_1 = nn.Linear(256, 2), nn.Softmax(dim=1)
        self.dense6_2, self.dense6_3 = nn.Linear(256, 4), nn.Linear(256, 10)

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        # Caffe's flatten order (the weights were trained with it): (N, W, H, C)
        x = self.prelu5(self.dense5(x.permute(0, 3, 2, 1).contiguous().view(x.shape[0], -1)))
        return self.dense6_2(x), self.dense6_3(x), self.softmax6_1(self.dense6_1(x))


def onet() -> nn.Module:
    """Factory ``tests.torch_nets:onet``: ONet with the ``mtcnn`` wheel's weights, eval mode."""
    import joblib

    package = importlib.util.find_spec("mtcnn").submodule_search_locations[0]
    weights = iter(joblib.load(os.path.join(package, "assets", "weights", "onet.lz4")))
    state = {}
    for i in range(1, 5):  # Keras conv kernel HWIO -> OIHW; PReLU alpha (1, 1, C) -> (C,)
        state[f"conv{i}.weight"] = next(weights).transpose(3, 2, 0, 1)
        state[f"conv{i}.bias"] = next(weights)
        state[f"prelu{i}.weight"] = next(weights).reshape(-1)
    state["dense5.weight"], state["dense5.bias"] = next(weights).T, next(weights)
    state["prelu5.weight"] = next(weights).reshape(-1)
    for name in ("dense6_2", "dense6_3", "dense6_1"):  # Keras order: box, landmarks, face probability
        state[f"{name}.weight"], state[f"{name}.bias"] = next(weights).T, next(weights)
    net = ONet()
    net.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()})
    return net.eval()


def log_to_mlflow(factory: str, shape: tuple[int, ...]) -> str:
    """Log the factory's module as an MLflow ``pytorch`` model (pt2, batch-1 input example) to the
    tracking store of ``MLFLOW_TRACKING_URI``; returns its ``runs:/<id>/model`` URI."""
    import mlflow

    with mlflow.start_run() as run:
        mlflow.pytorch.log_model(globals()[factory](), name="model", input_example=np.zeros(shape, np.float32))
    return f"runs:/{run.info.run_id}/model"


if __name__ == "__main__":  # python torch_nets.py export|mlflow <factory> <d1,d2,...> [<out.pt2>]
    import sys

    command, factory, shape = sys.argv[1:4]
    dims = tuple(map(int, shape.split(",")))
    if command == "mlflow":
        print(log_to_mlflow(factory, dims))
    else:
        torch.export.save(torch.export.export(globals()[factory](), (torch.zeros(dims),)), sys.argv[4])
