import importlib
import inspect

import pytest

import prunemix


def test_all_is_sorted_and_every_name_resolves():
    assert list(prunemix.__all__) == sorted(prunemix.__all__)
    for name in prunemix.__all__:
        assert getattr(prunemix, name) is not None, name


def test_public_callables_have_docstrings_and_type_hints():
    for name in prunemix.__all__:
        obj = getattr(prunemix, name)
        if inspect.isfunction(obj):
            assert obj.__doc__, name
            assert "return" in inspect.get_annotations(obj), name
        elif inspect.isclass(obj):
            assert obj.__doc__, name


@pytest.mark.parametrize("name", sorted(prunemix._MOVED))
def test_names_that_left_the_top_level_still_work_and_say_where_they_went(name):
    home = importlib.import_module(prunemix._MOVED[name])
    with pytest.warns(DeprecationWarning, match=rf"moved to {prunemix._MOVED[name]}\.{name}"):
        assert getattr(prunemix, name) is getattr(home, name)
    assert name not in prunemix.__all__


def test_structured_modules_keep_their_0x_paths():
    import prunemix.graph
    import prunemix.handlers

    assert prunemix.graph is prunemix.structured.graph
    assert prunemix.handlers is importlib.import_module("prunemix.structured.handlers")
    assert importlib.import_module("prunemix.shrink") is \
        importlib.import_module("prunemix.structured.shrink")
    assert callable(prunemix.shrink) and prunemix.shrink is prunemix.structured.shrink
    assert importlib.import_module("prunemix.prune").prune_model is prunemix.prune_model
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        prunemix.nope  # noqa: B018


@pytest.mark.parametrize("make, error, message", [
    (lambda: prunemix.ConstantSparsity(1.5, 0), ValueError,
     "`target_sparsity` must be a fraction in [0, 1), not a percentage. "
     "Received: target_sparsity=1.5"),
    (lambda: prunemix.ConstantSparsity(0.5, 0, frequency=0), ValueError,
     "`frequency` must be a positive int. Received: frequency=0"),
    (lambda: prunemix.NMSparsity(2.5, 4), ValueError,
     "NMSparsity: `n` must be a positive int. Received: n=2.5"),
    (lambda: prunemix.InputBlockSparsity(0), ValueError,
     "InputBlockSparsity: `size` must be a positive int. Received: size=0"),
    (lambda: prunemix.ChannelGroups(round_to=True), ValueError,
     "ChannelGroups: `round_to` must be a positive int. Received: round_to=True"),
    (lambda: prunemix.ChannelGroups(norm="l3"), ValueError,
     "ChannelGroups: `norm` must be one of 'l1', 'l2'. Received: norm='l3'"),
    (lambda: prunemix.StructuredSparsity(norm="max"), ValueError,
     "StructuredSparsity: `norm` must be one of 'l1', 'l2'. Received: norm='max'"),
    (lambda: prunemix.BlockSparsity((2, 2), pooling="sum"), ValueError,
     "BlockSparsity: `pooling` must be one of 'avg', 'max'. Received: pooling='sum'"),
    (lambda: prunemix.Rule("*", max_sparsity=2.0), ValueError,
     "Rule: `max_sparsity` must be a fraction in [0, 1], not a percentage. "
     "Received: max_sparsity=2.0"),
    (lambda: prunemix.PruningSummaries("/tmp/x", update_freq=0), ValueError,
     "PruningSummaries: `update_freq` must be 'epoch' or a positive int (batches). "
     "Received: update_freq=0"),
])
def test_argument_errors_share_one_wording(make, error, message):
    with pytest.raises(error) as caught:
        make()
    assert str(caught.value) == message
