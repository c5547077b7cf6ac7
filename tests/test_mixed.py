"""int8_mixed: the search schedule, both backends on the demo, unmeetable tolerances and bad input."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
from click.testing import CliRunner

from mlflow import MlflowClient
import store
from mlflow_tflite import tags
from mlflow_tflite.build import mixed, precision_search, quantize, rules
from mlflow_tflite.build.data import calibration_sample
from mlflow_tflite.flavor import flatbuffer
from mlflow_tflite.cli import cli
from mlflow_tflite.errors import TFLiteError
from mlflow_tflite.build.mixed import Group, Layer, MixedPrecision, Precision
from mlflow_tflite.sweep.work import convert_and_evaluate
from mlflow_tflite.sweep.main_job import run_variant
from mlflow_tflite.track.selection import Tolerance
from mlflow_tflite.variants import Variant

# The demo's int8 model has a cosine similarity to the source of about 0.99999 (converter) and
# 0.998 (LiteRT Quantizer) on the digits test split, so this bound makes full int8 fail on both.
STRICT = Tolerance(min_cosine_similarity=0.999991)


def _search(harmful: set[str], ranked: list[str], max_trials: int):
    """The search over ten named layers where a trial passes once every ``harmful`` layer is float."""
    layers = [Layer(name, "CONV_2D", i) for i, name in enumerate(sorted(ranked))]
    return precision_search.search(
        quantize=lambda plan: ",".join(mixed.float_tensors(plan)).encode(),
        measure=lambda model: {"accuracy_drop": 0.0 if harmful <= set(filter(None, model.decode().split(","))) else 0.05},
        violation=lambda metrics: "too much" if metrics["accuracy_drop"] > 0.01 else None,
        rank=lambda full_int8: [Group(t, (next(layer for layer in layers if layer.tensor == t),), 1.0) for t in ranked],
        layers=layers,
        options=MixedPrecision(max_trials=max_trials),
    )


def test_the_float_set_grows_geometrically_then_bisects_to_the_fewest_layers():
    ranked = [f"l{i}" for i in range(10)]
    # The 5th-ranked layer is the one that matters: sizes 0, 1, 2, 4 fail, 8 passes, then 6 and 5 pass.
    result = _search({"l4"}, ranked, max_trials=8)
    assert [len(t.float_layers) for t in result.trials] == [0, 1, 2, 4, 8, 6, 5]
    assert result.tolerance_met and result.chosen.float_layers == tuple(ranked[:5])
    # Bounded by max_trials: three trials stop at size 2, nothing found, the least bad is kept.
    bounded = _search({"l4"}, ranked, max_trials=3)
    assert [len(t.float_layers) for t in bounded.trials] == [0, 1, 2]
    assert not bounded.tolerance_met and "never selected or promoted" in bounded.message
    # Full int8 within tolerance: one trial, no layer in float.
    easy = _search(set(), ranked, max_trials=8)
    assert len(easy.trials) == 1 and easy.chosen.float_layers == () and easy.tolerance_met


def _group_search(needed: dict[str, str], max_trials: int = 8):
    """Four groups ``g0``..``g3`` (ranked in that order) of one FULLY_CONNECTED op (falls back to
    dynamic_int8) and one ADD (no dynamic kernel: falls back to float) each, like the time steps of a
    recurrent layer. A trial passes once every op in ``needed`` has at least the given precision."""
    layers = [Layer(f"net/g{g}/{op}", op.upper(), 2 * g + i) for g in range(4) for i, op in enumerate(("matmul", "add"))]
    groups = [Group(f"g{g}", tuple(layers[2 * g: 2 * g + 2]), 10.0 - g) for g in range(4)]
    order = ["int8", "dynamic_int8", "float"]
    at_least = lambda plan: all(order.index(dict(plan).get(t, "int8")) >= order.index(p)  # noqa: E731
                                for t, p in needed.items())
    return precision_search.search(
        quantize=lambda plan: json.dumps([[t, p.value] for t, p in plan]).encode(),
        measure=lambda model: {"accuracy_drop": 0.0 if at_least(json.loads(model)) else 0.05},
        violation=lambda metrics: "too much" if metrics["accuracy_drop"] > 0.01 else None,
        rank=lambda full_int8: groups, layers=layers, options=MixedPrecision(max_trials=max_trials),
        fallback=lambda layer: Precision.DYNAMIC_INT8 if layer.op == "MATMUL" else Precision.FLOAT)


def test_groups_go_to_their_cheapest_fallback_first():
    # g2's matmul must leave static int8: at sizes 1 and 2 both the fallback and the float trial fail,
    # at size 4 the fallback passes, then size 3 passes; each moved group's matmul runs dynamic_int8
    # and its add float.
    result = _group_search({"net/g2/matmul": "dynamic_int8"})
    assert [(len(t.float_layers), len(t.plan)) for t in result.trials] == [
        (0, 0), (1, 2), (2, 2), (2, 4), (4, 4), (4, 8), (3, 6)]
    D, F = Precision.DYNAMIC_INT8, Precision.FLOAT
    assert result.tolerance_met and result.chosen.plan == (
        ("net/g0/matmul", D), ("net/g0/add", F), ("net/g1/matmul", D), ("net/g1/add", F),
        ("net/g2/matmul", D), ("net/g2/add", F))
    report = result.report()
    assert [(g["name"], g["precision"], g["op_precisions"]) for g in report["groups"]] == [
        ("g0", "dynamic_int8", {"dynamic_int8": 1, "float": 1}), ("g1", "dynamic_int8", {"dynamic_int8": 1, "float": 1}),
        ("g2", "dynamic_int8", {"dynamic_int8": 1, "float": 1}), ("g3", "int8", {"int8": 2})]
    assert report["layers"][0] == {"name": "g0", "path": "net/g0", "op": "MATMUL", "tensor": "net/g0/matmul",
                                   "precision": "dynamic_int8"}
    assert result.message == "within tolerance with 3 layer(s) in dynamic_int8, 3 layer(s) in float after 7 trial(s)"


def test_groups_go_float_when_their_fallback_misses():
    # g0's matmul must be float and g1's leave int8: size 1 fails at its fallback and in float, size 2
    # fails at its fallback and passes in float; then only g0 in float, g1 at its fallback, passes.
    needed = {"net/g0/matmul": "float", "net/g1/matmul": "dynamic_int8"}
    result = _group_search(needed)
    assert [(len(t.float_layers), len(t.plan)) for t in result.trials] == [
        (0, 0), (1, 2), (2, 2), (2, 4), (4, 4), (3, 4)]
    D, F = Precision.DYNAMIC_INT8, Precision.FLOAT
    assert result.tolerance_met and result.chosen.plan == (
        ("net/g0/matmul", F), ("net/g0/add", F), ("net/g1/matmul", D), ("net/g1/add", F))
    assert result.short_layer_list() == "g0,g1"  # g1's add is float
    # With four trials the search stops before the float trial of size 2, nothing met.
    assert not _group_search(needed, max_trials=4).tolerance_met


@pytest.mark.parametrize("backend", ["converter", "litert"])
def test_int8_mixed_keeps_layers_in_float_until_the_tolerance_is_met(demo_prepared, backend):
    # Twelve trials: on the LiteRT backend each size may take two (its fallback, then float).
    prepared = dataclasses.replace(demo_prepared, task="fidelity", settings=dataclasses.replace(
        demo_prepared.settings, tolerance=STRICT, mixed_precision=MixedPrecision(max_trials=12)))
    full = convert_and_evaluate(prepared, Variant("int8", input_size=8, backend=backend))
    assert full.metrics["cosine_similarity"] < STRICT.min_cosine_similarity  # plain int8 misses the bound
    outcome = convert_and_evaluate(prepared, Variant("int8_mixed", input_size=8, backend=backend))
    search = outcome.search
    assert search.tolerance_met and outcome.metrics["cosine_similarity"] >= STRICT.min_cosine_similarity
    assert search.trials[0].float_layers == () and search.chosen.float_layers
    assert outcome.metrics["float_ops"] > full.metrics["float_ops"]  # the kept layers run float kernels
    # The chosen layers are float in the model: every op writing one of them has float outputs.
    float_outputs = {outs[0] for op, ins, outs in flatbuffer.op_tensors(outcome.tflite_model)}
    assert set(search.chosen.float_layers) <= float_outputs
    if backend == "converter":  # float weights are larger; the LiteRT search may use dynamic range, int8 weights
        assert outcome.metrics["size_bytes"] > full.metrics["size_bytes"]


def test_given_float_layers_and_unknown_names(demo_prepared):
    prepared = dataclasses.replace(demo_prepared, settings=dataclasses.replace(
        demo_prepared.settings, mixed_precision=MixedPrecision(float_layers=("probabilities",))))
    outcome = convert_and_evaluate(prepared, Variant("int8_mixed", input_size=8))
    assert len(outcome.search.trials) == 1
    (kept,) = outcome.search.report()["layers"]
    assert (kept["name"], kept["op"], kept["precision"]) == ("probabilities", "FULLY_CONNECTED", "float")
    wrong = dataclasses.replace(prepared, settings=dataclasses.replace(
        prepared.settings, mixed_precision=MixedPrecision(float_layers=("probabilites",))))
    with pytest.raises(TFLiteError, match="float_layers names 'probabilites'.*nearest: probabilities"):
        convert_and_evaluate(wrong, Variant("int8_mixed", input_size=8))


def test_an_unmeetable_tolerance_finishes_tagged_false_and_is_never_registered(demo_prepared, tracking):
    prepared = dataclasses.replace(demo_prepared, task="fidelity", settings=dataclasses.replace(
        demo_prepared.settings, tolerance=Tolerance(min_cosine_similarity=1.0), mixed_precision=MixedPrecision(max_trials=3)))
    result = run_variant(prepared, Variant("int8_mixed", input_size=8), "mixed", tolerance=prepared.settings.tolerance)
    assert result.registration is None and "tolerance not met" in result.message
    client = MlflowClient()
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.tags[tags.TOLERANCE_MET_TAG] == "false"
    assert run.data.params["max_trials"] == "3" and run.data.params["mixed_trials"] == "3"
    assert client.search_registered_models() == []
    history = {m: sorted((h.step, h.value) for h in client.get_metric_history(result.run_id, m))
               for m in ("cosine_similarity", "float_ops", "size_bytes", "latency_ms_p50")}
    assert [step for step, _ in history["latency_ms_p50"]] == [1, 2, 3, 4]  # three trials, then the final value
    assert history["cosine_similarity"][-1][1] == run.data.metrics["cosine_similarity"]
    report = json.loads(open(client.download_artifacts(result.run_id, "mixed_precision.json")).read())
    assert [t["trial"] for t in report["trials"]] == [1, 2, 3] and report["tolerance_met"] is False


def test_a_sweep_never_selects_a_mixed_variant_that_missed_the_tolerance(digits_files, tracking, tmp_path):
    model, data = digits_files
    options = tmp_path / "strict.yaml"  # judged by outputs, an exact match is needed: no int8 model can meet it
    options.write_text("run: {task: fidelity}\ntolerance: {min_cosine_similarity: 1.0}\nmixed_precision: {max_trials: 2}\n")
    result = CliRunner().invoke(cli, ["sweep", "--model", model, "--data", data, "--quant", "int8_mixed",
                                      "--sparsity", "0", "--config", str(options)])
    assert result.exit_code == 0, result.output
    client = MlflowClient()
    (child,) = store.search_runs(f"tags.{tags.ROLE_TAG} = 'variant'", client)
    assert child.info.status == "FINISHED" and child.data.tags[tags.TOLERANCE_MET_TAG] == "false"
    assert sorted(h.step for h in client.get_metric_history(child.info.run_id, "latency_ms_p50")) == [1, 2, 3]
    parent = store.search_runs(f"tags.{tags.ROLE_TAG} = 'sweep'", client)[0]
    assert tags.BEST_VARIANT_TAG not in parent.data.tags and "nothing registered" in parent.data.tags[tags.SELECTION_TAG]
    assert client.search_registered_models() == []


@pytest.mark.parametrize("args, message", [
    (["convert", "--quant", "none", "--float-layers", "conv2d"],
     "float_layers=conv2d only apply to quant=int8_mixed, but quant is none"),
    (["convert", "--quant", "int8", "--qat-epochs", "3"], "qat_epochs=3 only apply to quant=qat_int8"),
    (["convert", "--quant", "int8_mixed", "--max-trials", "0"], "max_trials=0 must be >= 1"),
    (["sweep", "--quant", "int8_mixed", "--backend", "litert", "--max-trials", "x"], "max_trials 'x' is not a number"),
])
def test_mixed_and_qat_bad_input_is_one_line(args, message, tracking):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_demo_sweep_over_int8_int8_mixed_and_qat_int8_logs_every_report(digits_files, tracking):
    model, data = digits_files
    result = CliRunner().invoke(cli, ["sweep", "--model", model, "--data", data, "--quant", "int8,int8_mixed,qat_int8",
                                      "--sparsity", "0", "--workers", "2", "--registered-model-name", "demo-mixed"])
    assert result.exit_code == 0, result.output
    client = MlflowClient()
    children = {r.data.tags[tags.VARIANT_TAG]: r for r in store.search_runs(f"tags.{tags.ROLE_TAG} = 'variant'", client)}
    assert set(children) == {"int8-s0-8px", "int8_mixed-s0-8px", "qat_int8-s0-8px"}
    for name, run in children.items():
        assert run.info.status == "FINISHED", name
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"tensor_errors.json", "edgetpu_readiness.json"} <= artifacts, (name, artifacts)
        assert {"min_tensor_snr_db", "edgetpu_mapped_fraction", "float_ops", "latency_ms_p50"} <= set(run.data.metrics)
    mixed_run = children["int8_mixed-s0-8px"]
    assert "mixed_precision.json" in {a.path for a in client.list_artifacts(mixed_run.info.run_id)}
    steps = sorted(h.step for h in client.get_metric_history(mixed_run.info.run_id, "accuracy_drop"))
    assert steps[0] == 1 and len(steps) == int(mixed_run.data.params["mixed_trials"]) + 1
    assert children["qat_int8-s0-8px"].data.params["qat_epochs"] == "2"
    assert client.get_model_version_by_alias("demo-mixed", "champion").tags[tags.VARIANT_TAG] in children


@pytest.mark.parametrize("tensor, path, name", [
    ("digits-cnn/conv2d_1/Relu;digits-cnn/conv2d_1/BiasAdd", "digits-cnn/conv2d_1", "conv2d_1"),  # Keras
    ("torch_nets.ONet/torch.nn.modules.conv.Conv2d_conv1;3",  # litert-torch: the scope ends in the module
     "torch_nets.ONet/torch.nn.modules.conv.Conv2d_conv1", "conv1"),
    ("torch_nets.ONet/torch.nn.modules.linear.Linear_dense6_1;2",
     "torch_nets.ONet/torch.nn.modules.linear.Linear_dense6_1", "dense6_1"),
    ("nets.Net/torch.nn.modules.container.Sequential_features/torch.nn.modules.conv.Conv2d_0;1",
     "nets.Net/torch.nn.modules.container.Sequential_features/torch.nn.modules.conv.Conv2d_0", "features.0"),
    ("serving_default_output_0_output", "serving_default_output_0_output", "serving_default_output_0_output"),
])
def test_layer_names_follow_keras_and_pytorch(tensor, path, name):
    layer = Layer(tensor, "CONV_2D", 0)
    assert (layer.path, layer.name) == (path, name)


def test_a_scope_pattern_matches_exactly_the_named_scopes():
    names = ["net/block[0]/dense:0;net/block[0]/add;", "a.b/c;", "x(1)+y?;"]
    pattern = re.compile(rules.scope_pattern(names))
    assert all(pattern.search(name) for name in names)
    # A scope that starts with a named one, a dot or bracket read as a regex, a name without its ';'.
    for other in ["net/block[0]/dense:0;net/block[0]/add;more;", "a.b/c;d;", "aXb/c;", "net/block0/dense:0;",
                  "x(1)+y?", "x1+y;", "prefix/a.b/c;"]:
        assert not pattern.search(other), other


def _output_types(tflite_model: bytes) -> dict[str, str]:
    """First output tensor name -> its type name, for each op of the main subgraph."""
    model = flatbuffer.as_model(tflite_model)
    subgraph = model.subgraphs[0]
    return {subgraph.tensors[op.outputs[0]].name.decode(): flatbuffer.type_name(subgraph.tensors[op.outputs[0]].type)
            for op in subgraph.operators}


def test_one_combined_float_rule_keeps_exactly_the_named_ops_float(demo_prepared):
    source = demo_prepared.source
    float_model = convert_and_evaluate(demo_prepared, Variant("none", input_size=8, backend="litert")).tflite_model
    calibration = [calibration_sample(demo_prepared.dataset.x_train, 100)]
    variant = Variant("int8_mixed", input_size=8, backend="litert")
    full = _output_types(quantize.quantize(float_model, variant, calibration, source.input_names).tflite_model)
    own = [outputs[0] for _, _, outputs in flatbuffer.op_tensors(float_model)]
    # Names with ';', '/' and ':' (the fused Keras conv and the model output), kept float by one rule.
    kept = ("digits-cnn/conv2d_1/Relu;digits-cnn/conv2d_1/BiasAdd;digits-cnn/conv2d_1/Conv2D;"
            "digits-cnn/conv2d_1/BiasAdd/ReadVariableOp1", "StatefulPartitionedCall:0")
    plan = tuple((tensor, Precision.FLOAT) for tensor in kept)
    quantized = quantize.quantize(float_model, variant, calibration, source.input_names, plan)
    mixed_types = _output_types(quantized.tflite_model)
    assert {t for t in own if mixed_types[t] == "FLOAT32"} == set(kept)
    assert {t for t in own if full[t] == "FLOAT32"} == set()
    float_rules = [rule for rule in json.loads(quantized.recipe_json)
                   if rule["algorithm_key"] == "no_quantize" and rule["operation"] == "*"]
    assert len(float_rules) == 1


def test_litert_groups_go_dynamic_range_before_float_on_the_demo(demo_prepared):
    # Full int8 has cosine 0.998 on the LiteRT backend; every weight layer in dynamic-range int8 (and the
    # pooling and softmax, which have no dynamic kernel, in float) meets 0.9995 without a float weight layer.
    prepared = dataclasses.replace(demo_prepared, task="fidelity", settings=dataclasses.replace(
        demo_prepared.settings, tolerance=Tolerance(min_cosine_similarity=0.9995)))
    outcome = convert_and_evaluate(prepared, Variant("int8_mixed", input_size=8, backend="litert"))
    report = outcome.search.report()
    assert report["tolerance_met"] and outcome.metrics["cosine_similarity"] >= 0.9995
    precisions = {group["name"]: group["precision"] for group in report["groups"]}
    assert precisions == {"conv2d": "dynamic_int8", "conv2d_1": "dynamic_int8", "conv2d_2": "dynamic_int8",
                          "probabilities": "dynamic_int8", "max_pooling2d": "float", "global_average_pooling2d": "float",
                          "StatefulPartitionedCall:0": "float"}
    assert {layer["op"] for layer in report["layers"] if layer["precision"] == "float"} <= {
        "MAX_POOL_2D", "MEAN", "SOFTMAX"}


def test_litert_fallback_is_float_where_dynamic_range_would_not_shrink_the_weight():
    import tensorflow as tf
    import tf_keras as keras

    # Dense(512) on one feature: a (512, 1) weight, 512 channels of one value: int8 with a scale and
    # zero point per channel (512 + 12 * 512 bytes) is larger than float (4 * 512). Dense(8) on 512
    # features: (8, 512), 4,096 + 96 bytes against 16,384: dynamic range. The softmax has no weight.
    model = keras.Sequential([keras.layers.Input((1,)), keras.layers.Dense(512), keras.layers.Dense(8),
                              keras.layers.Softmax()])
    float_model = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    fallbacks = rules.op_fallbacks(float_model)
    assert [(op, fallbacks[outputs[0]]) for op, _, outputs in flatbuffer.op_tensors(float_model)] == [
        ("FULLY_CONNECTED", Precision.FLOAT), ("FULLY_CONNECTED", Precision.DYNAMIC_INT8), ("SOFTMAX", Precision.FLOAT)]
