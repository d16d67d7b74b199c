"""LPIPS (Zhang et al. 2018) through the ``lpips`` package (AlexNet or VGG), inputs scaled to [-1, 1]."""

from __future__ import annotations

import functools
import warnings
from typing import ClassVar, Literal

import pyarrow as pa

from mpq.components import Metric, Options
from mpq.metrics.fidelity import by_shape
from mpq.registry import register


class LPIPSOptions(Options):
    # "random" builds the same network with a random backbone (lpips' pnet_rand): only for
    # offline pipeline checks; such rows are marked in the pipeline_check column.
    backbone: Literal["pretrained", "random"] = "pretrained"


@functools.cache
def load_lpips(net: str, random_backbone: bool):
    import lpips
    import torch

    if random_backbone:
        torch.manual_seed(0)  # the same "random" network in every process
    try:
        with warnings.catch_warnings():  # lpips still passes torchvision's deprecated `pretrained=`
            warnings.simplefilter("ignore", UserWarning)
            return lpips.LPIPS(net=net, pnet_rand=random_backbone, verbose=False).eval()
    except (OSError, RuntimeError) as exc:
        from mpq.sources.hf import offline_hint

        raise offline_hint("checkpoint", f"torchvision {net} backbone for LPIPS", exc) from exc


@register("metric", "lpips")
class LPIPS(Metric):
    """LPIPS with the AlexNet backbone (the authors' default); column ``lpips``."""

    Options = LPIPSOptions
    lower_better = True
    net: ClassVar[str] = "alex"
    columns = {"lpips": pa.float64()}

    def __init__(self, options=None, device="cpu"):
        super().__init__(options, device)
        if self.options.backbone == "random":
            self.pipeline_check = f"lpips {self.net} with a random backbone: values mean nothing"

    def compute(self, references, tests):
        net = load_lpips(self.net, self.options.backbone == "random").to(self.device)
        values = by_shape(references, tests, lambda a, b: net(a / 127.5 - 1.0, b / 127.5 - 1.0), self.device)
        (column,) = self.columns
        return [{column: v} for v in values]


@register("metric", "lpips_vgg")
class LPIPSVGG(LPIPS):
    """LPIPS with the VGG-16 backbone; its own column, so both can be in one job."""

    net = "vgg"
    columns = {"lpips_vgg": pa.float64()}
