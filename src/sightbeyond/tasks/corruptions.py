"""COCO-C: ImageNet-C's corruptions (the `imagecorruptions` package) applied to the captioning images, seeded per image."""

from __future__ import annotations

import functools
import importlib
import os
import statistics
import sys
import types
import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from sightbeyond.tasks import captions


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


# imagecorruptions' get_corruption_names("all"), spelled here so that validating params.yaml does not import it (and
# OpenCV, which needs libGL, with it); tests/test_corruptions.py holds the two equal
CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
               "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
               "speckle_noise", "gaussian_blur", "spatter", "saturate")


def corrupt(image: Image.Image, corruption: str, severity: int, *, seed: int, key: str) -> Image.Image:
    """`image` corrupted; the noise is drawn from a seed made of `seed`, the cell and `key` (the image's name), so a
    rerun, or the same image in another order or subset, gets the same pixels."""
    lib = _imagecorruptions()
    if corruption not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {corruption!r}; imagecorruptions has {list(CORRUPTIONS)}")
    # imagecorruptions draws from numpy's global generator
    np.random.seed(zlib.crc32(f"{seed}/{corruption}/{severity}/{key}".encode()))
    return Image.fromarray(lib.corrupt(np.asarray(image.convert("RGB")), severity=severity, corruption_name=corruption))


# The eval_mm stage's family COCO-C (see mme.py): COCO's test images, corrupted; `cfg` is params.eval_mm.
def inputs(cfg) -> list[Path]:
    return captions.COCO.inputs(cfg)


def read(cfg):
    return captions.COCO.read(cfg)


def evaluate(ask, data, cfg) -> dict[str, float]:
    """Every corruption x severity cell in one generation pass (full batches), scored cell by cell."""
    import mlflow

    images, train = data
    conversation = captions.prompt(cfg, train, "coco_c")
    cells = [(c, s) for c in cfg.corruptions for s in cfg.severities]
    jobs = [(cell, image) for cell in cells for image in images]
    transforms = [lambda img, c=c, s=s, key=image.key: corrupt(img, c, s, seed=cfg.seed, key=key) for (c, s), image in jobs]
    answers = ask([conversation] * len(jobs), [image.path for _, image in jobs], transforms=transforms,
                  max_new_tokens=cfg.caption_max_new_tokens, desc="COCO-C")
    got: dict[str, dict[str, str]] = {f"{c}_{s}": {} for c, s in cells}
    for ((c, s), image), answer in zip(jobs, answers):
        got[f"{c}_{s}"][image.key] = answer
    scores = captions.cider_scores({i.key: list(i.references) for i in images}, got)
    metrics = {f"coco_c/{cell}/cider": score for cell, (score, _) in scores.items()}
    metrics["coco_c/cider"] = statistics.fmean(score for score, _ in scores.values())
    table: dict[str, list] = {}
    for (c, s), (_, per_image) in zip(cells, scores.values()):
        for column, values in captions.prediction_table(images, got[f"{c}_{s}"], per_image, corruption=[c] * len(images),
                                                        severity=[s] * len(images)).items():
            table.setdefault(column, []).extend(values)
    mlflow.log_table(table, artifact_file="coco_c_predictions.json")
    return metrics


def relative_drop(corrupted: float, clean: float) -> dict[str, float]:
    """COCO-C's CIDEr against the clean COCO's, in percent (Table 5); none when the clean CIDEr is 0."""
    if clean > 0:
        return {"coco_c/relative_drop": 100 * (corrupted - clean) / clean}
    warnings.warn("coco_c/relative_drop not logged: the clean COCO CIDEr is 0", stacklevel=1)
    return {}
