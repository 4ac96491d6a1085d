"""Interface names: what the kernel accepts, and nothing a shell or a rule could misread."""

import pytest

from plugin.links import valid_name


@pytest.mark.parametrize("name", ["br0", "cni-podman1", "nerdctl0", "buildkit0", "a", "x_y.z", "a" * 15])
def test_valid_names(name):
    assert valid_name(name)


@pytest.mark.parametrize("name", ["", "a" * 16, "-x", ".x", "br+", "br!", "b r", "b\tr", 'b"', "b'", "b/r", "b:r", None, 3])
def test_invalid_names(name):
    assert not valid_name(name)
