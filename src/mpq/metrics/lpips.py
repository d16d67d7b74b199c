"""LPIPS (Zhang et al. 2018) through the ``lpips`` package (AlexNet or VGG), inputs scaled to [-1, 1].

A sample's codec settings all compare against one reference, so the reference's features
are computed once per batch and its coded versions go through the network together: with
five settings that is six forward passes instead of ten. The distance is lpips' own
``LPIPS.forward`` (v0.1, no spatial map) taken apart at that seam, from its own layers.
"""

from __future__ import annotations

import functools
import hashlib
import warnings
from typing import ClassVar, Literal

import numpy as np
import pyarrow as pa

from mpq.components import Metric, Options, offline_hint
from mpq.registry import register
from mpq.torchhub import TorchHubCheckpoint


class LPIPSOptions(Options):
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

    def assets(self):
        if self.options.backbone == "random":
            return []
        from torchvision import models

        # lpips builds torchvision's alexnet / vgg16 with their ImageNet weights; its own
        # linear layers ship in its wheel.
        weights = {"alex": models.AlexNet_Weights, "vgg": models.VGG16_Weights}[self.net].IMAGENET1K_V1
        return [TorchHubCheckpoint(backbone_name(self.net), weights.url)]

    def compute(self, references, tests):
        import torch

        net = load_lpips(self.net, self.options.backbone == "random").to(self.device)
        groups: dict[tuple, list[int]] = {}  # equal references (the rows of one sample), by content
        for i, ref in enumerate(references):
            groups.setdefault((ref.shape, hashlib.blake2b(np.ascontiguousarray(ref).data).digest()), []).append(i)
        values = [0.0] * len(references)
        with torch.inference_mode():
            for idx in groups.values():
                ref = features(net, tensor([references[idx[0]]], self.device))
                for i, v in zip(idx, distance(net, ref, features(net, tensor([tests[i] for i in idx], self.device)))):
                    values[i] = v
        (column,) = self.columns
        return [{column: v} for v in values]


def tensor(images: list[np.ndarray], device: str):
    """HWC uint8 images of one shape → NCHW float in lpips' [-1, 1]."""
    import torch

    return torch.from_numpy(np.stack(images)).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def features(net, x) -> list:
    import lpips

    return [lpips.normalize_tensor(out) for out in net.net.forward(net.scaling_layer(x))]


def distance(net, ref: list, test: list) -> list[float]:
    """LPIPS of each test image (batch) against the one reference, layer by layer."""
    from lpips.lpips import spatial_average

    total = sum(spatial_average(lin((r - t) ** 2), keepdim=True) for lin, r, t in zip(net.lins, ref, test))
    return [float(v) for v in total.flatten().tolist()]


@register("metric", "lpips_vgg")
class LPIPSVGG(LPIPS):
    """LPIPS with the VGG-16 backbone; its own column, so both can be in one job."""

    net = "vgg"
    columns = {"lpips_vgg": pa.float64()}
