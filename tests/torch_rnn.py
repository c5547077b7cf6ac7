"""The recurrent model of ``recurrent_nets.py`` in PyTorch: ``nn.LSTM`` encoder, exported as ``.pt2``.

Run by a subprocess, never imported by the test process (it has TensorFlow loaded):
``python torch_rnn.py <out.pt2>`` trains the encoder on the same Fashion-MNIST row spectra (same
subset, seed and sizes as :class:`recurrent_nets.RecurrentSpec`) and saves the
``torch.export`` program of ``(1, 28, 15) -> (1, 32)``. litert-torch unrolls ``nn.LSTM`` into
per-step ops (about 450: SLICE, FULLY_CONNECTED, LOGISTIC, TANH, MUL, ADD per step).
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from torch import nn

from recurrent_nets import BINS, STEPS, RecurrentSpec, fashion_spectra


class LstmEncoder(nn.Module):
    """(N, 28, 15) row spectra -> (N, embedding) embeddings; ``classes`` is the training head only."""

    def __init__(self, spec: RecurrentSpec):
        super().__init__()
        self.lstm = nn.LSTM(BINS, spec.units, batch_first=True)
        self.embedding = nn.Linear(spec.units, spec.embedding)
        self.classes = nn.Linear(spec.embedding, 10)

    def forward(self, x):
        sequence, _ = self.lstm(x)
        return self.embedding(sequence[:, -1])


def train(spec: RecurrentSpec = RecurrentSpec()) -> tuple[LstmEncoder, float]:
    """The trained encoder in eval mode and the classifier's test accuracy (Adam, batch 64, fixed seed)."""
    torch.manual_seed(spec.seed)
    arrays = fashion_spectra(spec)
    x, y = torch.from_numpy(arrays["x_train"]), torch.from_numpy(arrays["y_train"])
    net = LstmEncoder(spec)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(spec.epochs):
        for rows in torch.randperm(len(x)).split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(net.classes(net(x[rows])), y[rows]).backward()
            optimizer.step()
    net.eval()
    with torch.no_grad():
        predicted = net.classes(net(torch.from_numpy(arrays["x_test"]))).argmax(1).numpy()
    return net, float(np.mean(predicted == arrays["y_test"]))


if __name__ == "__main__":  # python torch_rnn.py <out.pt2>; prints the test accuracy
    encoder, accuracy = train()
    torch.export.save(torch.export.export(encoder, (torch.zeros(1, STEPS, BINS),)), sys.argv[1])
    print(accuracy)
