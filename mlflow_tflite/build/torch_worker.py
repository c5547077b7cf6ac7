"""The child process of a PyTorch source (``python -m mlflow_tflite.build.torch_worker request.json``).

It runs in a fresh interpreter so that ``litert_torch`` (which imports torchao, torch._dynamo and,
with a CUDA torch, triton) loads before anything could import TensorFlow: the other order crashes
the process (segmentation fault). It never imports TensorFlow or this package's other modules.

Request (JSON): ``kind`` (``pt2``, ``factory`` or ``mlflow``), ``ref`` (path, ``pkg.mod:factory``
or model URI), ``input_shape`` (NCHW list incl. batch, or ``null`` to read it from the model),
``layout`` (``nchw`` or ``nhwc``), ``convert`` (bool), ``inputs`` (an ``.npz`` of ``x``, in the
model's layout, or ``null``) and ``out_dir``. Answer, in ``out_dir``: ``model.tflite`` (when
converting), ``outputs.npz`` (``output_0``... for the inputs) and ``meta.json`` (``input_shape`` in
the model's layout, ``convert_seconds``).
"""

from __future__ import annotations

import os

os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")


def _load_module(kind: str, ref: str):
    """The ``nn.Module`` (or ``GraphModule`` of an ExportedProgram) and its example NCHW shape or ``None``."""
    import torch

    if kind == "pt2":
        program = torch.export.load(ref)
        args = program.example_inputs[0] if program.example_inputs else ()
        return program.module(), (tuple(args[0].shape) if args else None)
    if kind == "factory":
        import importlib

        module_name, _, factory = ref.partition(":")
        return getattr(importlib.import_module(module_name), factory)(), None
    import mlflow.pytorch
    from mlflow.models import Model

    shape = None
    signature = Model.load(ref).signature
    if signature is not None and signature.inputs is not None:
        spec = signature.inputs.inputs[0]
        shape = tuple(1 if d == -1 else int(d) for d in spec.shape) if hasattr(spec, "shape") else None
    return mlflow.pytorch.load_model(ref, map_location="cpu"), shape


def _in_eval_mode(module):
    """Eval mode; an ExportedProgram's GraphModule refuses ``eval()`` (it is fixed at export), so only
    its flag is cleared (litert_torch warns about modules in training mode)."""
    try:
        return module.eval()
    except NotImplementedError:
        module.training = False
        return module


def main(request_path: str) -> None:
    """Answer one request (see the module doc)."""
    import json
    import time

    request = json.loads(open(request_path).read())
    import litert_torch  # before anything that might import TensorFlow (see the module doc)
    import numpy as np
    import torch

    module, example_shape = _load_module(request["kind"], request["ref"])
    module = _in_eval_mode(module)
    shape = tuple(request["input_shape"] or example_shape or ())
    if not shape:
        raise SystemExit(f"model {request['ref']!r} does not record its input shape; pass input_shape (e.g. 1,3,224,224)")
    if request["layout"] == "nhwc":
        module = _in_eval_mode(litert_torch.to_channel_last_io(module, args=[0]))
        shape = (shape[0], *shape[2:], shape[1])
    meta = {"input_shape": list(shape), "convert_seconds": 0.0}
    if request["convert"]:
        started = time.perf_counter()
        model = litert_torch.convert(module, (torch.zeros(shape),))
        meta["convert_seconds"] = time.perf_counter() - started
        with open(os.path.join(request["out_dir"], "model.tflite"), "wb") as out:
            out.write(model.model_content())
    sample = np.load(request["inputs"])["x"] if request["inputs"] else np.zeros(shape, np.float32)
    with torch.no_grad():
        outputs = [module(torch.from_numpy(sample[i:i + 1]).float()) for i in range(len(sample))]
    per_output = [o if isinstance(o, (list, tuple)) else (o,) for o in outputs]
    np.savez(os.path.join(request["out_dir"], "outputs.npz"),
             **{f"output_{k}": np.concatenate([p[k].numpy() for p in per_output]).astype(np.float32)
                for k in range(len(per_output[0]))})
    with open(os.path.join(request["out_dir"], "meta.json"), "w") as out:
        json.dump(meta, out)


if __name__ == "__main__":
    import sys

    main(sys.argv[1])
