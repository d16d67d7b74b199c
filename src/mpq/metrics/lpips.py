"""LPIPS (Zhang et al. 2018) through the ``lpips`` package, inputs scaled to [-1, 1]."""

from __future__ import annotations

import functools
import hashlib
import warnings
from typing import Literal

import numpy as np
import pyarrow as pa

from mpq.components import Metric, Options
from mpq.registry import register


class LPIPSOptions(Options):
    net: Literal["alex", "vgg"] = "alex"
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


def to_lpips_tensor(images: list[np.ndarray], device: str = "cpu"):
    """uint8 (H, W, 3) → float (N, 3, H, W) in [-1, 1], as lpips expects (moved as uint8, then converted)."""
    import torch

    x = torch.from_numpy(np.stack(images)).to(device).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def features(net, x) -> list:
    """LPIPS' unit-normalised backbone features of a batch (the first half of ``LPIPS.forward``)."""
    import lpips

    return [lpips.normalize_tensor(f) for f in net.net(net.scaling_layer(x))]


def distance(net, feats0: list, feats1: list):
    """LPIPS from features: learned weights on squared differences, averaged over space and summed
    over layers (the rest of ``LPIPS.forward``, as lpips.LPIPS builds it: lpips=True, spatial=False)."""
    return sum(net.lins[k]((f0 - f1) ** 2).mean([2, 3]) for k, (f0, f1) in enumerate(zip(feats0, feats1)))


def _digest(image: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(image).data, digest_size=16).digest()


@register("metric", "lpips")
class LPIPS(Metric):
    Options = LPIPSOptions
    lower_better = True
    columns = {"lpips": pa.float64()}

    def __init__(self, options=None, device="cpu"):
        super().__init__(options, device)
        if self.options.backbone == "random":
            self.pipeline_check = f"lpips {self.options.net} with a random backbone: values mean nothing"

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
                # A sample's original is the reference of each of its codec settings: its
                # features are computed once.
                unique: dict[bytes, int] = {}
                refs, ref_of = [], []
                for i in idx:
                    key = _digest(references[i])
                    if key not in unique:
                        unique[key] = len(refs)
                        refs.append(references[i])
                    ref_of.append(unique[key])
                ref = features(net, to_lpips_tensor(refs, self.device))
                test = features(net, to_lpips_tensor([tests[i] for i in idx], self.device))
                d = distance(net, [f[ref_of] for f in ref], test).flatten().tolist()
                for i, v in zip(idx, d):
                    values[i] = float(v)
        return [{"lpips": v} for v in values]
