"""Still images through video codecs' intra coding, through PyAV: HEVC (x265) and AV1 (SVT-AV1).

The image is one frame, coded as an intra (key) frame at a constant quantiser: the setting is
the QP, applied to the frame as it is (x265 ``ipratio=1``: the I-frame QP is not lowered;
SVT-AV1's all-intra still-picture mode, ``avif=1``), adaptive quantisation off (constant QP
turns it off in both). One encoder thread (x265 ``pools=none``, SVT-AV1 ``lp=1``): the same
bytes on every machine, and codec_cpus stays honest.

Colour: RGB → Y'CbCr by the BT.601 matrix at full range, JPEG's conversion (ITU-T T.871), in
floating point with rounding once, and back the same way; the stream is tagged so (BT.601,
full range). HEVC codes 4:4:4 by default (its Main 4:4:4 profile): a still has no motion to
spend bits on, and full-resolution chroma is what JPEG XL and the learned codecs code;
``chroma: "420"`` codes 4:2:0 as HEIC does. AV1 codes 4:2:0: SVT-AV1 encodes nothing else (as
``avif`` here). For 4:2:0, chroma is the mean of each 2×2 block (centre-sited, as JPEG's) and is
brought back up bilinearly (JPEG's "fancy" upsampling).

Sizes: the encoders have a smallest picture (x265 16×16, SVT-AV1 4×4) and 4:2:0 needs even
sides, so the image is padded by repeating its last row and column, and the decoded image is
cropped back; the bits are those of the padded picture, which is what is coded.

``bits`` is 8 × the bytes of the elementary stream the encoder emits, everything a decoder
needs and no file container (HEVC's Annex B byte stream: parameter sets and slices; x265's
SEI with its settings string is turned off, ``info=0``. AV1's low-overhead OBU stream:
temporal delimiter, sequence header, frame). A HEIF or AVIF file would add a few hundred bytes
of boxes, which ``avif``'s ``bits`` count. ``payload_bits`` is the coded picture alone (see
``containers``).
"""

from __future__ import annotations

import os
from fractions import Fraction
from typing import ClassVar, Literal

import numpy as np
import pyarrow as pa

from mpq.codecs import containers
from mpq.components import Codec, Coded, Options
from mpq.media import Image
from mpq.registry import register

CHROMA = {"444": "4:4:4", "420": "4:2:0"}


def to_ycbcr(rgb: np.ndarray, subsample: bool) -> list[np.ndarray]:
    """Y, Cb, Cr uint8 planes by ITU-T T.871 (JFIF: full-range BT.601); Cb and Cr halved each
    way (2×2 means) when ``subsample``."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    planes = [0.299 * r + 0.587 * g + 0.114 * b, 128 - 0.168736 * r - 0.331264 * g + 0.5 * b, 128 + 0.5 * r - 0.418688 * g - 0.081312 * b]
    if subsample:
        planes[1:] = [c.reshape(c.shape[0] // 2, 2, c.shape[1] // 2, 2).mean(axis=(1, 3)) for c in planes[1:]]
    return [np.clip(np.rint(p), 0, 255).astype(np.uint8) for p in planes]


def upsample(c: np.ndarray) -> np.ndarray:
    """Double a centre-sited chroma plane each way by bilinear interpolation (weights 3/4, 1/4; edges repeated)."""
    for axis in (0, 1):
        before = np.concatenate([np.take(c, [0], axis), np.take(c, range(c.shape[axis] - 1), axis)], axis)
        after = np.concatenate([np.take(c, range(1, c.shape[axis]), axis), np.take(c, [-1], axis)], axis)
        pair = np.stack([0.75 * c + 0.25 * before, 0.75 * c + 0.25 * after], axis=axis + 1)
        c = pair.reshape(*c.shape[:axis], 2 * c.shape[axis], *c.shape[axis + 1 :])
    return c


def to_rgb(planes: list[np.ndarray]) -> np.ndarray:
    """T.871's inverse; 4:2:0 chroma upsampled first."""
    y, cb, cr = (p.astype(np.float64) for p in planes)
    if cb.shape != y.shape:
        cb, cr = upsample(cb), upsample(cr)
    cb, cr = cb - 128, cr - 128
    rgb = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], axis=-1)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


class IntraOptions(Options):
    chroma: Literal["444", "420"] = "444"  # recorded in codec_version


class IntraCodec(Codec):
    encoder: ClassVar[str]
    decoder: ClassVar[str]
    qp_range: ClassVar[tuple[int, int]]
    min_side: ClassVar[int]  # the encoder's smallest picture side
    payload: ClassVar  # bytes of the coded picture in the stream (containers.*_payload)
    preset: ClassVar[str]
    columns = {"payload_bits": pa.int64()}

    def chroma(self) -> str:
        return "420"

    def encoder_options(self, qp: int) -> dict[str, str]:
        raise NotImplementedError

    def check_setting(self, setting) -> None:
        lo, hi = self.qp_range
        if not isinstance(setting, int) or isinstance(setting, bool) or not lo <= setting <= hi:
            raise ValueError(f"{self.name} QP must be an integer in [{lo}, {hi}]")

    def version(self) -> str:
        import av

        return f"pyav {av.__version__} ffmpeg {av.library_versions['libavcodec']} {self.encoder} preset {self.preset} {CHROMA[self.chroma()]}"

    def roundtrip(self, media: Image, setting: int) -> Coded:
        import av

        h, w = media.height, media.width
        subsample = self.chroma() == "420"
        ph, pw = (max(side, self.min_side) for side in (h, w))
        if subsample:
            ph, pw = ph + ph % 2, pw + pw % 2
        rgb = np.pad(media.pixels, ((0, ph - h), (0, pw - w), (0, 0)), mode="edge")
        planes = to_ycbcr(rgb, subsample)
        fmt = f"yuv{self.chroma()}p"
        frame = av.VideoFrame.from_ndarray(
            np.concatenate([p.ravel() for p in planes]).reshape(ph * 3 // 2, pw) if subsample else np.stack(planes), format=fmt
        )
        frame.pts = 0
        enc = av.CodecContext.create(self.encoder, "w")
        enc.width, enc.height, enc.pix_fmt, enc.time_base = pw, ph, fmt, Fraction(1, 25)
        enc.color_range, enc.colorspace = 2, 5  # full ("JPEG") range; BT.601 (BT470BG) matrix
        enc.options = self.encoder_options(setting)
        try:
            enc.open()
        except av.FFmpegError as e:
            raise ValueError(f"{self.name}: {self.encoder} refused to code a {pw}×{ph} picture ({e.strerror})") from None
        data = b"".join(bytes(p) for p in [*enc.encode(frame), *enc.encode(None)])
        dec = av.CodecContext.create(self.decoder, "r")
        dec.thread_count = 1
        (out,) = [*dec.decode(av.Packet(data)), *dec.decode(None)]
        if out.format.name.replace("yuvj", "yuv") != fmt:  # full range may come back as the older yuvj names
            raise ValueError(f"{self.name}: decoded {out.format.name}, coded {fmt}")
        arr = out.to_ndarray()
        if subsample:
            flat, n = arr.ravel(), ph * pw
            planes = [flat[:n].reshape(ph, pw), flat[n : n * 5 // 4].reshape(ph // 2, pw // 2), flat[n * 5 // 4 :].reshape(ph // 2, pw // 2)]
        else:
            planes = list(arr)
        decoded = np.ascontiguousarray(to_rgb(planes)[:h, :w])
        return Coded(bits=8 * len(data), decoded=Image(decoded), extra={"payload_bits": 8 * self.payload(data)})


@register("codec", "hevc")
class HEVC(IntraCodec):
    """HEVC intra through x265 (preset medium, its defaults otherwise), QP 0–51; 4:4:4 unless ``chroma: "420"``.

    x265 raises the chroma QP by 6 in 4:4:4 when psycho-visual RD is on (its default)."""

    Options = IntraOptions
    encoder, decoder = "libx265", "hevc"
    payload = staticmethod(containers.hevc_payload)
    qp_range = (0, 51)
    min_side, preset = 16, "medium"
    default_settings = [20, 25, 30, 35, 40, 45]  # about 2 to 0.1 bpp on photographs

    def chroma(self) -> str:
        return self.options.chroma

    def encoder_options(self, qp: int) -> dict[str, str]:
        params = f"qp={qp}:ipratio=1:keyint=1:pools=none:frame-threads=1:info=0:log-level=error"
        return {"preset": self.preset, "x265-params": params}


@register("codec", "av1")
class AV1(IntraCodec):
    """AV1 intra through SVT-AV1 (all-intra still-picture mode, preset 6, tune PSNR), QP 1–63, 4:2:0; decoded by dav1d."""

    encoder, decoder = "libsvtav1", "libdav1d"
    payload = staticmethod(containers.av1_payload)
    qp_range = (1, 63)
    min_side, preset = 4, "6"
    default_settings = [10, 20, 30, 40, 50, 58]  # about 2 to 0.1 bpp on photographs

    def encoder_options(self, qp: int) -> dict[str, str]:
        os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its configuration on every encode: errors only
        return {"qp": str(qp), "preset": self.preset, "svtav1-params": "avif=1:lp=1"}
