"""SSIMULACRA 2 (Cloudinary / libjxl, Sneyers 2023) through the ``ssimulacra2`` package, a
NumPy/SciPy port of libjxl's ``ssimulacra2`` tool (XYB colour space, six scales, SSIM and
edge-difference maps, the tool's trained weights and final mapping).

The package reads image files; each pair is handed to it as uncompressed 8-bit RGB BMPs in
memory, so it sees exactly the pixels mpq holds.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa

from mpq.components import Metric
from mpq.registry import register

MIN_SIDE = 8  # libjxl's tool refuses smaller images; the port would score them 100 (no scale computed)


def bmp(pixels: np.ndarray) -> io.BytesIO:
    import PIL.Image

    buf = io.BytesIO()
    PIL.Image.fromarray(pixels).save(buf, format="BMP")
    buf.seek(0)
    return buf


@register("metric", "ssimulacra2")
class SSIMULACRA2(Metric):
    """SSIMULACRA 2 on 8-bit sRGB: 100 for identical images, higher is better.

    About 90 is visually lossless, 70 high quality, 50 medium, 30 low; very poor images score
    below 0. Null for images under 8 pixels a side."""

    columns = {"ssimulacra2": pa.float64()}

    def compute(self, references, tests):
        from ssimulacra2 import compute_ssimulacra2

        return [
            {"ssimulacra2": float(compute_ssimulacra2(bmp(r.pixels), bmp(t.pixels))) if min(r.height, r.width) >= MIN_SIDE else None}
            for r, t in zip(references, tests)
        ]
