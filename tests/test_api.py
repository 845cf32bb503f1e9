import inspect

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
            assert "return" in inspect.get_annotations(obj) or obj.__name__ in {
                "lowest_k_mask", "magnitude_mask", "pruned_count"
            }, name
        elif inspect.isclass(obj):
            assert obj.__doc__, name
