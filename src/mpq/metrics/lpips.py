"""LPIPS (Zhang et al. 2018) through the ``lpips`` package, inputs scaled to [-1, 1]."""

from __future__ import annotations

import functools
import warnings
from typing import Literal

import numpy as np
import pyarrow as pa

from mpq.components import Metric, Options, offline_hint
from mpq.registry import register
from mpq.torchhub import TorchHubCheckpoint


class LPIPSOptions(Options):
    net: Literal["alex", "vgg"] = "alex"
    # "random" builds the same network with a random backbone (lpips' pnet_rand): only for
    # offline pipeline checks; such rows are marked in the pipeline_check column.
    backbone: Literal["pretrained", "random"] = "pretrained"


def backbone_name(net: str) -> str:
    return f"torchvision {net} backbone for LPIPS"


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
        raise offline_hint("checkpoint", backbone_name(net), exc) from exc


def to_lpips_tensor(images: list[np.ndarray]):
    """uint8 (H, W, 3) → float (N, 3, H, W) in [-1, 1], as lpips expects."""
    import torch

    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


@register("metric", "lpips")
class LPIPS(Metric):
    Options = LPIPSOptions
    lower_better = True
    columns = {"lpips": pa.float64()}

    def __init__(self, options=None, device="cpu"):
        super().__init__(options, device)
        if self.options.backbone == "random":
            self.pipeline_check = f"lpips {self.options.net} with a random backbone: values mean nothing"

    def assets(self):
        if self.options.backbone == "random":
            return []
        from torchvision import models

        # lpips builds torchvision's alexnet / vgg16 with their ImageNet weights; its own
        # linear layers ship in its wheel.
        weights = {"alex": models.AlexNet_Weights, "vgg": models.VGG16_Weights}[self.options.net].IMAGENET1K_V1
        return [TorchHubCheckpoint(backbone_name(self.options.net), weights.url)]

    def compute(self, references, tests):
        import torch

        net = load_lpips(self.options.net, self.options.backbone == "random").to(self.device)
        # Images in a batch can differ in size: group by shape so each group is one forward pass.
        by_shape: dict[tuple, list[int]] = {}
        for i, r in enumerate(references):
            by_shape.setdefault(r.shape, []).append(i)
        values = [0.0] * len(references)
        with torch.inference_mode():
            for idx in by_shape.values():
                ref = to_lpips_tensor([references[i] for i in idx]).to(self.device)
                test = to_lpips_tensor([tests[i] for i in idx]).to(self.device)
                d = net(ref, test).flatten().tolist()
                for i, v in zip(idx, d):
                    values[i] = float(v)
        return [{"lpips": v} for v in values]
