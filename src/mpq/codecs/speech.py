"""Telephone speech codecs through PyAV: AMR-NB (3GPP TS 26.071, the OpenCORE encoder and
decoder) and G.722 (ITU-T, FFmpeg's encoder and decoder).

Each runs at its one sample rate, mono: the input is averaged to mono, resampled (soxr) to
8 kHz (AMR-NB) or 16 kHz (G.722), coded, and the decoded signal is resampled back to the
input's rate and copied to each of its channels. The packets are decoded as they are (no
container); the codec's delay, measured by cross-correlation on speech, chirps and noise (the
same at every setting), is dropped from the start: 40 samples for AMR-NB (its 5-ms
look-ahead; FFmpeg declares 50) and 22 for G.722 (its QMF filter pair). The result is then
trimmed (or zero-padded) to the input's length.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from mpq.codecs.audio import AUDIO_CODEC_COLUMNS, rate_note
from mpq.components import Codec, Coded
from mpq.media import Audio, fit_length, planar_to_samples, resample, with_channels
from mpq.registry import register


class SpeechCodec(Codec):
    encoder: ClassVar[str]
    decoder: ClassVar[str]
    rate: ClassVar[int]  # the codec's sample rate
    delay: ClassVar[int]  # samples at that rate before the decoded signal lines up with the input
    modes: ClassVar[list[float]]  # the bitrates the codec has, kbps
    why_off: ClassVar[str] = ""  # why the effective bitrate may be off the mode's, for rate_note
    columns = AUDIO_CODEC_COLUMNS
    modality = "audio"

    def check_setting(self, setting) -> None:
        if isinstance(setting, bool) or setting not in self.modes:
            raise ValueError(f"{self.name} bitrate must be one of its modes (kbps): {', '.join(f'{m:g}' for m in self.modes)}")

    def version(self) -> str:
        import av

        return f"pyav {av.__version__} ffmpeg {av.library_versions['libavcodec']} {self.encoder}/{self.decoder}"

    def encoder_bit_rate(self, kbps: float) -> int:
        return int(round(kbps * 1000))

    def decoder_options(self, kbps: float) -> dict[str, str]:
        return {}

    def coded_bits(self, nbytes: int, kbps: float) -> int:
        return 8 * nbytes

    def roundtrip(self, media: Audio, setting: float) -> Coded:
        import av

        x = resample(with_channels(media.samples, 1), media.sample_rate, self.rate)
        enc = av.CodecContext.create(self.encoder, "w")
        enc.sample_rate, enc.layout, enc.format = self.rate, "mono", "s16"
        enc.bit_rate = self.encoder_bit_rate(setting)
        enc.open()
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(x.T), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = self.rate, 0
        fit = av.AudioResampler(format="s16", layout="mono", rate=self.rate, frame_size=enc.frame_size)
        packets = [p for f in [*fit.resample(frame), *fit.resample(None), None] for p in enc.encode(f)]
        dec = av.CodecContext.create(self.decoder, "r")
        dec.sample_rate, dec.layout = self.rate, "mono"
        dec.options = self.decoder_options(setting)
        to_float = av.AudioResampler(format="fltp", layout="mono", rate=self.rate)
        frames = [f for p in [*packets, None] for f in dec.decode(p)]
        y = planar_to_samples([g.to_ndarray() for f in frames for g in to_float.resample(f)])
        y = resample(fit_length(y[self.delay :], len(x)), self.rate, media.sample_rate)
        y = with_channels(fit_length(y, media.num_samples), media.channels)
        bits = self.coded_bits(sum(p.size for p in packets), setting)
        extra = {"requested_kbps": float(setting), "codec_sample_rate": self.rate, "rate_note": rate_note(bits, media.duration, setting, self.why_off)}
        return Coded(bits=bits, decoded=Audio(np.clip(y, -1, 1).astype(np.float32), media.sample_rate), extra=extra)


@register("codec", "amr_nb")
class AMRNB(SpeechCodec):
    """AMR-NB through OpenCORE, its eight modes (4.75–12.2 kbps), 8 kHz mono, no DTX.

    Bits are 8 × the packets' bytes: 20-ms frames in RFC 4867's storage format, each with its
    one-byte table of contents and padded to whole bytes (12.2 kbps mode: 32 bytes a frame,
    12.8 kbps)."""

    encoder, decoder = "libopencore_amrnb", "libopencore_amrnb"
    rate, delay = 8000, 40
    modes = [4.75, 5.15, 5.9, 6.7, 7.4, 7.95, 10.2, 12.2]
    default_settings = modes
    why_off = "a table-of-contents byte and padding to whole bytes in every 20-ms frame"


@register("codec", "g722")
class G722(SpeechCodec):
    """G.722 sub-band ADPCM, 16 kHz mono, at 64, 56 or 48 kbps (its modes 1–3).

    The encoder always writes 8-bit codewords (64 kbps); in modes 2 and 3 the decoder reads
    only 7 or 6 of them (the lower band's last one or two bits, which the channel gives to
    data), so bits are the packets' codewords × 8, 7 or 6 bits."""

    encoder, decoder = "g722", "g722"
    rate, delay = 16000, 22
    modes = [48, 56, 64]
    default_settings = modes

    def encoder_bit_rate(self, kbps: float) -> int:
        return 64000

    def decoder_options(self, kbps: float) -> dict[str, str]:
        return {"bits_per_codeword": str(round(kbps / 8))}

    def coded_bits(self, nbytes: int, kbps: float) -> int:
        return nbytes * round(kbps / 8)  # one byte (codeword) per two input samples
