from fractions import Fraction

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from prunemix import masks


def check_exact_mask(weights, sparsity, mask):
    flat_w, flat_m = np.abs(weights).ravel(), np.asarray(mask).ravel()
    k = round(sparsity * flat_w.size)
    assert (~flat_m).sum() == k
    if 0 < k < flat_w.size:
        # Every pruned magnitude is <= every kept one.
        assert flat_w[~flat_m].max() <= flat_w[flat_m].min()


@pytest.mark.parametrize("shape", [(1,), (7,), (5, 3), (3, 3, 4, 8), (1000,)])
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.25, 0.5, 0.875, 0.95, 0.999])
def test_exact_zero_count(shape, sparsity):
    weights = np.random.default_rng(1).standard_normal(shape).astype("float32")
    check_exact_mask(weights, sparsity, masks.magnitude_mask(weights, sparsity))


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(
        st.floats(-4, 4, width=32, allow_subnormal=False), min_size=1, max_size=64
    ),
    sparsity=st.floats(0, 0.999),
)
def test_exact_zero_count_with_any_ties(values, sparsity):
    weights = np.array(values, dtype="float32")
    mask = masks.magnitude_mask(weights, sparsity).numpy()
    check_exact_mask(weights, sparsity, mask)


def test_ties_are_pruned_in_flat_order():
    weights = np.array([0.5, 0.0, 0.5, 0.0, 0.5, 0.0, 2.0, 0.5], dtype="float32")
    # 5 zeros: the three 0.0 entries, then the first two 0.5 entries.
    mask = masks.magnitude_mask(weights, 5 / 8).numpy()
    assert mask.tolist() == [False, False, False, False, True, False, True, True]


def test_already_zero_weights_count_towards_the_target():
    weights = np.zeros(10, "float32")
    weights[:3] = [3.0, -2.0, 1.0]
    assert (~masks.magnitude_mask(weights, 0.8).numpy()).sum() == 8


def test_pruned_count_rounds_the_exact_product_half_to_even():
    # The sparsity read to six decimals, times the size, rounded half to even
    # in exact arithmetic: 0.7 * 15 = 10.5 gives 10 (Python's float64 product,
    # 10.500000000000002, would round to 11).
    for size in [*range(1, 60), 216, 999_999, 10**6 + 1, 2**31 - 1]:
        for sparsity in np.linspace(0, 0.99, 100):
            want = round(Fraction(f"{sparsity:.6f}") * size)
            assert int(masks.pruned_count(float(sparsity), size)) == want, (sparsity, size)
    assert int(masks.pruned_count(0.7, 15)) == 10


@pytest.mark.parametrize("sparsity, size, want", [
    (0.4375, 216, 94), (0.4375, 232, 102), (0.5, 7, 4), (0.5, 9, 4), (0.25, 10, 2),
    (0.125, 12, 2), (0.1, 5, 0), (0.1, 15, 2), (0.015625, 32, 0), (0.015625, 96, 2),
    (1.0, 2**31 - 1, 2**31 - 1), (0.5, 2**31 - 1, 2**30),
])
def test_pruned_count_at_half_boundaries(sparsity, size, want):
    assert int(masks.pruned_count(sparsity, size)) == want
    # The same in a float32 tensor (JAX without x64) and in float64.
    for dtype in ("float32", "float64"):
        count = masks.pruned_count(keras.ops.convert_to_tensor(sparsity, dtype), size)
        assert int(count) == want, dtype


def test_nan_counts_as_largest():
    weights = np.array([np.nan, 0.1, 0.2, 0.3], dtype="float32")
    assert masks.magnitude_mask(weights, 0.75).numpy().tolist() == [True, False, False, False]


def test_float16_and_float64_weights():
    for dtype in ("float16", "float64"):
        weights = np.random.default_rng(2).standard_normal((8, 8)).astype(dtype)
        check_exact_mask(weights, 0.6, masks.magnitude_mask(weights, 0.6))


def test_same_mask_inside_graph_and_xla():
    weights = tf.constant(np.random.default_rng(3).standard_normal((64, 33)), tf.float32)
    eager = masks.magnitude_mask(weights, 0.7)
    for jit in (False, True):
        traced = tf.function(masks.magnitude_mask, jit_compile=jit)(weights, tf.constant(0.7))
        np.testing.assert_array_equal(traced.numpy(), eager.numpy())


def test_matches_a_full_sort():
    weights = np.random.default_rng(4).standard_normal(5000).astype("float32")
    order = np.argsort(np.abs(weights), kind="stable")
    want = np.ones(5000, bool)
    want[order[: round(0.83 * 5000)]] = False
    np.testing.assert_array_equal(masks.magnitude_mask(weights, 0.83).numpy(), want)


def test_ties_across_many_blocks_are_pruned_in_flat_order():
    weights = np.ones(5000, "float32")
    weights[::7] = 3.0  # 715 larger entries keep their place
    mask = masks.magnitude_mask(weights, 0.6).numpy()
    k = round(0.6 * 5000)
    ones = np.flatnonzero(weights == 1.0)
    want = np.ones(5000, bool)
    want[ones[:k]] = False
    np.testing.assert_array_equal(mask, want)


# -- fuzzed against a numpy reference, NaN and ties included -------------------------

# Few distinct values (exact in float32) so ties are common; NaN and inf too.
VALUES = st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.0, 3.0, -3.0, np.inf, -np.inf, np.nan])


def reference_order(scores):
    """Flat indices from lowest to highest rank: |x| ascending, NaN last, ties by index."""
    flat = np.asarray(scores, np.float32).ravel()
    magnitude = np.nan_to_num(np.abs(flat), nan=0.0, posinf=np.inf)
    return np.lexsort((np.arange(flat.size), magnitude, np.isnan(flat)))


def reference_lowest_k(scores, k):
    keep = np.ones(np.asarray(scores).size, bool)
    keep[reference_order(scores)[:k]] = False
    return keep.reshape(np.shape(scores))


@settings(max_examples=60, deadline=None)
@given(st.lists(VALUES, min_size=1, max_size=40), st.data())
def test_lowest_k_mask_matches_numpy_reference(values, data):
    scores = np.array(values, np.float32)
    k = data.draw(st.integers(0, scores.size))
    np.testing.assert_array_equal(masks.lowest_k_mask(scores, k).numpy(),
                                  reference_lowest_k(scores, k))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(VALUES, min_size=1, max_size=30), min_size=1, max_size=5), st.data())
def test_lowest_k_masks_selects_many_weights_like_one_each(groups, data):
    scores = [np.array(v, np.float32).reshape(-1, 1) if i % 2 else np.array(v, np.float32)
              for i, v in enumerate(groups)]
    ks = [data.draw(st.integers(0, s.size)) for s in scores]
    got = masks.lowest_k_masks([tf.constant(s) for s in scores], ks)
    for score, k, mask in zip(scores, ks, got, strict=True):
        assert mask.shape == score.shape
        np.testing.assert_array_equal(mask.numpy().ravel(), reference_lowest_k(score.ravel(), k))


def test_lowest_k_masks_compiles_once_for_many_sizes():
    sizes = [5, 17, 300, 1000, 4097]
    rng = np.random.default_rng(0)
    scores = [tf.constant(rng.normal(size=n).astype("float32")) for n in sizes]
    before = masks._lowest_k_masks_xla.traces
    for shift in range(3):  # same sizes, other k: no new trace
        got = masks.lowest_k_masks(scores, [n // 2 + shift for n in sizes])
        assert [int((~m.numpy()).sum()) for m in got] == [n // 2 + shift for n in sizes]
    assert masks._lowest_k_masks_xla.traces - before <= 1
