"""Embedded samples that ship with a dependency: usable offline, on any fresh machine."""

from __future__ import annotations

import functools
from typing import Literal

import numpy as np
from pydantic import Field

from mpq.components import ClassTarget, Options, Sample, Source
from mpq.media import RGBImage, image_from_array
from mpq.registry import register

# Real, lossless images shipped in scikit-image's wheel. camera is grayscale and logo is
# RGBA: they exercise the documented conversions to RGB.
SKIMAGE_PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "logo")
COPY_SEP = "~"


class SamplesOptions(Options):
    samples: Literal["skimage"]
    names: list[str] | None = None  # default: every photo in SKIMAGE_PHOTOS
    # For benchmarks at scale: each photo this many times; copy k > 0 is a deterministic
    # variant (flips, horizontal shift) with its own sample id "name~k". Not independent data.
    repeat: int = Field(default=1, ge=1)


@functools.cache
def photo(name: str) -> RGBImage:
    """Read and converted once per process: repeated samples share it."""
    from skimage import data

    return image_from_array(getattr(data, name)())


def variant(pixels: np.ndarray, k: int) -> np.ndarray:
    """Copy k of a photo (a new array): flipped left-right if bit 0 of k, upside down if
    bit 1, and shifted (circularly) right by 7 × (k // 4) pixels; copy 0 is the photo itself."""
    out = pixels
    if k & 1:
        out = out[:, ::-1]
    if k & 2:
        out = out[::-1]
    return np.roll(out, 7 * (k // 4), axis=1)  # np.roll always copies


@register("source", "samples")
class EmbeddedSamples(Source):
    """scikit-image's photographs, labelled by their own name."""

    Options = SamplesOptions

    def ids(self) -> list[str]:
        names = self.options.names or list(SKIMAGE_PHOTOS)
        unknown = [n for n in names if n not in SKIMAGE_PHOTOS]
        if unknown:
            raise ValueError(f"unknown scikit-image photo(s) {unknown}; valid choices: {', '.join(SKIMAGE_PHOTOS)}")
        # Copy-major, so that a limit takes a mix of photos.
        return list(names) + [f"{n}{COPY_SEP}{k}" for k in range(1, self.options.repeat) for n in names]

    def load(self, sample_id: str) -> Sample:
        name, _, copy = sample_id.partition(COPY_SEP)
        img = photo(name)
        return Sample(sample_id, variant(img.pixels, int(copy or 0)), target=name, conversion=img.conversion)

    def classes(self) -> list[ClassTarget] | None:
        return [ClassTarget(n) for n in sorted(set(self.options.names or SKIMAGE_PHOTOS))]

    def describe(self) -> str:
        import skimage

        return f"skimage.data (scikit-image {skimage.__version__})"
