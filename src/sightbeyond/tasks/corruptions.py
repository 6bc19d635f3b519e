"""COCO-C: ImageNet-C's corruptions (the `imagecorruptions` package) applied to the captioning images, seeded per image."""

from __future__ import annotations

import functools
import importlib
import os
import sys
import types
import warnings
import zlib

import numpy as np
from PIL import Image


@functools.cache
def _imagecorruptions():
    # imagecorruptions 1.1.2 predates current numpy, scikit-image and setuptools, and site-packages stays untouched:
    # it imports `pkg_resources` (gone from setuptools >= 81) only for `resource_filename`, so a stand-in is present
    # just while it imports; it passes `multichannel` to skimage's gaussian (`channel_axis` since scikit-image 0.19)
    # and uses `np.float_` (removed in numpy 2), so its module globals `gaussian` and `np` are rebound to shims; and its
    # impulse noise comes from skimage's own unseeded generator, so `sk` is too, with one seeded from numpy's.
    stub = types.ModuleType("pkg_resources")
    stub.resource_filename = lambda module, path: os.path.join(
        os.path.dirname(importlib.import_module(module).__file__), path)
    real = sys.modules.get("pkg_resources")
    sys.modules["pkg_resources"] = stub
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # its `scipy.ndimage.interpolation` import
            import imagecorruptions
            from imagecorruptions import corruptions
    finally:
        if real is None:
            del sys.modules["pkg_resources"]
        else:
            sys.modules["pkg_resources"] = real
    import skimage
    from skimage.filters import gaussian

    def gaussian_compat(image, sigma=1, multichannel=None, **kwargs):
        if multichannel is not None:
            kwargs["channel_axis"] = -1 if multichannel else None
        return gaussian(image, sigma=sigma, **kwargs)

    numpy_compat = types.ModuleType("numpy")
    numpy_compat.__dict__.update(vars(np))
    numpy_compat.float_ = np.float64
    def random_noise_seeded(image, **kwargs):
        return skimage.util.random_noise(image, rng=np.random.randint(2**31), **kwargs)

    corruptions.gaussian = gaussian_compat
    corruptions.np = numpy_compat
    corruptions.sk = types.SimpleNamespace(color=skimage.color, util=types.SimpleNamespace(random_noise=random_noise_seeded))
    return imagecorruptions


def corruption_names() -> list[str]:
    return _imagecorruptions().get_corruption_names("all")


def corrupt(image: Image.Image, corruption: str, severity: int, *, seed: int, key: str) -> Image.Image:
    """`image` corrupted; the noise is drawn from a seed made of `seed`, the cell and `key` (the image's name), so a
    rerun, or the same image in another order or subset, gets the same pixels."""
    lib = _imagecorruptions()
    if corruption not in corruption_names():
        raise ValueError(f"unknown corruption {corruption!r}; imagecorruptions has {corruption_names()}")
    # imagecorruptions draws from numpy's global generator
    np.random.seed(zlib.crc32(f"{seed}/{corruption}/{severity}/{key}".encode()))
    return Image.fromarray(lib.corrupt(np.asarray(image.convert("RGB")), severity=severity, corruption_name=corruption))
