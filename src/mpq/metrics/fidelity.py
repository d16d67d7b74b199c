"""Signal-fidelity metrics computed on 8-bit RGB: PSNR, SSIM and MS-SSIM."""

from __future__ import annotations

from typing import Callable

import numpy as np
import pyarrow as pa

from mpq.components import Metric
from mpq.media import Image
from mpq.registry import register


def psnr(reference: np.ndarray, test: np.ndarray, peak: float = 255.0) -> float:
    """PSNR in dB over all pixels and channels; inf for identical inputs."""
    mse = np.mean((reference.astype(np.float64) - test.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10.0 * np.log10(peak**2 / mse))


def by_shape(references: list[Image], tests: list[Image], fn: Callable, device: str) -> list[float]:
    """``fn(ref, test)`` on float (N, 3, H, W) tensors in [0, 255], one call per image shape
    (images in a batch can differ in size), returning one value per pair in input order."""
    import torch

    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(references):
        groups.setdefault(r.pixels.shape, []).append(i)
    values = [0.0] * len(references)
    with torch.inference_mode():
        for idx in groups.values():
            ref, test = (
                torch.from_numpy(np.stack([images[i].pixels for i in idx])).permute(0, 3, 1, 2).float().to(device)
                for images in (references, tests)
            )
            for i, v in zip(idx, fn(ref, test).flatten().tolist()):
                values[i] = float(v)
    return values


@register("metric", "psnr")
class PSNR(Metric):
    """PSNR on RGB in [0, 255]."""

    columns = {"psnr": pa.float64()}

    def compute(self, references, tests):
        return [{"psnr": psnr(r.pixels, t.pixels)} for r, t in zip(references, tests)]


# SSIM settings of Wang et al. 2004, as CompressAI and most codec papers use them: an 11-tap
# Gaussian window with sigma 1.5, K = (0.01, 0.03), valid convolution, mean over RGB channels.
WINDOW, SIGMA = 11, 1.5
MS_SSIM_MIN_SIDE = (WINDOW - 1) * 2**4 + 1  # four 2× down-samplings must leave a full window


@register("metric", "ssim")
class SSIM(Metric):
    """SSIM (pytorch_msssim) on RGB in [0, 255], averaged over channels."""

    columns = {"ssim": pa.float64()}

    def compute(self, references, tests):
        from pytorch_msssim import ssim

        fn = lambda a, b: ssim(a, b, data_range=255, size_average=False, win_size=WINDOW, win_sigma=SIGMA)  # noqa: E731
        return [{"ssim": v} for v in by_shape(references, tests, fn, self.device)]


@register("metric", "ms_ssim")
class MSSSIM(Metric):
    """MS-SSIM (pytorch_msssim; 5 scales, weights of Wang et al. 2003) on RGB in [0, 255].
    Needs at least 161 pixels on the shorter side; smaller images get null."""

    columns = {"ms_ssim": pa.float64()}

    def compute(self, references, tests):
        from pytorch_msssim import ms_ssim

        fn = lambda a, b: ms_ssim(a, b, data_range=255, size_average=False, win_size=WINDOW, win_sigma=SIGMA)  # noqa: E731
        big = [i for i, r in enumerate(references) if min(r.height, r.width) >= MS_SSIM_MIN_SIDE]
        values = by_shape([references[i] for i in big], [tests[i] for i in big], fn, self.device)
        out = [{"ms_ssim": None} for _ in references]
        for i, v in zip(big, values):
            out[i]["ms_ssim"] = v
        return out
