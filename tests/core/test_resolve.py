"""o2o.core.resolve: objects named by dotted paths, imported only from inside the allowed package."""

from __future__ import annotations

import pytest

from o2o.core.resolve import resolve

RULE = "it must live in 'o2o.core.' (e.g. 'o2o.core.hashing.sha256_file')"


def test_a_function_and_a_class_inside_the_prefix_resolve():
    from o2o.core.hashing import sha256_file

    assert resolve("o2o.core.hashing.sha256_file", "o2o.core.", what="hasher", rule=RULE) is sha256_file
    assert (
        resolve("collections.OrderedDict", "collections", base=dict, what="mapping", rule=RULE).__name__
        == "OrderedDict"
    )


@pytest.mark.parametrize(
    "path", ["os.system", "builtins.eval", "o2o.corex.evil.run", "o2o.core", "o2o.core.x.", "", None, 3]
)
def test_a_path_outside_the_prefix_is_refused_before_anything_is_imported(path):
    with pytest.raises(ValueError, match=r"^hasher .* refused: it must live in 'o2o.core.'"):
        resolve(path, "o2o.core.", what="hasher", rule=RULE)


def test_the_package_itself_is_not_inside_a_prefix_that_ends_with_a_dot():
    # 'o2o.core.resolve' would name the module o2o.core: only modules below the prefix count.
    with pytest.raises(ValueError, match="refused"):
        resolve("o2o.core.resolve", "o2o.core.", what="hasher", rule=RULE)


@pytest.mark.parametrize("path", ["o2o.core.nope.fn", "o2o.core.hashing.nope"])
def test_a_missing_module_or_attribute_is_not_found(path):
    with pytest.raises(ValueError, match=rf"^hasher '{path}' not found: "):
        resolve(path, "o2o.core.", what="hasher", rule=RULE)


def test_the_wrong_kind_of_object_is_named():
    with pytest.raises(ValueError, match=r"^hasher 'o2o.core.hashing.BLOCK' is not callable$"):
        resolve("o2o.core.hashing.BLOCK", "o2o.core.", what="hasher", rule=RULE)
    with pytest.raises(ValueError, match=r"^mapping 'collections.deque' is not a subclass of dict$"):
        resolve("collections.deque", "collections", base=dict, what="mapping", rule=RULE)
    with pytest.raises(ValueError, match=r"is not an ordered mapping$"):
        resolve(
            "collections.namedtuple", "collections", base=dict, what="mapping", rule=RULE, kind="an ordered mapping"
        )
