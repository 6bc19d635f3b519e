"""COCO-C's corruptions: the old imagecorruptions package working on current numpy / scikit-image, seeded per image."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image

from sightbeyond.tasks.corruptions import CORRUPTIONS, _imagecorruptions, corrupt


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))


def test_every_corruption_runs_and_reruns_identically(image):
    assert _imagecorruptions().get_corruption_names("all") == list(CORRUPTIONS)  # the names params.yaml is checked against
    assert len(CORRUPTIONS) == 19
    assert "pkg_resources" not in sys.modules or sys.modules["pkg_resources"].__spec__ is not None  # no stand-in left
    for name in CORRUPTIONS:
        for severity in (1, 3, 5):
            a = corrupt(image, name, severity, seed=42, key="COCO_val2014_1.jpg")
            b = corrupt(image, name, severity, seed=42, key="COCO_val2014_1.jpg")
            assert a.size == image.size and a.mode == "RGB"
            assert np.array_equal(np.asarray(a), np.asarray(b)), (name, severity)


def test_noise_depends_on_the_seed_and_image_not_on_order(image):
    first = np.asarray(corrupt(image, "gaussian_noise", 3, seed=42, key="a.jpg"))
    corrupt(image, "gaussian_noise", 3, seed=42, key="b.jpg")
    assert np.array_equal(first, np.asarray(corrupt(image, "gaussian_noise", 3, seed=42, key="a.jpg")))
    assert not np.array_equal(first, np.asarray(corrupt(image, "gaussian_noise", 3, seed=42, key="b.jpg")))
    assert not np.array_equal(first, np.asarray(corrupt(image, "gaussian_noise", 3, seed=43, key="a.jpg")))


def test_severity_grows(image):
    spread = [np.asarray(corrupt(image, "contrast", s, seed=0, key="x")).std() for s in (1, 3, 5)]
    assert spread[0] > spread[1] > spread[2]
    bright = [np.asarray(corrupt(image, "brightness", s, seed=0, key="x")).mean() for s in (1, 3, 5)]
    assert bright[0] < bright[1] < bright[2]
    with pytest.raises(ValueError, match="unknown corruption 'rain'"):
        corrupt(image, "rain", 1, seed=0, key="x")
