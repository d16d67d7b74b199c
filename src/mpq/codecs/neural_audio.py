"""Neural audio codecs through transformers: EnCodec (Défossez et al. 2022) and DAC (Kumar et al. 2023).

A setting is the requested bitrate in kbps: for EnCodec one of the model's target
bandwidths, for DAC the number of codebooks that comes closest to it on one channel (a
stereo input, each channel coded by a mono model, takes twice that in ``kbps``; ``rate_note``
compares the rate per channel coded with the setting). The audio is
resampled (soxr) to the model's rate and channel count (mono models code each channel
of a stereo input separately; the stereo 48 kHz EnCodec codes a mono input duplicated),
encoded, and the codes are written as a real bitstream: each code as a
log2(codebook size)-bit integer, bit-packed, plus EnCodec's per-chunk scale as float32.
The audio is decoded *from those bytes*, resampled back and trimmed to the input length.
``bits`` counts the bytes; ``bits_codebook`` = codes × log2(codebook size), the figure
the study reports. Neither model entropy-codes its codes here (EnCodec's optional
language-model coder is not in transformers). On a GPU (``device``) the model runs there,
a clip at a time (clips differ in length); the bit packing is NumPy on the CPU.
"""

from __future__ import annotations

import functools
import math
import struct
from typing import ClassVar

import numpy as np
import pyarrow as pa

from mpq.codecs.audio import AUDIO_CODEC_COLUMNS, rate_note
from mpq.components import Codec, Coded, Options
from mpq.hub import BUILTIN_PREFIX, HubModel, builtin_model, from_pretrained
from mpq.media import Audio, fit_length, resample, with_channels
from mpq.registry import register


def pack_codes(codes: np.ndarray, nbits: int) -> bytes:
    """Integers in [0, 2**nbits) → a big-endian bitstream of nbits each."""
    flat = codes.astype(np.int64).ravel()
    bits = (flat[:, None] >> np.arange(nbits - 1, -1, -1)) & 1
    return np.packbits(bits.astype(np.uint8).ravel()).tobytes()


def unpack_codes(data: bytes, count: int, nbits: int) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(data, np.uint8))[: count * nbits].reshape(count, nbits)
    return bits.astype(np.int64) @ (1 << np.arange(nbits - 1, -1, -1))


# Tiny random models with the real architectures, for offline pipeline checks.
TINY = {
    "builtin:tiny-encodec-24khz": ("encodec", {"sampling_rate": 24000, "audio_channels": 1}),
    "builtin:tiny-encodec-48khz": (
        "encodec",
        {"sampling_rate": 48000, "audio_channels": 2, "normalize": True, "chunk_length_s": 1.0, "overlap": 0.01,
         "target_bandwidths": [3.0, 6.0, 12.0, 24.0]},
    ),
    "builtin:tiny-dac-44khz": ("dac", {"sampling_rate": 44100}),
}


def tiny_codec(name: str) -> str:
    """Write a tiny randomly initialised EnCodec/DAC in HF format to mpq's cache (once)."""
    from transformers import DacConfig, DacModel, EncodecConfig, EncodecModel

    family, kw = TINY[name]

    def build():
        if family == "encodec":
            return [EncodecModel(EncodecConfig(hidden_size=16, num_filters=4, num_lstm_layers=1, codebook_size=1024, **kw))]
        return [DacModel(DacConfig(encoder_hidden_size=4, decoder_hidden_size=16, n_codebooks=9, codebook_dim=4, hop_length=512, **kw))]

    return builtin_model(name.removeprefix(BUILTIN_PREFIX), build)


@functools.cache
def load_codec_model(family: str, model_id: str, device: str = "cpu"):
    from transformers import DacModel, EncodecModel

    path = tiny_codec(model_id) if model_id.startswith(BUILTIN_PREFIX) else model_id
    model = from_pretrained(EncodecModel if family == "encodec" else DacModel, path)
    return model.eval().to(device)


class NeuralCodecOptions(Options):
    model: str  # hub id, local folder, or a builtin:tiny-* model (random weights: pipeline checks only)


class NeuralAudioCodec(Codec):
    runs_on = "gpu"
    family: ClassVar[str]
    modality = "audio"
    columns = {**AUDIO_CODEC_COLUMNS, "bits_codebook": pa.int64()}

    def __init__(self, options=None):
        super().__init__(options)
        if self.options.model.startswith(BUILTIN_PREFIX):
            self.pipeline_check = f"{self.name} with random weights: its output means nothing"

    def check_setting(self, setting) -> None:
        if isinstance(setting, bool) or not isinstance(setting, (int, float)) or setting <= 0:
            raise ValueError(f"{self.name} bitrate must be a positive number of kbps")

    def assets(self, settings=None):
        if self.options.model.startswith(BUILTIN_PREFIX):
            return []  # written by mpq itself, offline
        return [HubModel(self.options.model, loaders=("EncodecModel" if self.family == "encodec" else "DacModel",))]

    @property
    def model(self):
        return load_codec_model(self.family, self.options.model, self.device)

    def version(self) -> str:
        import transformers

        revision = getattr(self.model.config, "_commit_hash", None) or "local"
        return f"transformers {transformers.__version__} {self.options.model}@{revision}"

    def roundtrip(self, media: Audio, setting: float) -> Coded:
        import torch

        cfg = self.model.config
        x = resample(media.samples, media.sample_rate, cfg.sampling_rate)
        with torch.inference_mode():
            data, bits_codebook, decode = self.encode(x, float(setting))
            y = decode(data)
        y = fit_length(resample(y.astype(np.float32), cfg.sampling_rate, media.sample_rate), media.num_samples)
        y = with_channels(y, media.channels)
        bits = 8 * len(data)
        coded = self.channels_coded(media.channels)  # a mono model codes each channel: it asks for that many times the setting
        extra = {
            "requested_kbps": float(setting),
            "codec_sample_rate": int(cfg.sampling_rate),
            "rate_note": rate_note(bits / coded, media.duration, setting, "; ".join(filter(None, [
                f"per channel, {coded} coded by the mono model" if coded > 1 else "", self.why_off(setting)]))),
            "bits_codebook": int(bits_codebook),
        }
        return Coded(bits=bits, decoded=Audio(np.clip(y, -1, 1), media.sample_rate), extra=extra, device=self.device)

    def channels_coded(self, channels: int) -> int:
        """How many times the model codes the input: each channel for a mono model, once for a stereo one."""
        return channels if getattr(self.model.config, "audio_channels", 1) == 1 else 1

    def why_off(self, setting: float) -> str:
        return ""

    def encode(self, x: np.ndarray, kbps: float):
        """(n, channels) at the model's rate → (bytes, codebook bits, a function decoding those bytes)."""
        raise NotImplementedError


class EnCodec(NeuralAudioCodec):
    family = "encodec"

    def encode(self, x, kbps):
        import torch

        model, cfg = self.model, self.model.config
        if kbps not in cfg.target_bandwidths:
            raise ValueError(f"{self.options.model} codes at {list(cfg.target_bandwidths)} kbps, not {kbps:g}")
        n, channels = x.shape
        # Mono models code each channel as its own batch item; the stereo model gets two channels.
        batch = x.T[:, None, :] if cfg.audio_channels == 1 else with_channels(x, 2).T[None]
        out = model.encode(torch.from_numpy(np.ascontiguousarray(batch)).to(self.device), bandwidth=kbps)
        codes = out.audio_codes.cpu().numpy()  # (chunks, batch, n_q, frames)
        pad = int(out.last_frame_pad_length or 0)
        scales = out.audio_scales
        nbits = int(math.log2(cfg.codebook_size))
        chunks, parts = [], []
        for i in range(codes.shape[0]):
            chunk = codes[i][..., : codes.shape[-1] - pad] if i == codes.shape[0] - 1 and pad else codes[i]
            chunks.append(chunk.shape)
            if scales[i] is not None:
                parts.append(struct.pack(f"!{scales[i].numel()}f", *scales[i].flatten().tolist()))
            parts.append(pack_codes(chunk, nbits))
        data = b"".join(parts)
        count = sum(int(np.prod(s)) for s in chunks)

        def decode(data: bytes) -> np.ndarray:
            offset, frames, scale_list = 0, [], []
            for shape in chunks:
                if cfg.normalize:
                    k = shape[0]
                    scale_list.append(torch.tensor(struct.unpack_from(f"!{k}f", data, offset), device=self.device).view(k, 1))
                    offset += 4 * k
                else:
                    scale_list.append(None)
                size = math.ceil(int(np.prod(shape)) * nbits / 8)
                c = unpack_codes(data[offset : offset + size], int(np.prod(shape)), nbits).reshape(shape)
                frames.append(np.pad(c, ((0, 0), (0, 0), (0, codes.shape[-1] - shape[-1]))))
                offset += size
            audio_codes = torch.from_numpy(np.stack(frames)).to(self.device)
            mask = torch.ones(batch.shape[0], batch.shape[1], n, dtype=torch.bool, device=self.device)
            y = model.decode(audio_codes, scale_list, padding_mask=mask, last_frame_pad_length=pad).audio_values
            y = y.cpu().numpy()  # (batch, channels, samples)
            return (y[:, 0, :].T if cfg.audio_channels == 1 else y[0].T)[:n]

        return data, count * nbits, decode


@register("codec", "dac")
class DAC(NeuralAudioCodec):
    """DAC (transformers; default the 44.1 kHz model, any DAC via `model`), kbps → the nearest number of codebooks."""

    class Options(NeuralCodecOptions):
        model: str = "descript/dac_44khz"

    family = "dac"
    default_settings = [0.86, 1.72, 3.45, 6.03, 7.75]  # 1, 2, 4, 7, 9 codebooks

    @staticmethod
    def codebook_kbps(cfg) -> float:
        """The rate one codebook adds to one channel."""
        return cfg.sampling_rate / int(np.prod(cfg.downsampling_ratios)) * math.log2(cfg.codebook_size) / 1000

    def codebooks(self, cfg, kbps: float) -> int:
        """A setting is kbps per channel (the mono model codes each channel on its own), so the
        codebooks it takes do not depend on the input and a sweep stays a sweep on stereo."""
        per = self.codebook_kbps(cfg)
        n_q = max(1, round(kbps / per))
        if n_q > cfg.n_codebooks:
            raise ValueError(f"{self.options.model} reaches at most {cfg.n_codebooks * per:.3g} kbps per channel, not {kbps:g}")
        return n_q

    def why_off(self, setting: float) -> str:
        cfg = self.model.config
        return f"{self.codebooks(cfg, setting)} whole codebook(s) of {self.codebook_kbps(cfg):.3g} kbps"

    def preflight(self, settings: list) -> None:
        """Two settings that round to the same number of codebooks would be one point under two labels."""
        cfg = self.model.config
        seen: dict[int, float] = {}
        for s in settings:
            n_q = self.codebooks(cfg, float(s))
            if n_q in seen:
                raise ValueError(
                    f"dac settings {seen[n_q]:g} and {s:g} kbps both give {n_q} codebook(s) of {self.codebook_kbps(cfg):.3g} kbps "
                    f"per channel with {self.options.model}: the same rate twice; keep one"
                )
            seen[n_q] = float(s)

    def encode(self, x, kbps):
        import torch

        model, cfg = self.model, self.model.config
        nbits = int(math.log2(cfg.codebook_size))
        hop = int(np.prod(cfg.downsampling_ratios))
        n_q = self.codebooks(cfg, kbps)
        n = x.shape[0]
        batch = np.pad(x.T, ((0, 0), (0, (-n) % hop)))[:, None, :]  # mono model: channels as batch items
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        codes = model.encode(x, n_quantizers=n_q).audio_codes[:, :n_q].cpu().numpy()
        shape = codes.shape
        data = pack_codes(codes, nbits)

        def decode(data: bytes) -> np.ndarray:
            c = torch.from_numpy(unpack_codes(data, int(np.prod(shape)), nbits).reshape(shape)).to(self.device)
            return model.decode(audio_codes=c).audio_values.cpu().numpy().reshape(shape[0], -1).T[:n]

        return data, codes.size * nbits, decode


@register("codec", "encodec_24khz")
class EnCodec24kHz(EnCodec):
    """EnCodec 24 kHz mono (transformers), target bandwidth in kbps."""

    class Options(NeuralCodecOptions):
        model: str = "facebook/encodec_24khz"

    default_settings = [1.5, 3, 6, 12, 24]


@register("codec", "encodec_48khz")
class EnCodec48kHz(EnCodec):
    """EnCodec 48 kHz stereo (transformers), target bandwidth in kbps; the study's model."""

    class Options(NeuralCodecOptions):
        model: str = "facebook/encodec_48khz"

    default_settings = [3, 6, 12, 24]

