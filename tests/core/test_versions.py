"""o2o.core.versions: installed distributions' versions, None for one not installed."""

from __future__ import annotations

from importlib import metadata

from o2o.core.versions import package_version, package_versions


def test_installed_and_missing_distributions():
    assert package_version("o2o") == metadata.version("o2o")
    assert package_version("hydra-core") == metadata.version("hydra-core")  # the distribution's name, not the module's
    assert package_version("o2o-no-such-distribution") is None


def test_versions_keep_the_order_given():
    got = package_versions(["numpy", "o2o-no-such-distribution", "o2o"])
    assert list(got) == ["numpy", "o2o-no-such-distribution", "o2o"]
    assert got["o2o-no-such-distribution"] is None and got["numpy"] == metadata.version("numpy")
