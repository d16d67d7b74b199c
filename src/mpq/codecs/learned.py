"""Learned image codecs from the CompressAI model zoo, with real entropy coding.

Images are padded (edge replication) to a multiple of 64, compressed to real
bitstreams with ``model.compress``, decompressed, and cropped back to the original size
before anything downstream sees them. Bits are 8 × the bytes of every bitstream produced.

On a GPU (``device``), the analysis and synthesis transforms run there, on the images of
one padded shape together, and the entropy coding (hyperprior, context model, range coder)
on the CPU, as CompressAI's coder requires (``codecs.device``).
"""

from __future__ import annotations

import copy
import functools
import warnings
from typing import ClassVar, Literal

import numpy as np
import pyarrow as pa

from mpq.components import Codec, Coded, Options, offline_hint
from mpq.hub import TorchHubCheckpoint
from mpq.media import Image
from mpq.registry import register

PAD_MULTIPLE = 64


class ZooOptions(Options):
    metric: Literal["mse", "ms-ssim"] = "mse"
    # False builds the same architecture with random weights: for tests and offline checks only.
    pretrained: bool = True


def checkpoint_name(family: str, quality: int, metric: str) -> str:
    return f"compressai {family} q{quality} {metric}"


@functools.cache
def load_zoo_model(family: str, quality: int, metric: str, pretrained: bool):
    import torch
    from compressai import zoo

    try:
        net = getattr(zoo, family)(quality=quality, metric=metric, pretrained=pretrained, progress=False)
    except (OSError, RuntimeError) as exc:  # urllib errors are OSErrors
        raise offline_hint("checkpoint", checkpoint_name(family, quality, metric), exc) from exc
    if not pretrained:
        net.update(force=True)  # entropy-coder tables for the random weights
    return net.eval().to(torch.device("cpu"))


@functools.cache
def load_on_device(family: str, quality: int, metric: str, pretrained: bool, device: str):
    """The zoo model with its analysis and synthesis transforms on ``device``."""
    from mpq.codecs.device import split

    net = load_zoo_model(family, quality, metric, pretrained)
    return net if device == "cpu" else split(copy.deepcopy(net), device, ("g_a", "g_s"))  # the same weights


class CompressAICodec(Codec):
    runs_on = "gpu"
    Options = ZooOptions
    columns = {"payload_bits": pa.int64()}  # = bits: the bitstreams are all there is
    family: ClassVar[str]
    qualities: ClassVar[range]

    def __init__(self, options=None):
        super().__init__(options)
        if not self.options.pretrained:
            self.pipeline_check = f"{self.name} with random weights: its output means nothing"

    def check_setting(self, setting) -> None:
        if not isinstance(setting, int) or setting not in self.qualities:
            raise ValueError(f"{self.name} quality must be an integer in [{self.qualities[0]}, {self.qualities[-1]}]")

    def assets(self, settings=None):
        if not self.options.pretrained:
            return []
        from compressai.zoo.image import model_urls

        urls = model_urls[self.family.replace("_", "-")][self.options.metric]  # the zoo's URL table spells names with "-"
        return [
            TorchHubCheckpoint(checkpoint_name(self.family, q, self.options.metric), urls[q])
            for q in settings or self.default_settings
        ]

    def version(self) -> str:
        import compressai

        weights = "pretrained" if self.options.pretrained else "random-weights"
        return f"compressai {compressai.__version__} {self.family} {self.options.metric} {weights}"

    def roundtrip(self, media: Image, setting: int) -> Coded:
        return self.code([media], setting)[0]

    def roundtrip_batch(self, media: list[Image], setting: int) -> list[Coded]:
        """The images of one padded shape in one batch: the same bitstreams as one by one, and
        the same pixels but for float noise (a rounding may flip)."""
        shapes: dict[tuple[int, int], list[int]] = {}
        for i, m in enumerate(media):
            shapes.setdefault((-(-m.height // PAD_MULTIPLE), -(-m.width // PAD_MULTIPLE)), []).append(i)
        out: list[Coded] = [None] * len(media)  # type: ignore[list-item]
        for indexes in shapes.values():
            for i, coded in zip(indexes, self.code([media[i] for i in indexes], setting)):
                out[i] = coded
        return out

    def code(self, media: list[Image], setting: int) -> list[Coded]:
        """Images of one padded shape, coded as one batch; each padded (edge replication), then cropped back."""
        import torch
        import torch.nn.functional as F

        net = load_on_device(self.family, setting, self.options.metric, self.options.pretrained, self.device)
        xs = []
        for m in media:
            h, w = m.height, m.width
            x = torch.from_numpy(m.pixels).permute(2, 0, 1).unsqueeze(0).float().div(255.0)
            xs.append(F.pad(x, (0, (-w) % PAD_MULTIPLE, 0, (-h) % PAD_MULTIPLE), mode="replicate"))
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Inference on GPU is not recommended")  # its coder runs on the CPU
            out = net.compress(torch.cat(xs))
            x_hat = net.decompress(out["strings"], out["shape"])["x_hat"]
        coded = []
        for i, m in enumerate(media):
            h, w = m.height, m.width
            nbytes = sum(len(strings[i]) for strings in out["strings"])
            pixels = x_hat[i, :, :h, :w].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
            coded.append(Coded(bits=8 * nbytes, decoded=Image(np.ascontiguousarray(pixels)), extra={"payload_bits": 8 * nbytes}, device=self.device))
        return coded


@register("codec", "mbt2018")
class MBT2018(CompressAICodec):
    """Minnen, Ballé, Toderici 2018: joint autoregressive and hierarchical priors."""

    family = "mbt2018"
    qualities = range(1, 9)
    default_settings = [1, 2, 3, 4, 5, 6, 7, 8]


@register("codec", "cheng2020-anchor")
class Cheng2020Anchor(CompressAICodec):
    """Cheng et al. 2020, anchor variant (single Gaussian; no mixture, no attention).

    Residual blocks, sub-pixel up-sampling, context model and hyperprior."""

    family = "cheng2020_anchor"
    qualities = range(1, 7)
    default_settings = [1, 2, 3, 4, 5, 6]
