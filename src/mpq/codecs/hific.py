"""HiFiC (Mentzer et al. 2020, "High-Fidelity Generative Image Compression"): the generative codec.

The official weights are TensorFlow-Compression metagraphs that cannot be imported beside
this stack (docs/hific.md). mpq runs the checkpoints of Justin Tan's PyTorch port
(github Justin-Tan/high-fidelity-generative-compression): HIFIC-low / -med / -high,
trained on OpenImages for 0.14 / 0.30 / 0.45 bpp, files ``hific_low.pt``,
``hific_med.pt`` and ``hific_hi.pt`` (Zenodo record 4026003), kept in torch's hub cache. The network is mpq's own
(``hific_net.py``), built to the port's checkpoint layout so its weights load key for key.

The image (in [0, 1]) is reflect-padded to a multiple of 16 and its latents to a multiple
of 4, as the port does; the hyper-latents and the latents are entropy-coded with
CompressAI's rANS coder (not the port's own ANS), so bits are 8 × the bytes of the two
real bitstreams. The decoded image is cropped back to the input size. Every row names the
checkpoint file, its SHA-256 and its architecture in ``codec_variant``.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa

from mpq.components import Codec, Coded, Options
from mpq.hub import TorchHubCheckpoint
from mpq.media import Image
from mpq.registry import register

CHECKPOINT_FILES = {"low": "hific_low.pt", "med": "hific_med.pt", "high": "hific_hi.pt"}
CHECKPOINT_URL = "https://zenodo.org/record/4026003/files/{}"


def checkpoint(setting: str) -> TorchHubCheckpoint:
    """A setting's checkpoint from Zenodo, in torch's hub cache like the other downloaded weights."""
    name = CHECKPOINT_FILES[setting]
    return TorchHubCheckpoint(f"HiFiC {name} (Zenodo 4026003)", CHECKPOINT_URL.format(name))


def checkpoint_path(setting: str, folder: str | None) -> Path:
    """A setting's checkpoint: in ``folder`` (the codec's ``checkpoints`` option) when given,
    else in torch's hub cache, fetched from Zenodo on first use when the network allows."""
    if folder:
        path = Path(folder).expanduser() / CHECKPOINT_FILES[setting]
        if not path.exists():
            raise FileNotFoundError(f"HiFiC checkpoint {str(path)!r} does not exist")
        return path
    asset = checkpoint(setting)
    asset.fetch()
    return asset.path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


@functools.cache
def load_coder(path: str, allow_pickle: bool = False, device: str = "cpu"):
    """The coder for one checkpoint file (once per process and device) and the variant recorded
    in rows. On a GPU the encoder and the generator run there; the hyperprior and the rANS
    coder stay on the CPU (``codecs.device``)."""
    from mpq.codecs.device import split
    from mpq.codecs.hific_net import HiFiCCoder, load_net

    net, arch = load_net(path, allow_pickle)
    if device != "cpu":
        net = split(net, device, ("Encoder", "Generator"))
    variant = (
        f"{Path(path).name} sha256:{_sha256(Path(path))[:16]} (Justin-Tan HiFiC port layout; "
        f"{arch['likelihood_type']} latents, C={arch['latent_channels']}, {arch['n_residual_blocks']} residual blocks, "
        f"{'channel' if arch['use_channel_norm'] else 'instance'} norm)"
    )
    return HiFiCCoder(net, arch), variant


class HiFiCOptions(Options):
    # A folder holding hific_low.pt, hific_med.pt and hific_hi.pt; default: mpq's cache.
    checkpoints: str | None = None
    # Load checkpoints with full unpickling (only for files you trust) when they hold more
    # than tensors and plain values.
    allow_pickle: bool = False


@register("codec", "hific")
class HiFiC(Codec):
    """HiFiC (Mentzer et al. 2020), the generative codec: settings low, med, high (port checkpoints)."""
    runs_on = "gpu"

    Options = HiFiCOptions
    default_settings = ["low", "med", "high"]
    columns = {"codec_variant": pa.string(), "payload_bits": pa.int64()}  # payload = bits: no container

    def check_setting(self, setting) -> None:
        if setting not in CHECKPOINT_FILES:
            raise ValueError(f"hific setting must be one of: {', '.join(CHECKPOINT_FILES)}")

    def assets(self, settings=None):
        if self.options.checkpoints:
            return []  # the user's own files, checked by preflight
        return [checkpoint(s) for s in settings or self.default_settings]

    def preflight(self, settings: list) -> None:
        if self.options.checkpoints:
            for setting in settings:
                checkpoint_path(setting, self.options.checkpoints)

    def version(self) -> str:
        import compressai

        return f"mpq hific (Justin-Tan port checkpoints), compressai {compressai.__version__} rANS"

    def roundtrip(self, media: Image, setting: str) -> Coded:
        import torch

        path = checkpoint_path(setting, self.options.checkpoints)
        coder, variant = load_coder(str(path), self.options.allow_pickle, self.device)
        h, w = media.height, media.width
        x = torch.from_numpy(media.pixels).permute(2, 0, 1).unsqueeze(0).float().div(255.0)
        with torch.inference_mode():
            strings, z_shape = coder.compress(x)
            x_hat = coder.decompress(strings, z_shape, (h, w))
        pixels = x_hat[0].mul(255).round().byte().permute(1, 2, 0).numpy()
        nbytes = sum(len(s) for s in strings)
        return Coded(
            bits=8 * nbytes,
            decoded=Image(np.ascontiguousarray(pixels)),
            extra={"codec_variant": f"HIFIC-{setting}: {variant}", "payload_bits": 8 * nbytes},
            device=self.device,
        )
