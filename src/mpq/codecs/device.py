"""Neural codecs split across devices: the network on a GPU, the entropy coding on the CPU.

CompressAI's range coder is C++ on the CPU, and its autoregressive models (mbt2018,
cheng2020) code latent by latent, a few small convolutions per latent: on a GPU that loop
is kernel launches and copies, which CompressAI itself warns against. So a codec on a GPU
runs its analysis and synthesis transforms (nearly all of its arithmetic) there, and keeps
the hyperprior, the context model and the coder on the CPU, where they run as they do on a
CPU-only machine."""

from __future__ import annotations

import torch
from torch import nn


class OnDevice(nn.Module):
    """A sub-network run on ``device``: its input goes there, its output comes back to the CPU."""

    def __init__(self, module: nn.Module, device: str):
        super().__init__()
        self.module, self.device = module.to(device), device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.to(self.device)).cpu()


def split(net: nn.Module, device: str, parts: tuple[str, ...]) -> nn.Module:
    """``net`` (on the CPU) with its ``parts`` moved to run on ``device``."""
    for name in parts:
        setattr(net, name, OnDevice(getattr(net, name), device))
    return net

