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
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        prunemix.nope  # noqa: B018
