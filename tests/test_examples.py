import pytest

import prunemix
from bench import overhead
from examples import prune_digits, prune_methods


@pytest.mark.slow
def test_prune_digits_runs_small(tmp_path, recwarn):
    rows = prune_digits.main(["--quick", "--save", str(tmp_path)])
    # The main job runs on LiteRT from ai-edge-litert (the `examples` extra),
    # not on TensorFlow's deprecated interpreter, which warns mid-table.
    assert not [w for w in recwarn if "tf.lite.Interpreter is deprecated" in str(w.message)]
    names = [row[0] for row in rows]
    assert names == ["dense", "90.0%", "95.0%", "90.0% for speed", "50% of channels, shrunk"]
    # For speed, only the Dense kernels (1024x128, 128x10) are pruned, in 4-input
    # blocks: round(0.9 * 32768) and round(0.9 * 320) blocks of the 151072 weights.
    speed = (round(0.9 * 32768) + round(0.9 * 320)) * 4 / 151072
    for (_, reached, accuracy, size), target in zip(rows[1:4], (0.9, 0.95, speed), strict=True):
        assert reached == pytest.approx(target, abs=1e-3)
        assert size < rows[0][3]
        assert 0.0 <= accuracy <= 1.0
    # Half the channels of conv_in (32), conv (64) and dense (128) removed: the
    # weights left are (3*3*1*16+16) + (3*3*16*32+32) + (512*64+64) + (64*10+10).
    shrunk = 1 - (160 + 4640 + 32832 + 650) / 151306
    assert rows[4][1] == pytest.approx(shrunk) and rows[4][3] < rows[0][3]


@pytest.mark.slow
def test_prune_methods_runs_small():
    rows = prune_methods.main(["--quick"])
    assert [row[0] for row in rows] == ["dense", *prune_methods.METHODS]
    for _, _, reached, accuracy, _ in rows[1:]:
        assert reached == 0.5  # every method prunes exactly half of the same weights
        assert 0.0 <= accuracy <= 1.0


@pytest.mark.slow
def test_overhead_bench_runs_small():
    results = overhead.main(["--quick", "--case", "c"])
    assert len(results) == 1
    assert all(wall > 0 and cpu > 0 for wall, cpu in results.values())


def test_prune_hub_preset_example_runs_small(tmp_path):
    pytest.importorskip("keras_hub")
    from examples import prune_hub_preset

    results = prune_hub_preset.main(["--quick", "--dir", str(tmp_path)])
    # Stripped, saved as a preset and loaded with keras_hub alone: still the task class.
    assert results["class"] == "GPT2CausalLM"
    assert results["sparsity"] == 0.5
    assert 1.0 < results["dense_perplexity"] < 256 and 1.0 < results["pruned_perplexity"] < 256
    assert (tmp_path / "pruned" / "config.json").exists()


@pytest.mark.slow
def test_prune_oneshot_digits_runs_small():
    from examples import prune_oneshot_digits

    rows = prune_oneshot_digits.main(["--quick"])
    assert [(m, t) for m, t, _, _ in rows[1:4]] == [(m, "50%") for m in prunemix.oneshot.METHODS]
    # Every kernel exactly at its target: conv_in 288, conv 18432, dense 131072, logits 1280
    # (2:4 leaves conv_in out: one input channel).
    for _, label, accuracy, reached in rows[1:]:
        target = {"50%": 0.5, "75%": 0.75, "90%": 0.9, "2:4": 0.5}[label]
        sizes = (18432, 131072, 1280) if label == "2:4" else (288, 18432, 131072, 1280)
        assert reached == sum(round(target * n) for n in sizes) / sum(sizes)
        assert 0.0 <= accuracy <= 1.0


@pytest.mark.slow
def test_prune_oneshot_lm_runs_small():
    pytest.importorskip("keras_hub")
    from examples import prune_oneshot_lm

    rows = prune_oneshot_lm.main(["--quick"])
    assert [(m, p) for m, p, *_ in rows] == [
        ("dense", ""), *[(m, p) for p in ("50%", "2:4") for m in prunemix.oneshot.METHODS],
        ("sparsegpt + fine-tune", "2:4")]
    for _, _, ppl, sparsity, _ in rows[1:]:
        assert sparsity == 0.5 and 1.0 < ppl < 256


def test_custom_layers_example():
    from examples import custom_layers

    model, report = custom_layers.main(["--quick"])
    rows = {(r.layer.split("/")[-1], r.weight): r for r in report}
    assert set(rows) == {("rescale", "scale"), ("gated_dense", "kernel"),
                         ("gated_dense", "gate"), ("dense", "kernel")}
    schedule, step = model.pruning_schedule, int(model.pruner.pruning_step.numpy())
    last_update = max(s for s in range(step + 1) if schedule.should_prune(s))
    for row in report:
        assert row.zeros == round(float(schedule(last_update)) * row.size)
    assert model.gated.bias.path not in {p.path for p in model.pruner.pruned_weights}


def test_custom_train_step_example():
    from examples import custom_train_step

    model, history = custom_train_step.main(["--quick"])
    assert history.history["sparsity"][-1] == pytest.approx(
        prunemix.sparsity_report(model).sparsity, abs=1e-6
    )
    assert prunemix.sparsity_report(model).sparsity > 0.5


def test_gradient_tape_loop_example():
    from examples import gradient_tape_loop

    model, accuracy = gradient_tape_loop.main(["--quick"])
    assert int(model.pruner.pruning_step.numpy()) == 20
    assert prunemix.sparsity_report(model).sparsity > 0.5
    assert 0.0 < accuracy <= 1.0


def test_tfmot_style_layer_example():
    from examples import tfmot_style_layer

    model, report = tfmot_style_layer.main(["--quick"])
    assert [(r.weight, r.zeros) for r in report] == [
        ("u", round(0.5 * 64 * 16)), ("v", round(0.5 * 16 * 128)), ("kernel", 640)
    ]


def test_gradient_saliency_example_prunes_by_its_score():
    import keras
    import numpy as np

    from examples import gradient_saliency

    results = gradient_saliency.main(["--quick"])
    assert [round(s, 4) for s, _ in results.values()] == [0.95, 0.95]
    rng = np.random.default_rng(0)
    x, y = rng.random((64, 64)).astype("float32"), rng.integers(0, 10, 64)
    model = gradient_saliency.Classifier(prunemix.ConstantSparsity(0.6, frequency=2))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    # The saliency accumulated in train_step is non-zero where weights are kept.
    for pruned, saliency in zip(model.pruner.pruned_weights, model.saliencies, strict=True):
        assert np.all(saliency.numpy()[pruned.mask.numpy()] > 0)
    # The masks follow the score, not |w|: give the kernels fresh weights and
    # an unrelated saliency, and re-mask.
    for pruned, saliency in zip(model.pruner.pruned_weights, model.saliencies, strict=True):
        pruned.weight.assign(rng.normal(size=pruned.weight.shape).astype("float32"))
        saliency.assign(rng.random(saliency.shape).astype("float32"))
    model.pruner.update_masks()
    for pruned, saliency in zip(model.pruner.pruned_weights, model.saliencies, strict=True):
        count = round(0.6 * saliency.numpy().size)
        expected = prunemix.masks.lowest_k_mask(saliency, count).numpy()
        np.testing.assert_array_equal(pruned.mask.numpy(), expected)
        by_magnitude = prunemix.masks.lowest_k_mask(pruned.weight, count).numpy()
        assert (pruned.mask.numpy() != by_magnitude).mean() > 0.2


@pytest.mark.slow
def test_rfc_results_regenerates_both_tables_and_the_plot(tmp_path):
    from examples import rfc_results

    out = rfc_results.main(["--quick", "--png", str(tmp_path / "plot.png"),
                            "--save", str(tmp_path)])
    assert [row[0] for row in out["vision"]] == [
        "dense", "90.0%", "95.0%", "90.0% for speed", "50% of channels, shrunk"]
    assert [row[0] for row in out["sequence"]] == ["dense", "90%"]
    assert out["sequence"][1][1] == pytest.approx(0.9, abs=1e-3)
    assert all(0.0 <= row[2] <= 1.0 for row in out["sequence"])
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "digits_pruned_90.keras").exists()


@pytest.mark.slow
def test_bench_shrink_runs_small():
    from bench import shrink

    ((name, result),) = shrink.main(["--quick"])
    assert name == "MobileNetV2"
    dense, small = result["params"]
    assert small < 0.5 * dense and result["diff"] < 1e-4
    assert all(t > 0 for pair in (result["TF b1"], result["LiteRT b1"]) for t in pair)


def test_prune_transformer_digits_runs_small():
    from examples import prune_transformer_digits

    rows = prune_transformer_digits.main(["--quick"])
    assert [row[0] for row in rows] == ["dense", "50% of heads and FFN units, shrunk"]
    assert rows[0][3] == "heads [4, 4], FFN units [64, 64]"
    assert rows[1][3] == "heads [2, 2], FFN units [32, 32]"
    # Per block: q/k/v/out lose 2 heads of 8 (3 * 32*16 + 3 * 16 + 16*32) and the FFN
    # 32 units (32*32 + 32 + 32*32).
    per_block = 3 * 32 * 16 + 3 * 16 + 16 * 32 + 32 * 32 + 32 + 32 * 32
    assert rows[0][2] - rows[1][2] == 2 * per_block
    assert all(0.0 <= row[1] <= 1.0 for row in rows)
