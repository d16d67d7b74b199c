"""Embedded samples that ship with a dependency: usable offline, on any fresh machine.

- ``skimage``: scikit-image's photographs (and its logo), labelled by their own name.
- ``photos``: every photograph that the installed packages ship: scikit-image's, the
  one in matplotlib's sample data and scikit-learn's two; no ImageNet labels (a task
  is scored by its ``agreement`` with its answer on the uncompressed photo).
"""

from __future__ import annotations

import functools
from typing import Literal

import numpy as np
from pydantic import Field

from mpq.components import ClassTarget, Options, Sample, Source
from mpq.media import SKIMAGE_PHOTOS, Image, image_from_array
from mpq.registry import register

COPY_SEP = "~"


def _skimage(name: str):
    def load():
        from skimage import data

        return data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)()

    return load


def _matplotlib(name: str):
    def load():
        from matplotlib import cbook
        from PIL import Image

        with Image.open(cbook.get_sample_data(name)) as im:
            return np.asarray(im)

    return load


def _sklearn(name: str):
    def load():
        from sklearn.datasets import load_sample_image

        return load_sample_image(name)

    return load


# The real photographs (camera, microscope, telescope, fundus, scanner) in the wheels of
# scikit-image, matplotlib and scikit-learn (a dependency of librosa); left out: drawings,
# logos, masks, synthetic images and an MRI volume.
PACKAGED_PHOTOS = {
    **{f"skimage/{n}": _skimage(n) for n in (
        "astronaut", "brick", "camera", "cell", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
        "hubble_deep_field", "immunohistochemistry", "microaneurysms", "moon", "motorcycle", "page", "retina",
        "rocket", "text",
    )},
    "matplotlib/grace_hopper": _matplotlib("grace_hopper.jpg"),
    "sklearn/china": _sklearn("china.jpg"),
    "sklearn/flower": _sklearn("flower.jpg"),
}


class SamplesOptions(Options):
    samples: Literal["skimage", "photos"]
    names: list[str] | None = Field(default=None, description="photos by name (default: every photo of the set)")
    repeat: int = Field(default=1, ge=1, description=(
        'each photo this many times, for benchmarks at scale: copy k > 0 is a deterministic variant (flips, '
        'horizontal shift) with its own sample id "name~k"; not independent data'))


@functools.cache
def photo(name: str) -> Image:
    """Read and converted once per process: repeated samples share it."""
    if name in PACKAGED_PHOTOS:
        return image_from_array(PACKAGED_PHOTOS[name]())
    from skimage import data

    return image_from_array(getattr(data, name)())


def variant(img: Image, k: int) -> Image:
    """Copy k of a photo (new pixels): flipped left-right if bit 0 of k, upside down if
    bit 1, and shifted (circularly) right by 7 × (k // 4) pixels; copy 0 is the photo itself."""
    out = img.pixels
    if k & 1:
        out = out[:, ::-1]
    if k & 2:
        out = out[::-1]
    return Image(np.roll(out, 7 * (k // 4), axis=1), img.conversion, img.orientation)  # np.roll always copies


@register("source", "samples")
class EmbeddedSamples(Source):
    """Photographs shipped by installed packages, offline: scikit-image's (labelled) or all 22.

    `skimage`: scikit-image's, labelled by their own name; `photos`: every packaged photograph, unlabelled."""

    Options = SamplesOptions

    @property
    def choices(self) -> tuple[str, ...]:
        return SKIMAGE_PHOTOS if self.options.samples == "skimage" else tuple(PACKAGED_PHOTOS)

    def ids(self) -> list[str]:
        names = self.options.names or list(self.choices)
        unknown = [n for n in names if n not in self.choices]
        if unknown:
            raise ValueError(f"unknown {self.options.samples} photo(s) {unknown}; valid choices: {', '.join(self.choices)}")
        # Copy-major, so that a limit takes a mix of photos.
        return list(names) + [f"{n}{COPY_SEP}{k}" for k in range(1, self.options.repeat) for n in names]

    def load(self, sample_id: str) -> Sample:
        name, _, copy = sample_id.partition(COPY_SEP)
        img = photo(name)
        target = name if self.options.samples == "skimage" else None
        return Sample(sample_id, variant(img, int(copy or 0)), target=target)

    def classes(self) -> list[ClassTarget] | None:
        if self.options.samples != "skimage":  # packaged photos carry no labels
            return None
        return [ClassTarget(n) for n in sorted(set(self.options.names or SKIMAGE_PHOTOS))]

    def describe(self) -> str:
        from importlib.metadata import version

        if self.options.samples == "skimage":
            return f"skimage.data (scikit-image {version('scikit-image')})"
        packages = ("scikit-image", "matplotlib", "scikit-learn")
        return "photographs shipped by " + ", ".join(f"{p} {version(p)}" for p in packages)
