"""Signal-fidelity metrics computed on 8-bit RGB."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from mpq.components import Metric
from mpq.registry import register


def psnr(reference: np.ndarray, test: np.ndarray, peak: float = 255.0) -> float:
    """PSNR in dB over all pixels and channels; inf for identical inputs."""
    mse = np.mean((reference.astype(np.float64) - test.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10.0 * np.log10(peak**2 / mse))


@register("metric", "psnr")
class PSNR(Metric):
    """PSNR on RGB in [0, 255]."""

    columns = {"psnr": pa.float64()}

    def compute(self, references, tests):
        return [{"psnr": psnr(r, t)} for r, t in zip(references, tests)]
