"""The HiFiC network and its entropy coding (imported only when a HiFiC codec runs).

Written for mpq from Mentzer et al. 2020 and the layout of the Justin-Tan PyTorch port's
checkpoints, whose ``model_state_dict`` loads into ``HiFiCNet`` key for key:

- ``Encoder``: 7×7 conv to 60 channels, four stride-2 3×3 convs (120, 240, 480, 960; the
  TF-style asymmetric reflect padding), 3×3 conv to C = 220 latent channels; ChannelNorm
  (or InstanceNorm) and ReLU between.
- ``Generator``: ChannelNorm, 3×3 conv to 960, N residual blocks (9 in the released
  models) under a long skip, four stride-2 transposed convs (480, 240, 120, 60), 7×7 conv
  to RGB.
- ``Hyperprior``: analysis net (3×3, 5×5/2, 5×5/2 convs to 320 channels), synthesis nets
  for the latents' mean and scale (the scale only clamped below at 0.11), and a per-channel non-parametric density of
  the hyper-latents (Ballé et al. 2018, §6.1; the port gates every layer with tanh).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import scipy.stats
import torch
import torch.nn as nn
import torch.nn.functional as F
from compressai.entropy_models import EntropyModel, GaussianConditional

# The hyper-analysis' reflect padding needs latent maps of 8 or more (after padding to 4).
MIN_SIDE = 65
SCALE_MIN, SCALE_MAX, SCALE_LEVELS = 0.11, 256.0, 64  # the port's scale table and scale bound
HYPER_CHANNELS = 320
# Checkpoint entries the coder needs (the port also saves its discriminator, LPIPS net,
# optimizers and, in evaluation mode, its own coding tables: all skipped).
MODULES = (
    "Encoder.", "Generator.", "Hyperprior.analysis_net.", "Hyperprior.synthesis_mu.",
    "Hyperprior.synthesis_std.", "Hyperprior.hyperlatent_likelihood.",
)


class ChannelNorm(nn.Module):
    """Normalises each position over the channels (unbiased variance, eps 1e-3), then an
    affine map per channel: HiFiC's replacement for instance norm."""

    def __init__(self, channels: int, eps: float = 1e-3):
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x):
        mu, var = x.mean(dim=1, keepdim=True), x.var(dim=1, keepdim=True)
        return self.gamma * (x - mu) * torch.rsqrt(var + self.eps) + self.beta


def norm(channels: int, channel_norm: bool) -> nn.Module:
    return ChannelNorm(channels) if channel_norm else nn.InstanceNorm2d(channels, affine=True)


class Encoder(nn.Module):
    def __init__(self, C: int, channel_norm: bool):
        super().__init__()
        w = (60, 120, 240, 480, 960)
        self.conv_block1 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(3, w[0], 7), norm(w[0], channel_norm), nn.ReLU())
        for i in range(1, 5):
            block = nn.Sequential(
                nn.ReflectionPad2d((0, 1, 1, 0)), nn.Conv2d(w[i - 1], w[i], 3, stride=2), norm(w[i], channel_norm), nn.ReLU()
            )
            self.add_module(f"conv_block{i + 1}", block)
        self.conv_block_out = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(w[4], C, 3))

    def forward(self, x):
        for i in range(1, 6):
            x = getattr(self, f"conv_block{i}")(x)
        return self.conv_block_out(x)


class ResidualBlock(nn.Module):
    def __init__(self, channels: int, channel_norm: bool):
        super().__init__()
        self.pad = nn.ReflectionPad2d(1)
        self.conv1, self.conv2 = nn.Conv2d(channels, channels, 3), nn.Conv2d(channels, channels, 3)
        self.norm1, self.norm2 = norm(channels, channel_norm), norm(channels, channel_norm)

    def forward(self, x):
        r = F.relu(self.norm1(self.conv1(self.pad(x))))
        return x + self.norm2(self.conv2(self.pad(r)))


class Generator(nn.Module):
    def __init__(self, C: int, n_residual_blocks: int, channel_norm: bool):
        super().__init__()
        w = (960, 480, 240, 120, 60)
        self.n_residual_blocks = n_residual_blocks
        self.conv_block_init = nn.Sequential(
            norm(C, channel_norm), nn.ReflectionPad2d(1), nn.Conv2d(C, w[0], 3), norm(w[0], channel_norm)
        )
        for m in range(n_residual_blocks):
            self.add_module(f"resblock_{m}", ResidualBlock(w[0], channel_norm))
        for i in range(1, 5):
            block = nn.Sequential(
                nn.ConvTranspose2d(w[i - 1], w[i], 3, stride=2, padding=1, output_padding=1), norm(w[i], channel_norm), nn.ReLU()
            )
            self.add_module(f"upconv_block{i}", block)
        self.conv_block_out = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(w[4], 3, 7))

    def forward(self, y):
        head = self.conv_block_init(y)
        x = head
        for m in range(self.n_residual_blocks):
            x = getattr(self, f"resblock_{m}")(x)
        x = x + head
        for i in range(1, 5):
            x = getattr(self, f"upconv_block{i}")(x)
        return self.conv_block_out(x)


class HyperAnalysis(nn.Module):
    def __init__(self, C: int, N: int):
        super().__init__()
        self.conv1 = nn.Conv2d(C, N, 3, padding=1)
        self.conv2 = nn.Conv2d(N, N, 5, stride=2, padding=2, padding_mode="reflect")
        self.conv3 = nn.Conv2d(N, N, 5, stride=2, padding=2, padding_mode="reflect")

    def forward(self, y):
        return self.conv3(F.relu(self.conv2(F.relu(self.conv1(y)))))


class HyperSynthesis(nn.Module):
    def __init__(self, C: int, N: int):
        super().__init__()
        self.conv1 = nn.ConvTranspose2d(N, N, 5, stride=2, padding=2, output_padding=1)
        self.conv2 = nn.ConvTranspose2d(N, N, 5, stride=2, padding=2, output_padding=1)
        self.conv3 = nn.ConvTranspose2d(N, C, 3, padding=1)

    def forward(self, z):
        return self.conv3(F.relu(self.conv2(F.relu(self.conv1(z)))))


class FactorizedDensity(nn.Module):
    """Per-channel CDF of the hyper-latents: monotone maps 1→3→3→3→1 (softplus weights H_k,
    biases b_k, tanh gates a_k), initialised as Ballé et al. do (init scale 10)."""

    def __init__(self, channels: int, filters=(3, 3, 3), init_scale: float = 10.0):
        super().__init__()
        dims = (1, *filters, 1)
        self.layers = len(dims) - 1
        scale = init_scale ** (1 / self.layers)
        for k in range(self.layers):
            h = float(np.log(np.expm1(1 / scale / dims[k + 1])))
            self.register_parameter(f"H_{k}", nn.Parameter(torch.full((channels, dims[k + 1], dims[k]), h)))
            self.register_parameter(f"a_{k}", nn.Parameter(torch.zeros(channels, dims[k + 1], 1)))
            self.register_parameter(f"b_{k}", nn.Parameter(torch.rand(channels, dims[k + 1], 1) - 0.5))

    def cdf_logits(self, x):
        """x: (channels, 1, n) → the logits of each channel's CDF at x, same shape."""
        for k in range(self.layers):
            H, a, b = (getattr(self, f"{p}_{k}").to(x.dtype) for p in "Hab")
            x = torch.bmm(F.softplus(H), x) + b
            x = x + torch.tanh(a) * torch.tanh(x)
        return x


class Hyperprior(nn.Module):
    def __init__(self, C: int, N: int = HYPER_CHANNELS):
        super().__init__()
        self.analysis_net = HyperAnalysis(C, N)
        self.synthesis_mu = HyperSynthesis(C, N)
        self.synthesis_std = HyperSynthesis(C, N)  # no output activation: scales are clamped at 0.11
        self.hyperlatent_likelihood = FactorizedDensity(N)


class HiFiCNet(nn.Module):
    """Encoder, Generator and Hyperprior under the port's attribute names."""

    def __init__(self, latent_channels: int = 220, n_residual_blocks: int = 9, use_channel_norm: bool = True):
        super().__init__()
        self.Encoder = Encoder(latent_channels, use_channel_norm)
        self.Generator = Generator(latent_channels, n_residual_blocks, use_channel_norm)
        self.Hyperprior = Hyperprior(latent_channels)


# --- checkpoints -----------------------------------------------------------------------------


def architecture(args: dict) -> dict:
    """The architecture a checkpoint's recorded ``args`` describe; refuses what mpq cannot run."""
    if args.get("use_latent_mixture_model"):
        raise ValueError("HiFiC checkpoint uses the latent mixture model (DLMM), which mpq does not run")
    if args.get("sample_noise"):
        raise ValueError("HiFiC checkpoint samples generator noise; mpq runs only deterministic decoders")
    likelihood = args.get("likelihood_type", "gaussian")
    if likelihood not in ("gaussian", "logistic"):
        raise ValueError(f"HiFiC checkpoint has unknown likelihood_type {likelihood!r}")
    return {
        "latent_channels": int(args.get("latent_channels", 220)),
        "n_residual_blocks": int(args.get("n_residual_blocks", 9)),
        "use_channel_norm": bool(args.get("use_channel_norm", True)),
        "likelihood_type": likelihood,
        "normalize_input_image": bool(args.get("normalize_input_image", False)),
    }


def build_net(arch: dict) -> HiFiCNet:
    return HiFiCNet(arch["latent_channels"], arch["n_residual_blocks"], arch["use_channel_norm"])


def load_net(path: str | Path, allow_pickle: bool = False) -> tuple[HiFiCNet, dict]:
    """Build the network a checkpoint describes (``{"model_state_dict", "args", ...}``, as
    the port saves it) and load its weights."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"{path}: holds objects beyond tensors and plain values ({str(exc).splitlines()[0]}); "
            "if you trust the file, set the codec option allow_pickle: true"
        ) from None
    if not isinstance(ckpt, dict) or "model_state_dict" not in ckpt or "args" not in ckpt:
        raise ValueError(f"{path}: not a HiFiC checkpoint (needs 'model_state_dict' and 'args')")
    args = ckpt["args"] if isinstance(ckpt["args"], dict) else vars(ckpt["args"])
    arch = architecture(args)
    net = build_net(arch)
    state = {k: v for k, v in ckpt["model_state_dict"].items() if k.startswith(MODULES)}
    missing = sorted(set(net.state_dict()) - set(state))
    if missing:
        raise ValueError(f"{path}: HiFiC checkpoint lacks {len(missing)} weights, e.g. {missing[:3]}")
    net.load_state_dict(state, strict=True)
    return net.eval(), arch


# --- entropy coding --------------------------------------------------------------------------


class HyperlatentModel(EntropyModel):
    """CompressAI's rANS tables for the hyper-latents, built from the factorized density."""

    tail_mass = 1e-9

    @torch.no_grad()
    def build(self, density: FactorizedDensity) -> None:
        half = self.tail_mass / 2
        radius = 64
        while True:  # widen the support until both tails hold less than tail_mass / 2
            k = torch.arange(-radius, radius + 1, dtype=torch.float64)
            edges = torch.cat([k - 0.5, k[-1:] + 0.5])
            x = edges.view(1, 1, -1).expand(density.H_0.shape[0], 1, -1).contiguous()
            cdf = torch.sigmoid(density.cdf_logits(x)[:, 0])  # (channels, 2 radius + 2)
            if ((cdf[:, 0] < half).all() and (cdf[:, -1] > 1 - half).all()) or radius >= 1 << 14:
                break
            radius *= 2
        pmf = (cdf[:, 1:] - cdf[:, :-1]).clamp(min=0)
        n = pmf.shape[1]
        lo = (cdf[:, 1:] > half).int().argmax(1)  # first symbol above the lower tail
        hi = n - 1 - (cdf[:, :-1] < 1 - half).int().flip(1).argmax(1)  # last one below the upper tail
        length = hi - lo + 1
        table = torch.zeros(pmf.shape[0], int(length.max()), dtype=torch.float64)
        for c in range(pmf.shape[0]):
            table[c, : length[c]] = pmf[c, lo[c] : hi[c] + 1]
        tails = (1 - table.sum(1, keepdim=True)).clamp(min=0)
        self._quantized_cdf = self._pmf_to_cdf(table.float(), tails.float(), length, int(length.max()))
        self._offset = (lo - radius).int()
        self._cdf_length = (length + 2).int()

    def indexes(self, shape) -> torch.Tensor:
        return torch.arange(shape[1], dtype=torch.int32).view(1, -1, 1, 1).expand(shape).contiguous()


class LogisticConditional(GaussianConditional):
    """CompressAI's conditional model with a logistic instead of a Gaussian (HIFIC-med)."""

    def _standardized_cumulative(self, inputs):
        return torch.sigmoid(inputs)

    @staticmethod
    def _standardized_quantile(quantile):
        return scipy.stats.logistic.ppf(quantile)


def _pad(x, factor: int):
    h, w = x.shape[-2:]
    return F.pad(x, (0, (-w) % factor, 0, (-h) % factor), mode="reflect")


class HiFiCCoder:
    """A HiFiC network with its entropy models: image ↔ two real rANS bitstreams
    (hyper-latents, latents). Quantisation as in the port: ẑ = round(z), ŷ = round(y − μ) + μ."""

    def __init__(self, net: HiFiCNet, arch: dict):
        self.net, self.arch = net, arch
        self.hyper = HyperlatentModel()
        self.hyper.build(net.Hyperprior.hyperlatent_likelihood)
        scales = np.exp(np.linspace(np.log(SCALE_MIN), np.log(SCALE_MAX), SCALE_LEVELS)).tolist()
        cls = LogisticConditional if arch["likelihood_type"] == "logistic" else GaussianConditional
        self.conditional = cls(scales, scale_bound=SCALE_MIN)
        self.conditional.update()

    def latents(self, x) -> torch.Tensor:
        """x: (1, 3, H, W) in [0, 1] → latents, padded as the port pads them."""
        if min(x.shape[-2:]) < MIN_SIDE:
            raise ValueError(f"HiFiC needs images of at least {MIN_SIDE} pixels per side, got {tuple(x.shape[-2:])}")
        if self.arch["normalize_input_image"]:
            x = x * 2 - 1
        return _pad(self.net.Encoder(_pad(x, 16)), 4)

    def _latent_model(self, z_hat):
        hp = self.net.Hyperprior
        mu, sigma = hp.synthesis_mu(z_hat), hp.synthesis_std(z_hat).clamp(min=SCALE_MIN)
        return mu, self.conditional.build_indexes(sigma)

    def compress(self, x) -> tuple[list[bytes], tuple]:
        y = self.latents(x)
        z = self.net.Hyperprior.analysis_net(y)
        z_string = self.hyper.compress(z, self.hyper.indexes(z.shape))[0]
        mu, indexes = self._latent_model(self.hyper.quantize(z, "dequantize"))
        y_string = self.conditional.compress(y, indexes, means=mu)[0]
        return [z_string, y_string], tuple(z.shape)

    def decode_latents(self, strings: list[bytes], z_shape: tuple) -> torch.Tensor:
        z_hat = self.hyper.decompress([strings[0]], self.hyper.indexes(z_shape))
        mu, indexes = self._latent_model(z_hat)
        return self.conditional.decompress([strings[1]], indexes, means=mu)

    def decompress(self, strings: list[bytes], z_shape: tuple, size: tuple[int, int]) -> torch.Tensor:
        x_hat = self.net.Generator(self.decode_latents(strings, z_shape))
        if self.arch["normalize_input_image"]:
            x_hat = (torch.tanh(x_hat) + 1) / 2
        return x_hat[..., : size[0], : size[1]].clamp(0, 1)
