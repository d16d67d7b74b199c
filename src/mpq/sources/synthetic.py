"""Synthetic images for scale tests and benchmarks: any number, tiny, made from their id.

Not data to study: a smooth gradient plus noise seeded by the sample's index, so a codec
has something photo-like to code. Its ids are made on demand (``id_range``), so a plan of
millions of samples never lists them all.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from mpq.components import Options, Sample, Source
from mpq.media import Image
from mpq.registry import register


class SyntheticOptions(Options):
    synthetic: Literal["images"]
    count: int = Field(default=100, gt=0)
    size: int = Field(default=16, ge=1, le=4096, description="width and height in pixels")


@register("source", "synthetic")
class SyntheticImages(Source):
    """`count` tiny RGB images made from their ids "0", "1", ..., never listed whole (scale tests)."""

    Options = SyntheticOptions

    def ids(self) -> list[str]:
        return self.id_range(0, self.options.count)

    def count(self) -> int:
        return self.options.count

    def id_range(self, start: int, stop: int) -> list[str]:
        return [str(i) for i in range(start, min(stop, self.options.count))]

    def load(self, sample_id: str) -> Sample:
        i, n = int(sample_id), self.options.size
        if not 0 <= i < self.options.count:
            raise ValueError(f"no synthetic image {sample_id!r}: ids are 0..{self.options.count - 1}")
        y, x = np.mgrid[0:n, 0:n]
        base = np.stack([x * 255 / n, y * 255 / n, np.full((n, n), (i * 37) % 256)], axis=-1)
        noise = np.random.default_rng(i).normal(0, 8, base.shape)
        return Sample(sample_id, Image(np.clip(base + noise, 0, 255).astype(np.uint8)))

    def describe(self) -> str:
        return f"synthetic:images/{self.options.count}x{self.options.size}px"
