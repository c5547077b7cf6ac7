"""Mixed precision on a recurrent model (issue 19): an LSTM encoder unrolled into per-step ops.

The model (``recurrent_nets.py``) is trained once per session on real Fashion-MNIST row spectra
(inputs from 0 to about 26, median about 0.01) and judged by fidelity: the cosine similarity of
its 32-d embeddings to the tf_keras model's, bound at 0.99. Plain static int8 misses that bound on
both backends, while dynamic-range int8 (and, on the LiteRT path, weight-only int8) meets it with
a model smaller than float; the ``int8_mixed`` search finds one (the last test).
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter

import numpy as np
import pytest

from mlflow_tflite.build.mixed import MixedPrecision
from mlflow_tflite.flavor import flatbuffer
from mlflow_tflite.sweep.context import prepare
from mlflow_tflite.sweep.work import convert_and_evaluate
from mlflow_tflite.track.selection import Tolerance
from mlflow_tflite.variants import Variant

from recurrent_nets import FASHION_DIR, STEPS, save_encoder


STRICT = Tolerance(min_cosine_similarity=0.99)
BACKENDS = ("converter", "litert")

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not FASHION_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed (.ci/run installs it)")]


@pytest.fixture(scope="session")
def rnn_files(tmp_path_factory):
    """(model .h5, data .npz, classifier test accuracy): the encoder trained once per session."""
    return save_encoder(tmp_path_factory.mktemp("rnn"))


@pytest.fixture(scope="session")
def rnn_context(rnn_files):
    """The encoder opened for the fidelity task with the cos >= 0.99 bound."""
    model, data, _ = rnn_files
    context = prepare(str(model), str(data), task="fidelity")
    return dataclasses.replace(context, settings=dataclasses.replace(context.settings, tolerance=STRICT))


@pytest.fixture(scope="session")
def baseline(rnn_context):
    """{backend: {quant: (Outcome, wall seconds)}} for the float model and plain int8."""
    results = {}
    for backend in BACKENDS:
        for quant in ("none", "int8"):
            started = time.perf_counter()
            outcome = convert_and_evaluate(rnn_context, Variant(quant, backend=backend))
            results.setdefault(backend, {})[quant] = (outcome, time.perf_counter() - started)
    return results


def _unrolled_lstm_ops(tflite_model: bytes) -> Counter:
    """Op counts of a float LSTM model, checked to be unrolled: per step three LOGISTIC (gates), two
    TANH and three MUL (litert-torch drops the first step's forget gate: its state is zero), at least
    12 ops a step in all, and no fused or looped op."""
    ops = Counter(op for op, _, _ in flatbuffer.op_tensors(tflite_model))
    steps = STEPS - 1
    assert ops["LOGISTIC"] >= 3 * steps and ops["TANH"] >= 2 * steps and ops["MUL"] >= 3 * steps
    assert sum(ops.values()) >= 12 * STEPS
    assert not {"UNIDIRECTIONAL_SEQUENCE_LSTM", "WHILE"} & set(ops)
    return ops


def test_the_lstm_learns_from_wide_range_inputs_and_converts_unrolled(rnn_files, baseline):
    _, data, accuracy = rnn_files
    assert accuracy > 0.6  # 10 classes: the encoder has learned the images' structure
    with np.load(data) as arrays:
        x = arrays["x_train"]
    assert x.shape[1:] == (STEPS, 15) and x.min() >= 0.0 and x.max() > 10.0 and np.median(x) < 0.1
    float_model, _ = baseline["converter"]["none"]
    ops = _unrolled_lstm_ops(float_model.tflite_model)
    assert ops["FULLY_CONNECTED"] >= 2 * STEPS  # per step: the input's and the state's
    assert float_model.metrics["cosine_similarity"] > 0.9999


@pytest.mark.parametrize("backend", BACKENDS)
def test_plain_int8_misses_the_bound_that_a_dynamic_range_model_meets_smaller_than_float(
        rnn_context, baseline, backend):
    float_size = baseline[backend]["none"][0].metrics["size_bytes"]
    int8, _ = baseline[backend]["int8"]
    assert int8.metrics["cosine_similarity"] < STRICT.min_cosine_similarity
    smaller = ("dynamic", "weight_only_int8") if backend == "litert" else ("dynamic",)
    for quant in smaller:
        metrics = convert_and_evaluate(rnn_context, Variant(quant, backend=backend)).metrics
        assert metrics["cosine_similarity"] >= STRICT.min_cosine_similarity, quant
        assert metrics["size_bytes"] < 0.7 * float_size, quant


def test_the_damage_is_in_the_recurrence(rnn_context, baseline):
    """Keeping the recurrent cell's ops in float (named, no search) brings the converter's static
    int8 within the bound: the error is in the unrolled recurrence, not in the embedding layer."""
    named = dataclasses.replace(rnn_context, settings=dataclasses.replace(
        rnn_context.settings, mixed_precision=MixedPrecision(float_layers=("lstm_cell",))))
    outcome = convert_and_evaluate(named, Variant("int8_mixed", backend="converter"))
    assert len(outcome.search.chosen.float_layers) >= 10 * STEPS  # every per-step op of the cell
    assert outcome.metrics["cosine_similarity"] >= STRICT.min_cosine_similarity
    assert baseline["converter"]["int8"][0].metrics["cosine_similarity"] < STRICT.min_cosine_similarity


def test_int8_mixed_meets_the_bound_smaller_than_float(rnn_context, baseline):
    """Issue 19's Done-when on backend=litert: plain int8 misses cos 0.99; int8_mixed meets it with a
    model smaller than float, by moving the recurrent cell's group out of static int8 (dynamic-range
    int8 where the op has weights, float where it has none). Its wall time against one full int8
    quantization is a ratio printed by ``benchmarks/mixed_search.py``, not asserted here."""
    mixed = convert_and_evaluate(rnn_context, Variant("int8_mixed", backend="litert"))
    assert baseline["litert"]["int8"][0].metrics["cosine_similarity"] < STRICT.min_cosine_similarity
    assert mixed.search.tolerance_met and mixed.metrics["cosine_similarity"] >= STRICT.min_cosine_similarity
    assert mixed.metrics["size_bytes"] < baseline["litert"]["none"][0].metrics["size_bytes"]
    groups = {group["name"]: group["precision"] for group in mixed.search.report()["groups"]}
    assert groups.get("lstm_cell") in ("dynamic_int8", "weight_only_int8", "float"), groups
