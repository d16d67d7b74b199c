"""Embedded samples that ship with a dependency: usable offline, on any fresh machine."""

from __future__ import annotations

from typing import Literal

from mpq.components import Options, Sample, Source
from mpq.media import image_from_array
from mpq.registry import register

# Real, lossless images shipped in scikit-image's wheel. camera is grayscale and logo is
# RGBA: they exercise the documented conversions to RGB.
SKIMAGE_PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "logo")


class SamplesOptions(Options):
    samples: Literal["skimage"]
    names: list[str] | None = None  # default: every photo in SKIMAGE_PHOTOS


@register("source", "samples")
class EmbeddedSamples(Source):
    """scikit-image's photographs, labelled by their own name."""

    Options = SamplesOptions

    def ids(self) -> list[str]:
        names = self.options.names or list(SKIMAGE_PHOTOS)
        unknown = [n for n in names if n not in SKIMAGE_PHOTOS]
        if unknown:
            raise ValueError(f"unknown scikit-image photo(s) {unknown}; valid choices: {', '.join(SKIMAGE_PHOTOS)}")
        return names

    def load(self, sample_id: str) -> Sample:
        from skimage import data

        img = image_from_array(getattr(data, sample_id)())
        return Sample(sample_id, img.pixels, target=sample_id, conversion=img.conversion)

    def describe(self) -> str:
        import skimage

        return f"skimage.data (scikit-image {skimage.__version__})"
