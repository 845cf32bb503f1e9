"""Issue 12: pruning for LiteRT's sparse kernels, and reports that say what runs."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import prunemix
from prunemix.litert import DENSE, DENSIFIED, SPARSE_KERNEL
from tests.test_model import compiled

ENV = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
RNG = np.random.default_rng(0)
X = RNG.random((64, 32)).astype("float32")
Y = RNG.integers(0, 4, 64)


def mlp(policy, sparsity=0.75, name="mlp"):
    inputs = keras.Input((32,))
    x = keras.layers.Dense(64, activation="relu", name="hidden")(inputs)
    x = keras.layers.Dense(30, activation="relu", name="odd")(x)  # 64 inputs, 30 outputs
    x = keras.layers.Dense(10, activation="relu", name="narrow")(x)  # 30 inputs: no fit
    outputs = keras.layers.Dense(4, name="logits")(x)
    return prunemix.PrunedModel(
        inputs, outputs, name=name, pruning_policy=policy,
        pruning_schedule=prunemix.PolynomialDecay(0.0, sparsity, 0, 8, frequency=2),
    )


def blocks_of(kernel, axis, size):
    """Per block of `size` along `axis`: True if all zero, False if all nonzero-able."""
    moved = np.moveaxis(kernel, axis, -1)
    grouped = moved.reshape(*moved.shape[:-1], -1, size)
    return (grouped == 0).all(-1), (grouped == 0).any(-1)


def test_latency_policy_prunes_dense_kernels_in_input_blocks(mode):
    model = compiled(mlp(prunemix.latency_policy()), mode)
    specs = {p.path: p.pattern for p in model.pruner.pruned_weights}
    assert specs == {
        "hidden/kernel": prunemix.BlockSparsity((4, 1)),
        "odd/kernel": prunemix.BlockSparsity((4, 1)),
    }  # "narrow" (30 inputs) and "logits" (10): no 4-blocks fit, they stay dense
    model.fit(X, Y, batch_size=8, epochs=2, verbose=0)
    for p in model.pruner.pruned_weights:
        kernel = p.weight.numpy()
        whole, some = blocks_of(kernel, 0, 4)
        assert np.array_equal(whole, some), p.path  # every block all zero or not pruned
        assert whole.sum() == round(0.75 * whole.size), p.path  # exact block count
    for name in ("narrow", "logits"):
        assert np.count_nonzero(model.get_layer(name).kernel.numpy() == 0) == 0


def test_latency_policy_with_own_rules_first_and_after_reload(tmp_path):
    policy = [prunemix.Rule("logits", exclude=True), *prunemix.latency_policy(quantized=True)]
    model = mlp(policy)
    assert {p.path: p.pattern for p in model.pruner.pruned_weights} == {
        "hidden/kernel": prunemix.BlockSparsity((16, 1)),
        "odd/kernel": prunemix.BlockSparsity((16, 1)),
    }
    compiled(model, {}).fit(X, Y, batch_size=8, epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert [(p.key, p.pattern) for p in loaded.pruner.pruned_weights] == [
        (p.key, p.pattern) for p in model.pruner.pruned_weights]


def test_latency_policy_errors():
    with pytest.raises(ValueError, match="runtime"):
        prunemix.latency_policy("tensorrt")
    with pytest.raises(ValueError, match="positive int"):
        prunemix.InputBlockSparsity(0)
    inputs = keras.Input((6, 6, 3))
    outputs = keras.layers.Conv2D(4, 3)(inputs)
    with pytest.raises(ValueError, match="needs a Dense or EinsumDense kernel"):
        prunemix.PrunedModel(inputs, outputs, pruning_schedule=prunemix.ConstantSparsity(0.5),
                             pruning_policy=[prunemix.Rule("*", pattern="input_blocks")])


@pytest.mark.parametrize("heads", [2, 4])
def test_attention_projections_get_blocks_along_their_input_axes(heads):
    inputs = keras.Input((8, 16))
    attention = keras.layers.MultiHeadAttention(heads, 8, name="mha")
    outputs = attention(inputs, inputs)
    model = prunemix.PrunedModel(inputs, outputs,
                                 pruning_schedule=prunemix.ConstantSparsity(0.5, frequency=1),
                                 pruning_policy=prunemix.latency_policy())
    blocks = {p.path.split("/")[1]: p.pattern.block_shape for p in model.pruner.pruned_weights}
    # q/k/v: (16 in, heads, 8) summed over axis 0; output: (heads, 8, 16) over axes 0, 1.
    assert blocks == {"query": (4, 1, 1), "key": (4, 1, 1), "value": (4, 1, 1),
                      "attention_output": (1, 4, 1)}


def latency_model():
    model = mlp(prunemix.latency_policy(), sparsity=0.9)
    model.pruner.update_masks(step=8)
    model.pruner.apply_masks()
    return model


def test_tflite_report_matches_the_flatbuffer_and_the_model_runs():
    model = latency_model()
    content = prunemix.to_tflite(model)
    report = prunemix.tflite_report(content)
    assert report.size == len(content)
    fully_connected = [r for r in report if r.op == "FULLY_CONNECTED"]
    # Kernels are stored (out, in): 64x32 and 30x64 sparse in 1x4 blocks, the rest dense.
    assert [(r.shape, r.storage, r.block) for r in fully_connected] == [
        ((64, 32), SPARSE_KERNEL, (1, 4)), ((30, 64), SPARSE_KERNEL, (1, 4)),
        ((10, 30), DENSE, ()), ((4, 10), DENSE, ())]
    assert "sparse kernel" in str(report) and f"file size: {len(content)} bytes" in str(report)
    interpreter = prunemix.make_interpreter(content)
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, X.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, X)
    interpreter.invoke()
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(got, model.predict(X, verbose=0), atol=1e-4)


def test_tflite_report_says_unstructured_is_densified():
    inputs = keras.Input((32,))
    outputs = keras.layers.Dense(64)(inputs)
    model = prunemix.PrunedModel(inputs, outputs,
                                 pruning_schedule=prunemix.ConstantSparsity(0.9, frequency=1))
    model.pruner.update_masks(step=1)
    model.pruner.apply_masks()
    assert [r.storage for r in prunemix.tflite_report(prunemix.to_tflite(model))] == [DENSIFIED]
    dense = prunemix.tflite_report(prunemix.to_tflite(model, sparse=False))
    assert [r.storage for r in dense] == [DENSE]
    with pytest.raises(ValueError, match="TFL3"):
        prunemix.tflite_report(b"not a model at all")


def int8_storage(model, **kwargs):
    report = prunemix.tflite_report(prunemix.to_tflite(model, quantize="int8", **kwargs))
    return [(r.dtype, r.storage, r.block) for r in report if r.shape in ((64, 32), (30, 64))]


def samples():
    for row in X[:8]:
        yield [row[None]]


@pytest.mark.parametrize("full_integer", [False, True])
def test_int8_runs_sparse_kernels_with_blocks_of_16_only(full_integer):
    kwargs = {"representative_dataset": samples} if full_integer else {}
    blocks16, blocks4 = (mlp(prunemix.latency_policy(quantized=q), sparsity=0.9)
                         for q in (True, False))
    for model in (blocks16, blocks4):
        model.pruner.update_masks(step=8)
        model.pruner.apply_masks()
    assert int8_storage(blocks16, **kwargs) == [("int8", SPARSE_KERNEL, (1, 16))] * 2
    # LiteRT's int8 sparse kernel takes 1x16 blocks only: 1x4 is densified at load.
    assert int8_storage(blocks4, **kwargs) == [("int8", DENSIFIED, ())] * 2


def test_to_tflite_quantize_errors():
    model = mlp(None)
    with pytest.raises(ValueError, match="quantize"):
        prunemix.to_tflite(model, quantize="fp16")
    with pytest.raises(ValueError, match="needs `quantize='int8'`"):
        prunemix.to_tflite(model, representative_dataset=samples)


def test_cli_tflite(tmp_path):
    path = tmp_path / "m.tflite"
    path.write_bytes(prunemix.to_tflite(latency_model()))
    result = subprocess.run([sys.executable, "-m", "prunemix", "tflite", str(path)],
                            capture_output=True, text=True, env=ENV)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("sparse kernel, blocks 1x4") == 2
    assert "2 sparse kernel, 0 densified, 2 dense" in result.stdout
    (tmp_path / "bad.tflite").write_bytes(b"nope")
    from prunemix.__main__ import main

    assert main(["tflite", str(tmp_path / "bad.tflite")]) == 2


def xnnpack_friendly(prune_second=0.5):
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.ZeroPadding2D(1)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="valid", name="stem")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = keras.layers.Conv2D(16, 1, name="pw1")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Conv2D(16, 1, name="pw2")(x)
    x = keras.layers.GlobalAveragePooling2D(keepdims=True, name="gap")(x)
    outputs = keras.layers.Dense(4, name="head")(keras.layers.Flatten()(x))
    model = keras.Model(inputs, outputs)
    for name, sparsity in (("pw1", 0.8), ("pw2", prune_second)):
        kernel = model.get_layer(name).kernel
        w = kernel.numpy()
        w.reshape(-1)[: round(sparsity * w.size)] = 0.0
        kernel.assign(w)
    return model


def test_xnnpack_report_names_what_runs_sparse_and_why_not():
    report = prunemix.xnnpack_sparse_report(xnnpack_friendly())
    rows = {r.layer: r for r in report}
    assert rows["stem"].reason == "starts the sparse subgraph"
    assert rows["pw1"].sparse and "80% zeros" in rows["pw1"].reason
    assert not rows["pw2"].sparse and "under 67%" in rows["pw2"].reason
    assert rows["gap"].reason == "ends the subgraph"
    assert rows["head"].reason == "outside the sparse subgraph"
    assert "x86 CPUs with AVX never do" in str(report)


def test_xnnpack_report_never_rejects_stock_mobilenet_v2():
    model = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None)
    report = prunemix.xnnpack_sparse_report(model)
    first = next(r for r in report if r.kind == "Conv2D")
    assert not first.sparse and "no sparse subgraph" in first.reason
    assert not any(r.sparse for r in report)
    with pytest.raises(ValueError, match="functional or Sequential"):
        prunemix.xnnpack_sparse_report(_Sub())


class _Sub(keras.Model):
    def call(self, x):
        return x
