"""Inputs and failures that used to kill a run: they cost one error row, or nothing."""

import numpy as np
import pytest
from test_segment import tiny_segformer  # noqa: F401  (a fixture)

from mpq import registry

# Shapes an image processor that guesses the channel axis takes for channels-first.
TINY_SHAPES = [(1, 1, 3), (3, 1, 3), (1, 3, 3), (3, 3, 3)]


def task(name: str, **options):
    cls = registry.get("task", name)
    t = cls(cls.Options(**options), "cpu", "fp32")
    t.load()
    return t


def test_classifier_takes_images_of_one_pixel_and_other_tiny_shapes():
    t = task("classify", model="builtin:tiny-vit")
    images = [np.full(shape, 100, np.uint8) for shape in TINY_SHAPES]
    rows = t.predict(images, ["cat"] * len(images))
    assert len(rows) == len(images) and all(r["prediction"] for r in rows)


def test_segmenter_takes_images_of_one_pixel_and_other_tiny_shapes(tiny_segformer):  # noqa: F811
    t = task("segment", model=tiny_segformer)
    images = [np.full(shape, 100, np.uint8) for shape in TINY_SHAPES]
    rows = t.predict(images, [np.ones(s[:2], np.uint8) for s in TINY_SHAPES])  # class 1: valid after reduce_labels
    assert [r["pixels_valid"] for r in rows] == [s[0] * s[1] for s in TINY_SHAPES]
