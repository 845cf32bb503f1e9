"""A hostile pass: graphs, files and calls that once gave a wrong model
silently or failed with a Python symptom instead of an answer.

Each test names the defect it pins down; see CHANGELOG.md (Fixed).
"""

import io
import json
import sys
import warnings
import zipfile

import h5py
import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import prunemix
from prunemix import __main__ as cli
from prunemix.prunable import prunable_weights_of

L = keras.layers
X8 = np.random.default_rng(0).normal(size=(4, 8)).astype("float32")
IMG = np.random.default_rng(1).normal(size=(2, 6, 6, 3)).astype("float32")


def assert_same_predictions(small, model, x):
    a, b = small.predict(x, verbose=0), model.predict(x, verbose=0)
    for got, want in zip(keras.tree.flatten(a), keras.tree.flatten(b), strict=True):
        scale = max(float(np.abs(want).max()), 1e-6)
        assert float(np.abs(got - want).max()) / scale <= 1e-5


def zero_units(layer, units):
    """Zeroes output units of a Dense/Conv layer (kernel columns and bias)."""
    variable = layer.pointwise_kernel if hasattr(layer, "pointwise_kernel") else layer.kernel
    kernel = variable.numpy()
    kernel[..., units] = 0
    variable.assign(kernel)
    if layer.bias is not None:
        bias = layer.bias.numpy()
        bias[units] = 0
        layer.bias.assign(bias)


# -- 1, 2: activations that mix channels ---------------------------------------------------

def _dense_sparsemax_argument():
    i = keras.Input((8,))
    h = L.Dense(8, activation="sparsemax", name="mix")(L.Dense(8, name="a")(i))
    return keras.Model(i, L.Dense(3)(h)), "a"


def _sparsemax_layer():
    i = keras.Input((8,))
    h = L.Activation("sparsemax")(L.Dense(8, name="a")(i))
    return keras.Model(i, L.Dense(3)(h)), "a"


def _depthwise_softmax():
    i = keras.Input((6, 6, 3))
    h = L.DepthwiseConv2D(3, padding="same", activation="softmax")(L.Conv2D(6, 1, name="a")(i))
    return keras.Model(i, L.Dense(2)(L.GlobalAveragePooling2D()(L.Conv2D(4, 1)(h)))), "a"


def _separable_softmax():
    i = keras.Input((6, 6, 3))
    h = L.SeparableConv2D(6, 3, padding="same", activation="softmax", name="s")(
        L.Conv2D(6, 1, name="a")(i))
    return keras.Model(i, L.Dense(2)(L.GlobalAveragePooling2D()(L.Conv2D(4, 1)(h)))), "s"


@pytest.mark.parametrize("build", [_dense_sparsemax_argument, _sparsemax_layer,
                                   _depthwise_softmax, _separable_softmax])
def test_shrink_keeps_channels_that_a_mixing_activation_reads(build):
    model, name = build()
    zero_units(model.get_layer(name), [0, 2, 4])
    x = X8 if len(model.inputs[0].shape) == 2 else IMG
    small = prunemix.shrink(model)
    assert_same_predictions(small, model, x)
    assert "mixes channels" in prunemix.channel_graph(model).summary()


# -- 3: subclasses of built-in layers that compute something else --------------------------

class WeightStandardizedConv(L.Conv2D):
    def convolution_op(self, inputs, kernel):
        mean = keras.ops.mean(kernel, axis=(0, 1, 2), keepdims=True)
        std = keras.ops.std(kernel, axis=(0, 1, 2), keepdims=True) + 1e-5
        return super().convolution_op(inputs, (kernel - mean) / std)


class CosineDense(L.Dense):
    def call(self, inputs):
        x = keras.ops.normalize(inputs, axis=-1)
        return keras.ops.matmul(x, keras.ops.normalize(self.kernel, axis=0))


def test_subclass_with_its_own_computation_ends_the_group():
    i = keras.Input((6, 6, 3))
    h = WeightStandardizedConv(6, 3, name="ws")(L.Conv2D(4, 1, name="c1")(i))
    h = CosineDense(5, name="cos")(L.Dense(6, name="d1")(L.GlobalAveragePooling2D()(h)))
    model = keras.Model(i, L.Dense(2)(h))
    zero_units(model.get_layer("c1"), [0, 1])
    zero_units(model.get_layer("d1"), [1, 3])
    assert_same_predictions(prunemix.shrink(model), model, IMG)
    ended = prunemix.channel_graph(model).ended_by
    assert "overrides `convolution_op`" in ended["ws"]
    assert "overrides `call`" in ended["cos"]


class LoggedDense(L.Dense):
    def call(self, inputs):
        return super().call(inputs)


class ChannelScale(L.Layer):
    def build(self, shape):
        self.scale = self.add_weight(shape=(shape[-1],), initializer="ones")

    def call(self, x):
        return x * self.scale


class ChannelScaleHandler(prunemix.structured.handlers.ChannelHandler):
    def connect(self, graph, layer, ins, outs, info):
        graph.tie(ins[0], outs[0])
        graph.tie(outs[0], graph.weight(layer, layer.scale, 0))

    def value(self, graph, layer, vin, size, info, value_of):
        return vin[0] * value_of(layer.scale)


def test_registered_handlers_analyse_classes_prunemix_does_not_know(monkeypatch):
    monkeypatch.setattr(sys.modules["prunemix.structured.handlers"], "_REGISTERED", {})
    i = keras.Input((8,))
    h = ChannelScale(name="scale")(LoggedDense(6, name="logged")(i))
    model = keras.Model(i, L.Dense(2)(h))
    assert "LoggedDense overrides `call`" in prunemix.channel_graph(model).ended_by["logged"]
    assert "not understood" in prunemix.channel_graph(model).ended_by["scale"]
    prunemix.register_channel_handler(LoggedDense, L.Dense)
    prunemix.register_channel_handler(ChannelScale, ChannelScaleHandler())
    assert not prunemix.channel_graph(model).ended_by
    zero_units(model.get_layer("logged"), [0, 4])
    small = prunemix.shrink(model)
    assert isinstance(small.get_layer("logged"), LoggedDense)
    assert small.get_layer("logged").units == 4 and small.get_layer("scale").scale.shape == (4,)
    assert_same_predictions(small, model, X8)
    with pytest.raises(TypeError, match="Received"):
        prunemix.register_channel_handler(LoggedDense, "Dense")
    with pytest.raises(TypeError, match="Received"):
        prunemix.register_channel_handler(len, L.Dense)


# -- 4, 10: BatchNormalization(scale=False): its constant is not zero -----------------------

def bn_no_scale_model():
    i = keras.Input((6, 6, 3))
    h = L.Conv2D(8, 3, padding="same", use_bias=False, name="c1")(i)
    h = L.BatchNormalization(scale=False, name="bn")(h)
    h = L.Conv2D(6, 3, padding="same", name="c2")(L.ReLU()(h))
    model = keras.Model(i, L.Dense(2, name="out")(L.GlobalAveragePooling2D()(h)))
    bn = model.get_layer("bn")
    bn.moving_mean.assign(np.linspace(-1, 1, 8))  # trained statistics (InceptionV3 has these)
    bn.moving_variance.assign(np.linspace(0.5, 2, 8))
    return model


def zero_filters(model, name):
    kernel = model.get_layer(name).kernel.numpy()
    return int((~kernel.reshape(-1, kernel.shape[-1]).any(axis=0)).sum())


def test_batchnorm_without_scale_prunes_only_what_shrink_removes_and_resumes(tmp_path):
    pruned = prunemix.prune_model(
        bn_no_scale_model(), prunemix.ConstantSparsity(0.5, 0, frequency=1),
        pruning_policy=[prunemix.Rule("*", pattern=prunemix.ChannelGroups())])
    pruned.pruner.update_masks(step=1)
    pruned.pruner.apply_masks()
    # c1's channels reach a "same" convolution as BatchNorm's -mean/std: kept.
    assert zero_filters(pruned, "c1") == 0
    assert zero_filters(pruned, "c2") == 3
    small = prunemix.shrink(pruned)
    assert [layer.filters for layer in small.layers if isinstance(layer, L.Conv2D)] == [8, 3]
    assert_same_predictions(small, prunemix.strip_pruning(pruned), IMG)
    pruned.save(tmp_path / "m.keras")
    loaded = prunemix.load_model(tmp_path / "m.keras")
    for model in (pruned, loaded):
        model.pruner.update_masks(step=2)
    assert {p.key: p.mask.numpy().tolist() for p in loaded.pruner.pruned_weights} == \
        {p.key: p.mask.numpy().tolist() for p in pruned.pruner.pruned_weights}


# -- 5: a rule's score ranks ChannelGroups -------------------------------------------------

def test_channel_groups_ranks_by_the_rules_score():
    i = keras.Input((8,))
    model = keras.Model(i, L.Dense(2, name="o")(L.Dense(10, use_bias=False, name="h")(i)))
    scale = np.array([10.0] * 5 + [1.0] * 5, "float32")  # units 0-4 ten times larger
    model.get_layer("h").kernel.assign(np.ones((8, 10), "float32") * scale)
    model.get_layer("o").kernel.assign(np.ones((10, 2), "float32") * scale[:, None])

    def pruned_units(score):
        pruned = prunemix.prune_model(
            model, prunemix.ConstantSparsity(0.5, 0, frequency=1),
            pruning_policy=[prunemix.Rule("*", pattern=prunemix.ChannelGroups(), score=score)])
        pruned.pruner.update_masks(step=1)
        mask = next(p.mask.numpy() for p in pruned.pruner.pruned_weights
                    if p.path == "h/kernel")
        return set(np.nonzero(~mask.any(axis=0))[0].tolist())

    assert pruned_units(None) == {5, 6, 7, 8, 9}
    assert pruned_units(lambda p: 1.0 / (keras.ops.abs(p.weight) + 1e-3)) == {0, 1, 2, 3, 4}


# -- 6: the most specific declaration wins --------------------------------------------------

def test_a_subclass_keeps_its_own_declaration_after_a_base_is_registered(monkeypatch):
    monkeypatch.setattr(sys.modules["prunemix.prunable"], "_REGISTERED", [])

    @prunemix.prunable("kernel", "gate")
    class GatedDense(L.Dense):
        def build(self, input_shape):
            super().build(input_shape)
            self.gate = self.add_weight(shape=(input_shape[-1], self.units), name="gate")

    prunemix.register_prunable(L.Dense, "bias")
    gated, plain = GatedDense(4), L.Dense(4)
    gated.build((None, 3))
    plain.build((None, 3))
    assert [w.name for w in prunable_weights_of(gated)] == ["kernel", "gate"]
    assert [w.name for w in prunable_weights_of(plain)] == ["bias"]

    class Registered(GatedDense):
        pass

    prunemix.register_prunable(Registered, "gate")
    layer = Registered(4)
    layer.build((None, 3))
    assert [w.name for w in prunable_weights_of(layer)] == ["gate"]


# -- 7: dict outputs stay dicts ------------------------------------------------------------

def test_dict_outputs_keep_their_structure_through_prune_strip_and_shrink():
    i = keras.Input((8,))
    h = L.Dense(16, activation="relu", name="h")(i)
    model = keras.Model(i, {"score": L.Dense(1, name="s")(h), "alpha": L.Dense(3, name="a")(h)})
    zero_units(model.get_layer("h"), [0, 5])
    pruned = prunemix.prune_model(model, prunemix.ConstantSparsity(0.5, 0))
    for copy in (pruned, prunemix.strip_pruning(pruned), prunemix.shrink(model)):
        out = copy.predict(X8, verbose=0)
        assert isinstance(out, dict) and set(out) == {"score", "alpha"}
        assert out["score"].shape == (4, 1) and out["alpha"].shape == (4, 3)
    assert_same_predictions(prunemix.shrink(model), model, X8)


# -- 8: sparse int8 on LiteRT ---------------------------------------------------------------

def test_sparse_int8_runs_right_on_the_default_interpreter():
    i = keras.Input((64,))
    h = L.Dense(64, activation="relu")(L.Dense(64, activation="relu")(i))
    model = keras.Model(i, L.Dense(10)(h))
    pruned = prunemix.prune_model(model, prunemix.ConstantSparsity(0.8, 0, frequency=1),
                                  pruning_policy=prunemix.latency_policy(quantized=True))
    pruned.pruner.update_masks(step=1)
    stripped = prunemix.strip_pruning(pruned)
    x = np.random.default_rng(0).random((4, 64)).astype("float32")
    content = prunemix.to_tflite(stripped, quantize="int8")
    runner = prunemix.make_interpreter(content).get_signature_runner()
    (out,) = runner(**{next(iter(runner.get_input_details())): x}).values()
    want = stripped.predict(x, verbose=0)
    assert np.abs(out - want).max() <= 0.05 * np.abs(want).max()
    with pytest.raises(ValueError, match="sparse int8 weights"):
        prunemix.make_interpreter(content, xnnpack=True)


# -- 9, 16: damaged pruning state -----------------------------------------------------------

@pytest.fixture(scope="module")
def saved_mlp(tmp_path_factory):
    keras.utils.set_random_seed(0)
    i = keras.Input((8,))
    model = keras.Model(i, L.Dense(2, name="o")(L.Dense(16, name="h")(i)))
    pruned = prunemix.prune_model(model, prunemix.PolynomialDecay(0.0, 0.5, 0, 4, frequency=1))
    pruned.pruner.update_masks(step=2)
    pruned.pruner.pruning_step.assign(2)
    path = tmp_path_factory.mktemp("saved") / "mlp.keras"
    pruned.save(path)
    return path


def rewrite(source, target, edit, member=None):
    """Copies a `.keras` archive, with `edit(h5 group "pruner/vars")` applied
    to its weights (or `edit(bytes) -> bytes` to `member`)."""
    with zipfile.ZipFile(source) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    if member is None:
        member = "model.weights.h5"
        buffer = io.BytesIO(members[member])
        with h5py.File(buffer, "a") as f:
            edit(f["pruner/vars"])
        members[member] = buffer.getvalue()
    else:
        members[member] = edit(members[member])
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return target


def set_dataset(name, value):
    def edit(group):
        del group[name]
        group[name] = value
    return edit


def set_manifest(**fields):
    def edit(group):
        manifest = json.loads(bytes(group["manifest"][()]).decode())
        manifest.update(fields)
        del group["manifest"]
        group["manifest"] = np.frombuffer(json.dumps(manifest).encode(), np.uint8)
    return edit


def drop(name):
    def edit(group):
        del group[name]
    return edit


DAMAGE = {
    "float mask": (set_dataset("mask_0", np.ones((8, 16), "float32")), "is float32, not bool"),
    "NaN mask": (set_dataset("mask_0", np.full((8, 16), np.nan, "float32")), "not bool"),
    "keys null": (set_manifest(keys=None), "keys must be a list"),
    "keys a string": (set_manifest(keys="h/kernel"), "keys must be a list"),
    "keys repeated": (set_manifest(keys=["h/kernel", "h/kernel"]), "names weights twice"),
    "mask missing": (drop("mask_1"), "holds masks"),
    "format a string": (set_manifest(format="2"), "format is '2'"),
    "newer format": (set_manifest(format=3), "Upgrade prunemix"),
    "manifest not UTF-8": (set_dataset("manifest", np.frombuffer(b"\xff\xfe{", np.uint8)),
                           "not UTF-8 JSON"),
    "counts empty": (set_dataset("pruned_counts", np.zeros(0, "int64")), "pruned_counts"),
    "step negative": (set_dataset("pruning_step", np.asarray(-50, "int64")), "negative"),
    "step a vector": (set_dataset("pruning_step", np.zeros(3, "int64")), "pruning_step"),
    "mask transposed": (set_dataset("mask_0", np.ones((16, 8), bool)), "shape"),
    "mask a scalar": (set_dataset("mask_0", np.asarray(True)), "shape"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_pruning_state_is_a_clear_error_on_load_and_in_the_cli(case, saved_mlp,
                                                                       tmp_path, capsys):
    edit, message = DAMAGE[case]
    path = rewrite(saved_mlp, tmp_path / "bad.keras", edit)
    with pytest.raises(ValueError, match=message):
        prunemix.load_model(path)
    assert cli.main(["report", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("prunemix: error:") and err.count("\n") == 1 and "Traceback" not in err


def test_a_mask_bomb_is_refused_before_it_is_read(saved_mlp, tmp_path, capsys):
    def bomb(group):
        del group["mask_0"]
        group.create_dataset("mask_0", shape=(10**6, 10**6), dtype=bool, chunks=(1, 1024),
                             compression="gzip")
    path = rewrite(saved_mlp, tmp_path / "bomb.keras", bomb)
    assert cli.main(["report", str(path)]) == 2
    assert "more bytes than the whole" in capsys.readouterr().err


def test_garbage_weights_are_a_value_error(saved_mlp, tmp_path):
    path = rewrite(saved_mlp, tmp_path / "garbage.keras", lambda _: b"\x00" * 512,
                   member="model.weights.h5")
    with pytest.raises(ValueError, match="weights cannot be read"):
        prunemix.load_model(path)


def test_the_undamaged_file_still_loads_and_reports(saved_mlp, capsys):
    assert prunemix.load_model(saved_mlp).pruner.pruning_step.numpy() == 2
    assert cli.main(["report", str(saved_mlp)]) == 0
    assert "pruning step 2" in capsys.readouterr().out


# -- 11, 12: LoRA, quantized layers, the tied ReversibleEmbedding ---------------------------

def test_shrink_keeps_lora_and_quantized_layers_whole():
    i = keras.Input((8,))
    h = L.Dense(8, name="a")(i)
    lora = L.Dense(5, name="lora")
    model = keras.Model(i, L.Dense(2)(lora(h)))
    lora.enable_lora(2)
    lora.lora_kernel_b.assign(np.ones((2, 5), "float32"))
    zero_units(model.get_layer("a"), [0, 3])
    assert_same_predictions(prunemix.shrink(model), model, X8)
    assert "LoRA" in prunemix.channel_graph(model).ended_by["lora"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "InputLayer does not have a `quantize` method"
        model.quantize("int8")
    assert_same_predictions(prunemix.shrink(model), model, X8)
    assert "quantized (int8)" in prunemix.channel_graph(model).ended_by["a"]


def test_channel_groups_of_a_gpt2_task_ends_at_the_tied_embedding():
    from tests import hub_models

    lm = hub_models.gpt2()
    graph = prunemix.channel_graph(lm)
    assert any("ReversibleEmbedding overrides" in reason for reason in graph.ended_by.values())


# -- 13: mixed precision to LiteRT ----------------------------------------------------------

def test_to_tflite_of_a_mixed_float16_model_runs_in_float32():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        i = keras.Input((8,))
        model = keras.Model(i, L.Dense(2, dtype="float32")(L.Dense(16, activation="relu")(i)))
    finally:
        keras.config.set_dtype_policy(previous)
    runner = prunemix.make_interpreter(prunemix.to_tflite(model)).get_signature_runner()
    (out,) = runner(**{next(iter(runner.get_input_details())): X8}).values()
    want = model.predict(X8, verbose=0)
    assert out.dtype == np.float32
    assert np.abs(out - want).max() <= 1e-2 * np.abs(want).max()  # float16 compute in Keras


# -- 14: the CLI answers in one line, exit 2 ------------------------------------------------

def test_cli_bad_files_and_folders_exit_2_with_one_line(saved_mlp, tmp_path, capsys):
    content = prunemix.to_tflite(prunemix.load_model(saved_mlp), sparse=False)
    truncated = tmp_path / "cut.tflite"
    truncated.write_bytes(content[: len(content) // 3])
    corrupt = tmp_path / "corrupt.tflite"
    corrupt.write_bytes(content[:8] + b"\xff" * (len(content) - 8))
    for argv in (["tflite", str(truncated)], ["tflite", str(corrupt)],
                 ["tflite", str(tmp_path)], ["report", str(tmp_path)],
                 ["strip", str(saved_mlp), str(tmp_path / "missing" / "out.keras")]):
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("prunemix: error:") and err.count("\n") == 1, (argv, err)
    with pytest.raises(ValueError, match="tflite"):
        prunemix.tflite_report(content[: len(content) // 3])


# -- 17: copy_weights ---------------------------------------------------------------------

def test_copy_weights_copies_weights_only_and_refuses_an_unbuilt_target():
    def mlp():
        i = keras.Input((8,))
        return keras.Model(i, L.Dense(2, name="o")(L.Dense(16, name="h")(i)))

    source = mlp()
    with pytest.raises(ValueError, match="not built"):
        prunemix.copy_weights(source, keras.Sequential([L.Dense(16, name="h")]))
    with pytest.raises(TypeError, match="Received"):
        prunemix.copy_weights(source, None)
    keras.utils.set_random_seed(1)
    target = prunemix.prune_model(mlp(), prunemix.ConstantSparsity(0.5, 0, frequency=1))
    target.pruner.update_masks(step=1)
    masks = [p.mask.numpy().copy() for p in target.pruner.pruned_weights]
    prunemix.copy_weights(source, target)  # plain -> PrunedModel
    np.testing.assert_array_equal(target.get_layer("h").kernel.numpy(),
                                  source.get_layer("h").kernel.numpy())
    other = prunemix.prune_model(mlp(), prunemix.ConstantSparsity(0.5, 0))
    prunemix.copy_weights(target, other)  # PrunedModel -> PrunedModel: no masks, no step
    assert other.pruner.pruning_step.numpy() == 0
    assert all(p.mask.numpy().all() for p in other.pruner.pruned_weights)
    for p, mask in zip(target.pruner.pruned_weights, masks, strict=True):
        np.testing.assert_array_equal(p.mask.numpy(), mask)


# -- 18, 19: Lambda layers; what shrink takes ----------------------------------------------

def test_models_with_a_lambda_prune_strip_and_shrink():
    i = keras.Input((8,))
    h = L.Lambda(lambda t: t * 2.0)(L.Dense(8, name="a")(i))
    model = keras.Model(i, L.Dense(2)(L.Dense(6, name="b")(h)))
    zero_units(model.get_layer("b"), [1])
    small = prunemix.shrink(model)
    assert_same_predictions(small, model, X8)
    assert small.get_layer("b").units == 5
    pruned = prunemix.prune_model(model, prunemix.ConstantSparsity(0.5, 0))
    assert_same_predictions(prunemix.strip_pruning(pruned), model, X8)


@pytest.mark.parametrize("value, hint", [(None, ""), ("x.keras", "load_model"),
                                         (L.Dense(2), "build a model")])
def test_shrink_takes_a_model_only(value, hint):
    with pytest.raises(TypeError, match=f"shrink takes a keras.Model. Received: .*{hint}"):
        prunemix.shrink(value)


# -- property: shrink never changes a prediction ---------------------------------------------

ELEMENTWISE = ["relu", "tanh", "sigmoid", "gelu", "linear"]


@st.composite
def graphs(draw):
    """A random functional graph of Dense/Conv blocks, residual adds,
    concatenations, BatchNorm and activations, and channels to zero."""
    conv = draw(st.booleans())
    shape = (5, 5, 3) if conv else (6,)
    i = keras.Input(shape)
    tensors = [i]
    for step in range(draw(st.integers(2, 5))):
        kind = draw(st.sampled_from(["kernel", "kernel", "bn", "act", "add", "concat"]))
        src = draw(st.integers(0, len(tensors) - 1))
        x = tensors[src]
        if kind == "kernel" or (kind in ("bn", "act", "add") and src == 0):
            units = draw(st.integers(2, 6))
            act = draw(st.sampled_from(ELEMENTWISE))
            layer = (L.Conv2D(units, draw(st.sampled_from([1, 3])), padding=draw(
                st.sampled_from(["same", "valid"])), activation=act, name=f"k{step}")
                if conv else L.Dense(units, activation=act, name=f"k{step}"))
            if conv and layer.padding == "valid" and x.shape[1] < 3:
                layer = L.Conv2D(units, 1, activation=act, name=f"k{step}")
            y = layer(x)
        elif kind == "bn":
            y = L.BatchNormalization(scale=draw(st.booleans()), name=f"bn{step}")(x)
        elif kind == "act":
            y = L.Activation(draw(st.sampled_from(ELEMENTWISE)))(x)
        else:
            same = [t for t in tensors[1:] if tuple(t.shape) == tuple(x.shape) and t is not x]
            if kind == "add" and same:
                y = L.Add()([x, draw(st.sampled_from(same))])
            elif kind == "concat" and len(tensors) > 2:
                other = draw(st.sampled_from(tensors[1:]))
                if tuple(other.shape[:-1]) != tuple(x.shape[:-1]) or src == 0:
                    continue
                y = L.Concatenate()([x, other])
            else:
                continue
        tensors.append(y)
    out = tensors[-1]
    if conv:
        out = L.GlobalAveragePooling2D()(out)
    model = keras.Model(i, L.Dense(3, name="head")(out))
    for layer in model.layers:
        if isinstance(layer, L.Dense | L.Conv2D) and layer.name != "head":
            n = layer.kernel.shape[-1]
            zero_units(layer, draw(st.lists(st.integers(0, n - 1), max_size=n, unique=True)))
        if isinstance(layer, L.BatchNormalization):
            c = layer.moving_mean.shape[0]
            layer.moving_mean.assign(np.asarray(draw(st.lists(
                st.sampled_from([0.0, 0.5, -1.0]), min_size=c, max_size=c)), "float32"))
    return model, (IMG[:, :5, :5] if conv else X8[:, :6])


@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(graphs())
def test_shrink_of_random_graphs_keeps_every_prediction(drawn):
    model, x = drawn
    small = prunemix.shrink(model)
    assert_same_predictions(small, model, x)
    assert small.count_params() <= model.count_params()
