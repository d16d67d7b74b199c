"""Classical audio codecs through PyAV (FFmpeg's libmp3lame, libopus and native AAC encoders).

A setting is the requested bitrate in kbps. Each codec runs at the input's rate when the
encoder supports it, else at the nearest supported rate above (soxr resampling there and
back); mono and stereo are coded as they are. The stream is written in a container that
carries gapless information (MP3 with the LAME/Xing header, Ogg Opus with its pre-skip,
AAC in MP4 with an edit list), so FFmpeg's decoder drops the encoder delay and the
padding; the result is then trimmed (or zero-padded) to exactly the input's length.
Bits are 8 × the bytes of the encoded packets (the codec's bitstream; container framing
is not counted).
"""

from __future__ import annotations

import io
from typing import ClassVar

import numpy as np
import pyarrow as pa

from mpq.components import Codec, Coded
from mpq.media import Audio, fit_length, planar_to_samples, resample
from mpq.registry import register

RATE_TOLERANCE = 0.10  # effective vs requested bitrate: beyond this, the row says so

AUDIO_CODEC_COLUMNS = {
    "requested_kbps": pa.float64(),
    "codec_sample_rate": pa.int32(),  # the rate the codec ran at
    "rate_note": pa.string(),  # set when the effective bitrate is off the requested one by > 10 %
}


def rate_note(bits: int, duration: float, requested_kbps: float, why: str = "") -> str | None:
    """A note when the bitrate actually produced is more than 10 % off the requested one."""
    effective = bits / duration / 1000
    if abs(effective - requested_kbps) <= RATE_TOLERANCE * requested_kbps:
        return None
    return f"effective {effective:.3g} kbps vs requested {requested_kbps:g} kbps" + (f" ({why})" if why else "")


def codec_rate(supported: list[int] | None, rate: int) -> int:
    """The input's rate if the encoder takes it, else the nearest supported rate above (or the highest)."""
    if not supported or rate in supported:
        return rate
    above = [r for r in supported if r >= rate]
    return min(above) if above else max(supported)


class PyAVCodec(Codec):
    encoder: ClassVar[str]
    container: ClassVar[str]
    kbps_range: ClassVar[tuple[float, float]]
    columns = AUDIO_CODEC_COLUMNS
    modality = "audio"

    def check_setting(self, setting) -> None:
        lo, hi = self.kbps_range
        if isinstance(setting, bool) or not isinstance(setting, (int, float)) or not lo <= setting <= hi:
            raise ValueError(f"{self.name} bitrate must be a number of kbps in [{lo:g}, {hi:g}]")

    def version(self) -> str:
        import av

        return f"pyav {av.__version__} ffmpeg {av.library_versions['libavcodec']} {self.encoder}"

    def supported_rates(self) -> list[int] | None:
        import av

        rates = av.codec.Codec(self.encoder, "w").audio_rates
        return sorted(rates) if rates else None

    def why_off(self, rate: int, kbps: float) -> str:
        return ""

    def roundtrip(self, media: Audio, setting: float) -> Coded:
        import av

        rate = codec_rate(self.supported_rates(), media.sample_rate)
        x = resample(media.samples, media.sample_rate, rate)
        layout = "mono" if media.channels == 1 else "stereo"
        buf = io.BytesIO()
        nbytes = 0
        with av.open(buf, "w", format=self.container) as out:
            stream = out.add_stream(self.encoder, rate=rate, layout=layout)
            stream.bit_rate = int(round(setting * 1000))
            ctx = stream.codec_context
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(x.T), format="fltp", layout=layout)
            frame.sample_rate, frame.pts = rate, 0  # timestamps from 0: the muxer can write gapless info
            fit = av.AudioResampler(format=ctx.format.name, layout=layout, rate=rate, frame_size=ctx.frame_size or None)
            for f in [*fit.resample(frame), *fit.resample(None), None]:
                for packet in stream.encode(f):
                    nbytes += packet.size
                    out.mux(packet)
        with av.open(io.BytesIO(buf.getvalue())) as inp:
            decoded = planar_to_samples([f.to_ndarray() for f in inp.decode(audio=0)])
            decoded_rate = inp.streams.audio[0].codec_context.sample_rate
        y = fit_length(resample(decoded, decoded_rate, media.sample_rate), media.num_samples)
        bits = 8 * nbytes
        extra = {
            "requested_kbps": float(setting),
            "codec_sample_rate": rate,
            "rate_note": rate_note(bits, media.duration, setting, self.why_off(rate, setting)),
        }
        return Coded(bits=bits, decoded=Audio(np.clip(y, -1, 1), media.sample_rate), extra=extra)


@register("codec", "mp3")
class MP3(PyAVCodec):
    """MP3 through LAME (libmp3lame), requested kbps (CBR)."""

    encoder, container = "libmp3lame", "mp3"
    kbps_range = (8, 320)
    default_settings = [8, 16, 32, 64, 128]

    def why_off(self, rate: int, kbps: float) -> str:
        # MPEG-1 Layer III (32–48 kHz) has no bitrate below 32 kbps; MPEG-2 (16–24 kHz) none below 8.
        return "LAME's lowest bitrate at 32-48 kHz is 32 kbps" if rate >= 32000 and kbps < 32 else ""


@register("codec", "opus")
class Opus(PyAVCodec):
    """Opus through libopus, requested kbps (VBR), at 48 kHz unless the input is 8–24 kHz."""

    encoder, container = "libopus", "ogg"
    kbps_range = (6, 510)
    default_settings = [6, 12, 24, 48]


@register("codec", "aac")
class AAC(PyAVCodec):
    """AAC-LC through FFmpeg's native encoder, requested kbps, in MP4."""

    encoder, container = "aac", "mp4"
    kbps_range = (8, 512)
    default_settings = [16, 32, 64, 128]
